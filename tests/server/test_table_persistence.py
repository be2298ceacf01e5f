"""Hash-keyed tables survive checkpoints and the write-ahead log bit for bit:
rows, slots, admission and eviction decisions, counts, on any shard count."""

from __future__ import annotations

import numpy as np

from adamax_ps.server.gradients import Gradient
from adamax_ps.server.ledger import PushId

DIM = 3
SETTINGS = {
    "dim": DIM,
    "initializer": "uniform",
    "seed": 4,
    "capacity": 60,
    "admission": {"min_count": 2, "filter_bytes": 4096},
    "eviction": {"policy": "lfu", "ttl_steps": 6},
}


def setup(service) -> None:
    service.create_optimizer({"name": "Adamax", "learning_rate": 0.05})
    service.create_table("t", **SETTINGS)


def work(service, start: int, count: int) -> None:
    """Pushes of Zipf keys (duplicates, admissions, refusals, inline
    evictions), a background eviction round every 5 pushes, an assignment."""
    for i in range(start, start + count):
        rng = np.random.default_rng(i)
        keys = rng.zipf(1.3, 40).astype(np.int64) * 7919 - 10**6
        values = rng.normal(size=(40, DIM)).astype(np.float32)
        service.apply("Adamax", [Gradient.sparse("t", keys, values)], PushId("w", i))
        if i % 5 == 4:
            service.evict_now()
        if i % 11 == 10:
            service.assign_keys("t", [i, -i], np.full((2, DIM), float(i)))


def table_state(service) -> dict:
    keys = np.sort(service.export_table("t")[0])
    info = service.table_info("t")
    return {
        "keys": keys.tobytes(),
        "w": service.gather_keys("t", keys).tobytes(),
        "m": service.gather_keys("t", keys, optimizer="Adamax", slot="m").tobytes(),
        "v": service.gather_keys("t", keys, optimizer="Adamax", slot="v").tobytes(),
        "counts": [info[k] for k in ("size", "admitted", "evicted", "filtered")],
        "iterations": service.iterations("Adamax"),
        "rows": rows_meta(service),
    }


def rows_meta(service) -> dict:
    """Each key's last step, update count and change number, over the parts
    (what LRU/LFU, TTL and delta exports go by)."""
    found = {}
    for shard in service.store.shards:
        part = shard.tables["t"]
        for row in np.flatnonzero(part.live[: part.high]):
            found[int(part.keys[row])] = (
                int(part.updated[row]),
                int(part.count[row]),
                int(part.version[row]),
            )
    return found


def test_a_checkpoint_restores_a_table_exactly(make_service, tmp_path):
    service = make_service(shards=3, checkpoint_dir=tmp_path)
    setup(service)
    work(service, 0, 30)
    info = service.table_info("t")
    assert info["evicted"] and info["filtered"] and info["admitted"]  # all happen
    assert info["size"] <= SETTINGS["capacity"]
    service.checkpoint()
    same = make_service(shards=3, checkpoint_dir=tmp_path)
    same.restore()
    assert table_state(same) == table_state(service)
    # The same layout restores the admission sketch and the rows' counts
    # too: both go on identically.
    work(service, 30, 15)
    work(same, 30, 15)
    assert table_state(same) == table_state(service)


def test_another_shard_count_restores_every_row(make_service, tmp_path):
    service = make_service(shards=3, checkpoint_dir=tmp_path)
    setup(service)
    work(service, 0, 30)
    service.checkpoint()
    other = make_service(shards=2, checkpoint_dir=tmp_path)
    other.restore()
    assert table_state(other) == table_state(service)


def test_the_log_replays_admissions_and_evictions(make_service, tmp_path):
    service = make_service(shards=3, checkpoint_dir=tmp_path, durability="wal")
    service.restore()
    setup(service)
    work(service, 0, 12)
    service.checkpoint()
    work(service, 12, 25)  # after the checkpoint: only in the log
    expected = table_state(service)
    # A new process after a crash, on another shard count: the replay uses
    # the logged decisions, so the rows come back although the admission
    # sketches restart and the parts' capacities differ.
    restored = make_service(shards=2, checkpoint_dir=tmp_path, durability="wal")
    restored.restore()
    assert restored.replayed > 25
    assert table_state(restored) == expected


def test_the_log_alone_restores_a_table(make_service, tmp_path):
    service = make_service(shards=2, checkpoint_dir=tmp_path, durability="wal")
    service.restore()
    setup(service)
    work(service, 0, 20)  # ends with an eviction round
    # Evictions acknowledge nothing, so nothing waits for their records: a
    # crash may lose the last ones (the rows stay). Once on disk, they replay.
    service.journal.settle()
    restored = make_service(shards=2, checkpoint_dir=tmp_path, durability="wal")
    restored.restore()
    assert table_state(restored) == table_state(service)
