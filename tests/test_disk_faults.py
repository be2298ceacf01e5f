"""Real disk faults on a real ``adamax-ps serve --durability wal``.

strace injects the errors into the server's own syscalls, on its log segments
only (``-P``): an fdatasync that fails with EIO, or a write that fails with
ENOSPC, while several workers push at once. The server must stop accepting
changes (fail-stop) without acknowledging anything that is not on disk, keep
answering reads and health (NOT_SERVING, with the reason), and after a
restart hold every acknowledged push exactly once: the restarted state equals
an in-process replay of the pushes it remembers, each at the step it took.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import skips
from helpers.servers import Server

from adamax_ps.client import Adamax, IndexedSlices, connect, errors
from adamax_ps.proto.v1 import parameter_server_pb2 as pb
from adamax_ps.proto.v1 import parameter_server_pb2_grpc as pb_grpc
from adamax_ps.server.service import Gradient, ParameterService, PushId, ServiceSettings

pytestmark = pytest.mark.slow

F32 = np.float32
WORKERS = 4
MOST_PUSHES = 400  # per worker: the fault must strike well before
CONFIG = {"learning_rate": 0.01}


def require_strace() -> None:
    """Skip (fail under CI=true) unless strace can trace a child here."""
    skips.require("strace")
    probe = subprocess.run(
        ["strace", "-f", "-qq", "-o", "/dev/null", "true"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        skips.skip_or_fail(f"strace cannot trace here: {probe.stderr.strip()}")


def injecting(fault: str, paths: list[Path]) -> list[str]:
    """The strace command that runs a server with ``fault`` on ``paths``."""
    syscalls, error = {
        "fdatasync-EIO": ("fsync,fdatasync", "EIO"),
        "write-ENOSPC": ("write,writev,pwrite64,pwritev", "ENOSPC"),
    }[fault]
    command = ["strace", "-f", "-qq", "--seccomp-bpf", "-o", "/dev/null"]
    for path in paths:
        command += ["-P", str(path)]
    # Each thread's 12th such call on a segment fails, and every later one:
    # late enough that the variables' creations (the first records, flushed
    # by whichever threads take them) never use up a thread's calls before a
    # push is acknowledged; early enough that 4 x 400 pushes meet it.
    return [
        *command,
        "-e",
        f"trace={syscalls}",
        "-e",
        f"inject={syscalls}:error={error}:when=12+",
    ]


def wal_server(folder: Path, log: Path, prefix: list[str] = ()) -> Server:
    args = ["--grpc-port", "0", "--http-port", "0", "--shards", "2"]
    args += ["--checkpoint-dir", str(folder), "--durability", "wal"]
    return Server(args, log, prefix=list(prefix))


def call(worker: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Push n of a worker: sparse rows of ``emb`` and a dense ``dense``."""
    rng = np.random.default_rng(worker * 100_000 + n)
    rows = rng.integers(0, 300, 12)
    return rows, rng.normal(size=(12, 8)).astype(F32), rng.normal(size=16).astype(F32)


def model(cluster):
    opt = Adamax(cluster=cluster, **CONFIG)
    emb = cluster.variable("emb", shape=(300, 8), initializer="glorot_uniform")
    dense = cluster.variable("dense", shape=(16,), initializer="ones")
    return opt, emb, dense


def push_until_refused(address: str) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Workers push at once until the server refuses them; returns each
    worker's client id and the pushes it saw acknowledged."""
    clients: dict[str, int] = {}
    acknowledged: dict[str, list[int]] = {}
    refusals: list[BaseException] = []
    ready = threading.Barrier(WORKERS)

    def worker(w: int) -> None:
        with connect(address) as cluster:
            opt, emb, dense = model(cluster)
            clients[cluster.client_id] = w
            done = acknowledged.setdefault(cluster.client_id, [])
            ready.wait()
            for n in range(MOST_PUSHES):
                rows, values, g = call(w, n)
                try:
                    opt.apply_gradients(
                        [(IndexedSlices(values, rows), emb), (g, dense)]
                    )
                except errors.ParameterServerError as e:
                    refusals.append(e)
                    return
                done.append(n)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert refusals, "the injected fault never struck"
    assert all(isinstance(e, errors.WritesStoppedError) for e in refusals), refusals
    return clients, acknowledged


def stop_traced(server: Server) -> int:
    """SIGTERM the server itself (strace's child), as an orchestrator would;
    strace exits with its exit status."""
    tracer = server.process.pid
    children = Path(f"/proc/{tracer}/task/{tracer}/children").read_text().split()
    assert len(children) == 1, children
    os.kill(int(children[0]), signal.SIGTERM)
    return server.process.wait(60)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def metric(http: str, name: str) -> float:
    status, text = get(http + "/metrics")
    assert status == 200
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def retry_is_refused(address: str, client: str, sequence: int) -> None:
    """The same push sent again as a retry is not acknowledged either."""
    with grpc.insecure_channel(address.removeprefix("grpc://")) as channel:
        stub = pb_grpc.ParameterServerStub(channel)
        request = pb.ApplyRequest(
            view=pb.ClusterView(server_index=0, num_servers=1),
            optimizer="Adamax",
            push_id=pb.PushId(client=client, sequence=sequence, attempt=1),
            gradients=[
                pb.Gradient(
                    variable="dense",
                    values=pb.Tensor(
                        shape=[16], dtype=pb.FLOAT32, data=np.ones(16, F32).tobytes()
                    ),
                )
            ],
        )
        with pytest.raises(grpc.RpcError) as refused:
            stub.ApplyGradients(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "stopped accepting changes" in refused.value.details()
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING


def remembered(folder: Path, http: str) -> dict[str, dict[int, int]]:
    """client -> {sequence: step} of every push the restarted server holds,
    read from a checkpoint it writes now (its ledger)."""
    request = urllib.request.Request(http + "/api/v1/checkpoint", method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        path = Path(json.load(response)["path"])
    ledger = json.loads((path / "manifest.json").read_text())["ledger"]
    return {
        client: {
            seq: step for seq, kind, _, step, _ in entry["answers"] if kind == "push"
        }
        for client, entry in ledger["clients"].items()
    }


def replay(clients: dict[str, int], applied: dict[str, dict[int, int]]):
    """The pushes the server holds, applied in process at their steps."""
    service = ParameterService(ServiceSettings(shards=2))
    try:
        service.create_optimizer(CONFIG)
        service.create_variable(
            "emb",
            shape=(300, 8),
            initializer="glorot_uniform",
            seed=zlib.crc32(b"emb"),
        )
        service.create_variable(
            "dense", shape=(16,), initializer="ones", seed=zlib.crc32(b"dense")
        )
        pushes = sorted(
            (step, client, seq)
            for client, seqs in applied.items()
            for seq, step in seqs.items()
        )
        for step, client, seq in pushes:
            rows, values, g = call(clients[client], seq)
            service.apply(
                "Adamax",
                [Gradient.sparse("emb", rows, values), Gradient.dense("dense", g)],
                PushId(client, seq),
                step=step,
            )
        return {
            name: [
                service.pull(name).tobytes(),
                service.pull(name, optimizer="Adamax", slot="m").tobytes(),
                service.pull(name, optimizer="Adamax", slot="v").tobytes(),
            ]
            for name in ("emb", "dense")
        }, service.iterations("Adamax")
    finally:
        service.close()


def held(address: str):
    with connect(address) as cluster:
        opt, emb, dense = model(cluster)
        state = {
            var.name: [
                var.numpy().tobytes(),
                opt.get_slot(var, "m").numpy().tobytes(),
                opt.get_slot(var, "v").numpy().tobytes(),
            ]
            for var in (emb, dense)
        }
        return state, int(opt.iterations)


@pytest.mark.parametrize("fault", ["fdatasync-EIO", "write-ENOSPC"])
def test_a_failing_log_stops_changes_and_loses_nothing_acknowledged(tmp_path, fault):
    require_strace()
    folder = tmp_path / "ps"
    segments = [folder / "wal" / f"wal-{n:06d}.log" for n in range(3)]
    server = wal_server(folder, tmp_path / "ps.log", injecting(fault, segments))
    server.start()
    try:
        clients, acknowledged = push_until_refused(server.grpc_address)
        assert any(acknowledged.values()), "the fault struck before any push"
        # Fail-stop: reads and health answer; readiness and changes do not.
        status, body = get(server.http_address + "/readyz")
        assert status == 503
        answer = json.loads(body)
        assert answer["status"] == "writes-stopped"
        assert ("fdatasync" if fault == "fdatasync-EIO" else "write") in answer[
            "reason"
        ]
        assert get(server.http_address + "/healthz")[0] == 200
        assert metric(server.http_address, "adamax_ps_wal_failures_total") == 1
        assert metric(server.http_address, "adamax_ps_accepting_writes") == 0
        with connect(server.grpc_address) as cluster:
            assert cluster.read("dense").shape == (16,)
        client = next(iter(acknowledged))
        retry_is_refused(server.grpc_address, client, len(acknowledged[client]))
        assert stop_traced(server) == 1  # no final checkpoint over a failed disk
        log = (tmp_path / "ps.log").read_text()
        assert "fail-stop" in log and "no final checkpoint" in log
        # Restarted on a sound disk: every acknowledged push, each once.
        server.prefix = []
        server.start()
        applied = remembered(folder, server.http_address)
        for client, pushes in acknowledged.items():
            assert set(pushes) <= set(applied.get(client, {})), client
        expected, iterations = replay(clients, applied)
        state, restored_iterations = held(server.grpc_address)
        assert restored_iterations == iterations
        assert state == expected
    finally:
        server.kill()


_CALL = re.compile(r"^\d+\s+(\w+)\((.*?)(?:\) += (-?\d+).*| <unfinished \.\.\.>)$")
_FD = re.compile(r"^\d+<(.*)>$")


def traced_calls(trace: Path, root: Path) -> list[tuple[str, list[str]]]:
    """``(syscall, [paths])`` in order, of the calls under ``root`` that did
    not fail (strace -y names each descriptor's path); opens only when they
    may create the file."""
    calls = []
    for line in trace.read_text().splitlines():
        match = _CALL.match(line)
        if match is None:
            continue
        name, args, result = match[1], match[2], match[3]
        if result is not None and result.startswith("-"):
            continue
        if name == "openat" and "O_CREAT" not in args:
            continue
        if name in ("fsync", "fdatasync"):
            fd = _FD.match(args.strip())
            paths = [fd[1]] if fd else []
        else:  # openat, mkdir, rename: quoted paths
            paths = re.findall(r'"([^"]+)"', args)
        paths = [p for p in paths if Path(p).is_relative_to(root)]
        if paths:
            calls.append((name, paths))
    return calls


def synced_after(calls, start: int, folder: str, before: int | None = None) -> bool:
    """Whether ``folder`` is fsynced between calls ``start`` and ``before``."""
    end = len(calls) if before is None else before
    return any(
        name == "fsync" and paths == [folder] for name, paths in calls[start + 1 : end]
    )


def test_new_files_and_folders_are_durable_before_they_are_relied_on(tmp_path):
    """Every new log segment's and checkpoint file's folder entry, and every
    new folder's, is fsynced before anything written into it counts: a
    segment's before its first record is synced, a checkpoint's files before
    the folder is renamed into place, the rename itself in the root after."""
    require_strace()
    folder = tmp_path / "ps"
    trace = tmp_path / "trace.txt"
    syscalls = "openat,mkdir,mkdirat,fsync,fdatasync,rename,renameat,renameat2"
    prefix = ["strace", "-f", "-qq", "-y", "-o", str(trace), "-e", f"trace={syscalls}"]
    server = wal_server(folder, tmp_path / "ps.log", prefix).start()
    try:
        with connect(server.grpc_address) as cluster:
            opt, emb, dense = model(cluster)
            for n in range(3):
                rows, values, g = call(0, n)
                opt.apply_gradients([(IndexedSlices(values, rows), emb), (g, dense)])
                cluster.checkpoint()  # each rotates the log: a new segment
        assert stop_traced(server) == 0  # and a final checkpoint
    finally:
        server.kill()
    calls = traced_calls(trace, tmp_path)
    made = [(i, paths[0]) for i, (name, paths) in enumerate(calls) if name == "openat"]
    segments = [(i, p) for i, p in made if re.search(r"/wal-\d+\.log$", p)]
    checkpoint_files = [(i, p) for i, p in made if ".tmp-" in p]
    assert len(segments) >= 4 and len(checkpoint_files) >= 4 * 5
    for i, path in segments:
        first_sync = next(
            (
                j
                for j, (name, paths) in enumerate(calls)
                if j > i and name == "fdatasync" and paths == [path]
            ),
            None,
        )
        assert synced_after(calls, i, str(Path(path).parent), first_sync), path
    renames = {
        paths[0]: j
        for j, (name, paths) in enumerate(calls)
        if name.startswith("rename")
    }
    for i, path in checkpoint_files:
        tmp = str(Path(path).parent)
        assert synced_after(calls, i, tmp, renames[tmp]), path
    for source, j in renames.items():
        target = calls[j][1][-1]
        assert synced_after(calls, j, str(Path(target).parent)), (source, target)
    for i, (name, paths) in enumerate(calls):
        if name.startswith("mkdir") and ".tmp-" not in paths[0]:
            assert synced_after(calls, i, str(Path(paths[0]).parent)), paths[0]
