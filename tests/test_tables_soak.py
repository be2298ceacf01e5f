"""A table soak: workers stream ever-new ids into a hash-keyed table of fixed
capacity (15 s here; ADAMAX_PS_TABLE_SOAK_SECONDS=3600 for the hour). Once the
table is full its memory stays flat: the server's resident memory and the
table's own bytes do not grow while millions of keys come and go, evicted by
capacity (LRU) and by time to live in the background."""

from __future__ import annotations

import os
import threading
import time

import httpx
import numpy as np
import pytest
from helpers.servers import Server

from adamax_ps.client import Adamax, IndexedSlices, connect

SECONDS = float(os.environ.get("ADAMAX_PS_TABLE_SOAK_SECONDS", "15"))
CAPACITY = 100_000
DIM = 32
BATCH = 4096
GROWTH_LIMIT = 48 << 20  # resident bytes the server may gain once full


def stream(address: str, worker: int, stop: threading.Event, counts: list) -> None:
    """Push batches of mostly new ids (a Zipf head of repeating ones, and a
    tail of ids never seen before) until ``stop``."""
    with connect(address) as cluster:
        table = cluster.embedding_table(
            "ids",
            DIM,
            capacity=CAPACITY,
            eviction={"policy": "lru", "ttl_steps": 400},
            admission={"min_count": 1},
        )
        opt = Adamax(cluster=cluster)
        rng = np.random.default_rng(worker)
        fresh = (worker + 1) << 40
        while not stop.is_set():
            head = rng.zipf(1.3, BATCH // 4).astype(np.int64)
            tail = np.arange(fresh, fresh + BATCH - len(head), dtype=np.int64)
            fresh += len(tail)
            keys = np.concatenate([head, tail])
            grads = rng.normal(size=(len(keys), DIM)).astype(np.float32)
            opt.apply_gradients([(IndexedSlices(grads, keys), table)])
            counts[worker] += len(keys)


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 240)  # a longer soak is given its time
def test_a_table_streaming_new_ids_keeps_flat_memory(tmp_path):
    server = Server(
        ["--grpc-port", "0", "--http-port", "0", "--shards", "2"], tmp_path / "ps.log"
    ).start()
    stop = threading.Event()
    counts = [0, 0]
    workers = [
        threading.Thread(target=stream, args=(server.grpc_address, i, stop, counts))
        for i in range(2)
    ]
    try:
        for worker in workers:
            worker.start()
        samples = []  # (resident bytes, table bytes, table rows)
        started = time.monotonic()
        while time.monotonic() - started < SECONDS:
            stop.wait(SECONDS / 30)  # the sampling period
            server_info = httpx.get(
                server.http_address + "/api/v1/server", timeout=30
            ).json()
            metrics = httpx.get(server.http_address + "/metrics", timeout=30).text
            samples.append(
                (
                    server_info["resident_bytes"],
                    _metric(metrics, 'adamax_ps_table_bytes{table="ids"}'),
                    _metric(metrics, 'adamax_ps_table_rows{table="ids"}'),
                )
            )
    finally:
        stop.set()
        for worker in workers:
            worker.join(120)
        server.kill()
    pushed = sum(counts)
    assert pushed > 10 * CAPACITY, f"only {pushed} keys pushed in {SECONDS} s"
    full = [i for i, (_, _, rows) in enumerate(samples) if rows >= 0.85 * CAPACITY]
    assert full and full[0] < len(samples) // 2, samples  # full early on
    settled = samples[full[0] + 1 :]
    assert max(rows for _, _, rows in samples) <= CAPACITY
    table_bytes = {nbytes for _, nbytes, _ in settled}
    assert len(table_bytes) == 1, table_bytes  # allocated once, reused after
    flat = next(iter(table_bytes))
    resident = [r for r, _, _ in settled]
    print(  # the figures of a run (pytest -s)
        f"table soak: {SECONDS:.0f} s, {pushed:,} keys pushed, table "
        f"{flat / 2**20:.1f} MiB once full, resident "
        f"{resident[0] / 2**20:.0f} -> {resident[-1] / 2**20:.0f} MiB "
        f"(max {max(resident) / 2**20:.0f})"
    )
    assert max(resident) - resident[0] < GROWTH_LIMIT, resident


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in the metrics")
