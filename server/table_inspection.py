"""Inspection of a hash-keyed table on one server: its size, memory and
counts summed over the shards, and its most updated keys."""

from __future__ import annotations

from typing import Any

import numpy as np

from adamax_ps.server.store import ShardedStore
from adamax_ps.server.table_record import TableRecord


def info(store: ShardedStore, record: TableRecord) -> dict[str, Any]:
    """Size, capacity, memory and counts, summed over the shards."""
    totals = dict.fromkeys(
        (
            "size",
            "allocated",
            "bytes",
            "row_bytes",
            "admitted",
            "evicted",
            "filtered",
        ),
        0,
    )
    latest = 0
    for shard in store.shards:
        with shard.lock:
            part = shard.tables[record.name]
            totals["size"] += part.size
            totals["allocated"] += part.alloc
            totals["bytes"] += part.nbytes
            totals["row_bytes"] += part.bytes_for(part.alloc)
            totals["admitted"] += part.admitted
            totals["evicted"] += part.evicted
            totals["filtered"] += part.filtered
            latest = max(latest, part.latest)
    # Rows, their slots and bookkeeping, and the index, by row held (the
    # admission filter and tombstones are fixed costs, in ``bytes``).
    per_row = totals.pop("row_bytes") / totals["size"] if totals["size"] else 0.0
    return {
        "name": record.name,
        **record.config.to_json(),
        **totals,
        "bytes_per_row": per_row,
        "latest_step": latest,
    }


def top_keys(
    store: ShardedStore, record: TableRecord, n: int = 10
) -> list[dict[str, int]]:
    """The ``n`` keys updated most often (with their counts and last step)."""
    found: list[tuple[int, int, int]] = []
    for shard in store.shards:
        with shard.lock:
            part = shard.tables[record.name]
            live = np.flatnonzero(part.live[: part.high])
            if not len(live):
                continue
            take = min(n, len(live))
            best = live[np.argpartition(-part.count[live], take - 1)[:take]]
            found += [
                (int(part.count[r]), int(part.keys[r]), int(part.updated[r]))
                for r in best
            ]
    found.sort(key=lambda item: (-item[0], item[1]))
    return [
        {"key": key, "updates": count, "updated": updated}
        for count, key, updated in found[:n]
    ]
