"""Crashes of real server processes: what survives, exactly.

A worker pushes a deterministic sequence of calls; the server is killed with
SIGKILL in the middle and restarted from its folder on the same port. The state
after the restart is compared bit for bit with a fault-free run of the same
number of calls: with --durability wal nothing acknowledged is lost and nothing
is applied twice; with checkpoints only, the state is exactly a checkpoint.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers.servers import Server

from adamax_ps.client import Adamax, IndexedSlices, RetryPolicy, connect, errors

F32 = np.float32
PATIENT = RetryPolicy(attempts=60, initial_backoff=0.05, max_backoff=0.5)


def call(step: int):
    rng = np.random.default_rng(step)
    rows = rng.integers(0, 400, 24)
    return (
        IndexedSlices(rng.normal(size=(24, 8)).astype(F32), rows),
        rng.normal(size=(16,)).astype(F32),
    )


def model(cluster):
    opt = Adamax(learning_rate=0.01, cluster=cluster)
    emb = cluster.variable("emb", shape=(400, 8), initializer="glorot_uniform")
    dense = cluster.variable("dense", shape=(16,), initializer="ones")
    return opt, emb, dense


def push(opt, emb, dense, step: int) -> None:
    sparse, g = call(step)
    opt.apply_gradients([(sparse, emb), (g, dense)])


def reference(tmp_path, calls: int):
    server = Server(
        ["--grpc-port", "0", "--http-port", "0"], tmp_path / "ref.log"
    ).start()
    try:
        with connect(server.grpc_address) as cluster:
            opt, emb, dense = model(cluster)
            for step in range(calls):
                push(opt, emb, dense, step)
            return emb.numpy(), dense.numpy(), [w.copy() for w in opt.get_weights()]
    finally:
        server.kill()


def state(address: str):
    with connect(address) as cluster:
        opt, emb, dense = model(cluster)
        return (
            emb.numpy(),
            dense.numpy(),
            [w.copy() for w in opt.get_weights()],
            int(opt.iterations),
        )


def assert_same(a, b):
    assert a[0].tobytes() == b[0].tobytes()
    assert a[1].tobytes() == b[1].tobytes()
    assert [w.tobytes() for w in a[2]] == [w.tobytes() for w in b[2]]


def restart_on_same_port(server: Server) -> None:
    server.args[server.args.index("--grpc-port") + 1] = str(server.grpc_port)
    server.args[server.args.index("--http-port") + 1] = str(server.http_port)
    server.start()


def test_wal_keeps_every_acknowledged_push_across_sigkill(tmp_path):
    """Killed mid-stream, restarted; the worker's pushes retry through the gap
    and resume: the final state equals a fault-free run of the same calls."""
    server = Server(
        [
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--durability",
            "wal",
            "--checkpoint-dir",
            str(tmp_path / "ps"),
            "--checkpoint-every",
            "0.2",
        ],
        tmp_path / "ps.log",
    ).start()
    total = 120
    acknowledged = []
    kill_at = threading.Event()
    try:
        with connect(server.grpc_address, retry=PATIENT) as cluster:
            opt, emb, dense = model(cluster)

            def worker() -> None:
                for step in range(total):
                    push(opt, emb, dense, step)
                    acknowledged.append(step)
                    if step == 60:
                        kill_at.set()

            thread = threading.Thread(target=worker)
            thread.start()
            assert kill_at.wait(120)
            server.kill()  # SIGKILL while pushes are in flight
            restart_on_same_port(server)
            thread.join(300)
            assert acknowledged == list(range(total))
        after = state(server.grpc_address)
    finally:
        server.kill()
    assert after[3] == total  # every call applied exactly once
    assert_same(after, reference(tmp_path, total))


def test_checkpoint_mode_restarts_at_exactly_a_checkpoint(tmp_path):
    """Without the log, a crash loses what followed the last checkpoint, but the
    state is exactly that checkpoint's: a prefix of the calls, never a mix."""
    server = Server(
        [
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--checkpoint-dir",
            str(tmp_path / "ps"),
            "--checkpoint-every",
            "0.1",
        ],
        tmp_path / "ps.log",
    ).start()
    try:
        with connect(server.grpc_address) as cluster:
            opt, emb, dense = model(cluster)
            for step in range(40):
                push(opt, emb, dense, step)
            cluster.checkpoint()  # at least this one, then periodic ones race
            for step in range(40, 80):
                push(opt, emb, dense, step)
        server.kill()
        restart_on_same_port(server)
        after = state(server.grpc_address)
    finally:
        server.kill()
    kept = after[3]
    assert 40 <= kept <= 80
    assert_same(after, reference(tmp_path, kept))


def test_clients_see_a_clear_error_when_the_server_stays_down(tmp_path):
    server = Server(
        ["--grpc-port", "0", "--http-port", "0"], tmp_path / "ps.log"
    ).start()
    cluster = connect(
        server.grpc_address, retry=RetryPolicy(attempts=3, initial_backoff=0.01)
    )
    opt, emb, dense = model(cluster)
    server.kill()
    with pytest.raises(errors.TransportError, match="UNAVAILABLE"):
        push(opt, emb, dense, 0)
    cluster.close()


@pytest.mark.parametrize(
    "damage", ["checkpoint-bytes", "manifest-version", "log-middle"]
)
def test_a_damaged_folder_stops_the_server_with_a_clear_error(tmp_path, damage):
    import json
    import subprocess
    import zlib

    from helpers.servers import SCRIPT

    folder = tmp_path / "ps"
    server = Server(
        [
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--durability",
            "wal",
            "--checkpoint-dir",
            str(folder),
        ],
        tmp_path / "ps.log",
    ).start()
    with connect(server.grpc_address) as cluster:
        opt, emb, dense = model(cluster)
        for step in range(5):
            push(opt, emb, dense, step)
        cluster.checkpoint()
        for step in range(5, 10):
            push(opt, emb, dense, step)
    server.kill()
    (checkpoint,) = sorted(folder.glob("ckpt-*"))
    if damage == "checkpoint-bytes":
        shard = max(checkpoint.glob("shard-*.bin"), key=lambda p: p.stat().st_size)
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
        expected = "fail their checksum"
    elif damage == "manifest-version":
        manifest = json.loads((checkpoint / "manifest.json").read_text())
        manifest["version"] = 7
        text = json.dumps(manifest).encode()
        (checkpoint / "manifest.json").write_bytes(text)
        (checkpoint / "manifest.json.crc32").write_text(f"{zlib.crc32(text)}\n")
        expected = "format version 7"
    else:
        (log,) = sorted((folder / "wal").glob("wal-*.log"))[-1:]
        data = bytearray(log.read_bytes())
        data[20] ^= 0xFF
        log.write_bytes(bytes(data))
        expected = "the log is corrupt"
    result = subprocess.run(
        [
            SCRIPT,
            "serve",
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--durability",
            "wal",
            "--checkpoint-dir",
            str(folder),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "adamax-ps: cannot restore:" in result.stderr and expected in result.stderr
    assert "Traceback" not in result.stderr


def test_lost_answers_are_retried_and_every_push_applies_once(tmp_path):
    """A third of the answers are lost on the way back; the client retries with
    the same push ids; the server answers from memory, never applying twice."""
    from helpers.proxy import LossyProxy

    server = Server(
        ["--grpc-port", "0", "--http-port", "0"], tmp_path / "ps.log"
    ).start()
    proxy = LossyProxy(("127.0.0.1", server.grpc_port), drop=0.3, seed=4)
    try:
        with connect(f"grpc://127.0.0.1:{proxy.port}", retry=PATIENT) as cluster:
            opt, emb, dense = model(cluster)
            for step in range(40):
                push(opt, emb, dense, step)
        assert proxy.cut >= 5, "the proxy lost too few answers to test anything"
        after = state(server.grpc_address)
    finally:
        proxy.close()
        server.kill()
    assert after[3] == 40
    assert_same(after, reference(tmp_path, 40))
