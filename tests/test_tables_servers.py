"""Hash-keyed tables on real ``adamax-ps serve`` processes: restarts from a
checkpoint and from the write-ahead log after SIGKILL (bit for bit, and
training on exactly as a cluster never stopped), the memory budget refusing
growth with a metric, a stale view's keys refused, and ``adamax-ps export``
writing whole and delta files."""

from __future__ import annotations

import subprocess
import time

import httpx
import numpy as np
import pytest
from helpers.servers import SCRIPT, Server, addresses, start_cluster

from adamax_ps.client import Adamax, IndexedSlices, connect
from adamax_ps.client import errors as client_errors
from adamax_ps.common.keys import server_of

DIM = 8
SETTINGS = {
    "initializer": "uniform",
    "capacity": 300,
    "admission": {"min_count": 2},
    "eviction": {"policy": "lru"},
}
# Bit-equal runs of two clusters: no background eviction, whose rounds fall
# between pushes at moments of their own (a full table evicts inline, as
# each push needs room, the same in both).
INLINE_ONLY = ("--eviction-interval", "0")


def train(cluster, steps: range) -> None:
    """Pushes of Zipf ids (new ones keep coming), one optimizer step each."""
    table = cluster.embedding_table("users", DIM, **SETTINGS)
    opt = Adamax(learning_rate=0.01, cluster=cluster)
    for step in steps:
        rng = np.random.default_rng(step)
        keys = rng.zipf(1.2, 256).astype(np.int64) * 104729 - 2**40
        grads = rng.normal(size=(256, DIM)).astype(np.float32)
        opt.apply_gradients([(IndexedSlices(grads, keys), table)])


def table_state(cluster) -> dict:
    table = cluster.embedding_table("users", DIM, **SETTINGS)
    keys = np.sort(table.export().keys)
    return {
        "keys": keys.tobytes(),
        "w": table.gather(keys).tobytes(),
        "m": table.gather_slot(keys, "Adamax", "m").tobytes(),
        "v": table.gather_slot(keys, "Adamax", "v").tobytes(),
        "iterations": int(Adamax(learning_rate=0.01, cluster=cluster).iterations),
    }


def restarted(server: Server) -> Server:
    """The same server again (same folder and ports)."""
    again = Server(server.args, server.log)
    for flag, port in (
        ("--grpc-port", server.grpc_port),
        ("--http-port", server.http_port),
    ):
        again.args[again.args.index(flag) + 1] = str(port)
    return again.start()


@pytest.mark.parametrize("durability", ["checkpoint", "wal"])
def test_a_table_survives_its_servers_restarting(tmp_path, durability):
    """Two servers train a table with admission and capacity; one
    restarts (SIGTERM: a final checkpoint; wal: SIGKILL, then its log). The
    table is bit-equal to a reference cluster that never stopped, and stays
    so while training goes on (the servers evict as the reference does)."""
    extra = INLINE_ONLY + (("--durability", durability) if durability == "wal" else ())
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    servers = start_cluster(2, tmp_path / "a", *extra)
    reference = start_cluster(2, tmp_path / "b", *INLINE_ONLY, checkpoints=False)
    try:
        for group in (servers, reference):
            with connect(addresses(group)) as cluster:
                train(cluster, range(30))
        if durability == "wal":
            servers[1].kill()
        else:
            assert servers[1].stop() == 0
        servers[1] = restarted(servers[1])
        with connect(addresses(servers)) as a, connect(addresses(reference)) as b:
            assert table_state(a) == table_state(b)
            train(a, range(30, 45))
            train(b, range(30, 45))
            info = a.embedding_table("users", DIM, **SETTINGS).info()
            assert info["filtered"] > 0 and info["evicted"] > 0
            assert info["size"] <= SETTINGS["capacity"]
            assert table_state(a) == table_state(b)
    finally:
        for server in servers + reference:
            server.kill()


def test_the_memory_budget_refuses_growth_with_a_metric(tmp_path):
    server = Server(
        ["--grpc-port", "0", "--http-port", "0", "--memory-limit", "2M"],
        tmp_path / "ps.log",
    ).start()
    try:
        with connect(server.grpc_address) as cluster:
            table = cluster.embedding_table("t", 256)
            opt = Adamax(cluster=cluster)
            opt.apply_gradients(
                [
                    (
                        IndexedSlices(np.ones((100, 256), np.float32), np.arange(100)),
                        table,
                    )
                ]
            )
            before = table.gather(np.arange(100))
            with pytest.raises(
                client_errors.ResourceExhaustedError, match="growing table"
            ):
                keys = np.arange(1000, 5000)
                opt.apply_gradients(
                    [(IndexedSlices(np.ones((4000, 256), np.float32), keys), table)]
                )
            assert table.gather(np.arange(100)).tobytes() == before.tobytes()
            assert table.size() == 100 and int(opt.iterations) == 1
        metrics = httpx.get(server.http_address + "/metrics", timeout=30).text
        assert "adamax_ps_table_growth_refusals_total 1.0" in metrics
        assert 'adamax_ps_table_rows{table="t"} 100.0' in metrics
    finally:
        server.kill()


def test_keys_sent_to_the_wrong_server_are_refused(tmp_path):
    servers = start_cluster(2, tmp_path, checkpoints=False)
    try:
        with connect(addresses(servers)) as cluster:
            cluster.embedding_table("t", DIM)
            Adamax(cluster=cluster).iterations.numpy()
            keys = np.arange(50)
            wrong = keys[server_of(keys, 2) == 0]
            transport = cluster.transports[1]
            with pytest.raises(client_errors.FailedPreconditionError, match="refresh"):
                transport.read("t", rows=wrong)
    finally:
        for server in servers:
            server.kill()


def test_export_writes_whole_and_delta_files(tmp_path):
    servers = start_cluster(2, tmp_path, checkpoints=False)
    address = addresses(servers)
    try:
        with connect(address) as cluster:
            table = cluster.embedding_table("t", DIM, eviction={"ttl_steps": 2})
            opt = Adamax(cluster=cluster)
            push = lambda keys: opt.apply_gradients(  # noqa: E731
                [(IndexedSlices(np.ones((len(keys), DIM), np.float32), keys), table)]
            )
            push(np.arange(-50, 50))
            whole = run_export(tmp_path / "whole.npz", address)
            assert sorted(whole["keys"].tolist()) == list(range(-50, 50))
            order = np.argsort(whole["keys"])
            np.testing.assert_array_equal(
                whole["values"][order], table.gather(np.arange(-50, 50))
            )
            assert whole["since"].size == 0 and str(whole["table"]) == "t"
            assert whole["through"].shape == (2,)  # one change number a server
            for _ in range(3):
                push(np.arange(0, 10))
            wait_for_evictions(table, 90)  # the servers' evictor threads
            since = ",".join(map(str, whole["through"].tolist()))
            delta = run_export(tmp_path / "delta.npz", address, since)
            assert sorted(delta["keys"].tolist()) == list(range(10))
            assert sorted(delta["evicted"].tolist()) == [
                k for k in range(-50, 50) if not 0 <= k < 10
            ]
    finally:
        for server in servers:
            server.kill()


def wait_for_evictions(table, count: int) -> None:
    """The evictor thread runs every 0.2 s: poll its count until it is done."""
    deadline = time.monotonic() + 30
    while table.info()["evicted"] < count:
        assert time.monotonic() < deadline, table.info()
        time.sleep(0.05)


def run_export(out, address: str, since: str | None = None):
    args = [str(SCRIPT), "export", "t", "--address", address, "--out", str(out)]
    if since is not None:
        args += ["--since", str(since)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "exported 't'" in done.stdout
    return np.load(out)
