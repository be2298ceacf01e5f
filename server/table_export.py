"""Exports of a hash-keyed table for serving: its live keys and values (no
optimizer slots), whole or as a delta since a change number with tombstones.

An export is a consistent cut: every shard's lock is held while the rows are
copied (as a checkpoint holds them), so the rows are those of one moment,
complete through the table's change number ``through`` (every push,
assignment and eviction round on a server takes the next one). A delta
``since`` a number holds the rows changed after it and the keys evicted
after it and not back since; applied to the export it follows (deletions first,
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
    """``(keys, values, evicted keys, through)`` of table ``name`` here:
    ``through`` is the table's change number (``tables.Versions``) the rows
    are complete through, the next delta's ``since``."""
    keys, values, evicted = [], [], []
    with store.all_locked():
        through = store.table(name).versions.current  # every change up to it done
        parts: list[TablePart] = [shard.tables[name] for shard in store.shards]
        for part in parts:
            if since is not None and since < part.dropped_through:
                raise FailedPreconditionError(
                    f"a delta of table {name!r} since change {since} is not possible: "
                    f"evictions up to change {part.dropped_through} are no longer "
                    "remembered; export the whole table"
                )
        for part in parts:
            live = part.live[: part.high].astype(bool)
            if since is not None:
                live &= part.version[: part.high] > since
            rows = np.flatnonzero(live)
            keys.append(part.keys[rows])
            values.append(part.value[rows])
            if since is not None and part.tomb_total:
                kept = min(part.tomb_total, len(part.tomb_keys))
                stamps, gone = part.tomb_versions[:kept], part.tomb_keys[:kept]
                gone = np.unique(gone[stamps > since])
                back = part.rows_of(gone) >= 0  # evicted, then admitted again
                evicted.append(gone[~back])
    dim, dtype = parts[0].dim, parts[0].dtype
    return (
        np.concatenate(keys) if keys else np.empty(0, np.int64),
        np.concatenate(values) if values else np.empty((0, dim), dtype),
        np.concatenate(evicted) if evicted else np.empty(0, np.int64),
        through,
    )
