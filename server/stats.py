"""Summary statistics of a variable and its slots, computed in place.

One pass per array under the shard locks (no copy of the state): L2 norm,
min, max, mean, and the number of rows holding a non-zero value.
"""

from __future__ import annotations

import math

import numpy as np

from adamax_ps.server import kernels
from adamax_ps.server.store import ShardedStore, VariableRecord

Stats = dict[str, float]


def variable_stats(store: ShardedStore, record: VariableRecord) -> dict[str, Stats]:
    """Stats of the value (``"w"``) and of each slot (``"<optimizer>/<slot>"``)."""
    sums: dict[str, tuple] = {}
    with store.locked(record.shards):
        for part in store.parts(record):
            arrays = {"w": part.value}
            for (optimizer, slot), array in part.slots.items():
                arrays[f"{optimizer}/{slot}"] = array
            for key, array in arrays.items():
                partial = _summary(part.rows(array))
                sums[key] = partial if key not in sums else _merge(sums[key], partial)
    count = math.prod(record.shape)
    return {key: _describe(s, count) for key, s in sums.items()}


def _summary(rows: np.ndarray) -> tuple:
    if rows.dtype != np.float16:
        return kernels.summary(rows)
    wide = rows.astype(np.float64)
    if not wide.size:
        return (0.0, np.inf, -np.inf, 0.0, 0)
    nonzero = int(np.count_nonzero(np.any(wide != 0, axis=1)))
    return (
        float(np.sum(wide * wide)),
        float(wide.min()),
        float(wide.max()),
        float(wide.sum()),
        nonzero,
    )


def _merge(a: tuple, b: tuple) -> tuple:
    return (a[0] + b[0], min(a[1], b[1]), max(a[2], b[2]), a[3] + b[3], a[4] + b[4])


def _describe(s: tuple, count: int) -> Stats:
    return {
        "l2_norm": float(math.sqrt(s[0])),
        "min": float(s[1]) if count else 0.0,
        "max": float(s[2]) if count else 0.0,
        "mean": float(s[3] / count) if count else 0.0,
        "nonzero_rows": int(s[4]),
    }
