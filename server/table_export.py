"""Exports of a hash-keyed table for serving: its live keys and values (no
optimizer slots), whole or as a delta since a step with tombstones.

An export is a consistent cut: every shard's lock is held while the rows are
copied (as a checkpoint holds them), so the rows are those of one moment,
complete through the newest step any of them shows (``through``). A delta
``since`` a step holds the rows updated after it and the keys evicted after
it and not back since; applied to the export it follows (deletions first,
then the rows), it gives this export. Tombstones are remembered per part up
to ``table_part.TOMBSTONES``; a delta reaching back past what was forgotten
is refused (take a whole export instead).
"""

from __future__ import annotations

import numpy as np

from adamax_ps.server.errors import FailedPreconditionError
from adamax_ps.server.store import ShardedStore
from adamax_ps.server.table_part import TablePart


def export(
    store: ShardedStore, name: str, since: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(keys, values, evicted keys, through)`` of table ``name`` here."""
    keys, values, evicted = [], [], []
    through = 0
    with store.all_locked():
        parts: list[TablePart] = [shard.tables[name] for shard in store.shards]
        for part in parts:
            if since is not None and since < part.dropped_through:
                raise FailedPreconditionError(
                    f"a delta of table {name!r} since step {since} is not possible: "
                    f"evictions up to step {part.dropped_through} are no longer "
                    "remembered; export the whole table"
                )
        for part in parts:
            live = part.live[: part.high].astype(bool)
            if since is not None:
                live &= part.updated[: part.high] > since
            rows = np.flatnonzero(live)
            keys.append(part.keys[rows])
            values.append(part.value[rows])
            through = max(through, part.latest)
            if since is not None and part.tomb_total:
                kept = min(part.tomb_total, len(part.tomb_keys))
                steps, gone = part.tomb_steps[:kept], part.tomb_keys[:kept]
                gone = np.unique(gone[steps > since])
                back = part.rows_of(gone) >= 0  # evicted, then admitted again
                evicted.append(gone[~back])
    dim, dtype = parts[0].dim, parts[0].dtype
    return (
        np.concatenate(keys) if keys else np.empty(0, np.int64),
        np.concatenate(values) if values else np.empty((0, dim), dtype),
        np.concatenate(evicted) if evicted else np.empty(0, np.int64),
        through,
    )
