"""Gradient: the one type a push's gradients have on the server, from the
transport's decoding to the kernels.

A transport makes ``Gradient.dense`` or ``Gradient.sparse`` (IndexedSlices:
``values[k]`` is the gradient of row ``indices[k]``). Validation binds it to
its variable's ``record`` (sparse values then ``[n, row_size]``); clipping
replaces its values; ``deduplicated`` sums its duplicate rows (``unique``),
and then it knows which shards it touches. ``aggregate`` sums the pushes of
synchronous replicas.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from adamax_ps.common.dedup import deduplicate
from adamax_ps.common.keys import shard_of
from adamax_ps.server.store import VariableRecord


@dataclass(frozen=True)
class Gradient:
    """A gradient of one variable; dense when ``indices`` is None.

    ``finite``: the transport already searched ``values`` for NaN and Inf as
    they arrived and found none. ``record``: the variable, once validated.
    ``unique``: sparse rows already summed (each index once).
    """

    variable: str
    values: np.ndarray
    indices: np.ndarray | None = None
    finite: bool = False
    record: VariableRecord | None = None
    unique: bool = False
    # A table's push: the positions of the keys not admitted and the keys
    # evicted to make room, as decided when it was applied (the log keeps
    # them, so a replay repeats them).
    decided: tuple[np.ndarray, np.ndarray] | None = None
    # A dense gradient applied to these row ranges only (local rows): the
    # rest of a push cut by a resize (``inherited.py``).
    ranges: tuple[tuple[int, int], ...] | None = None

    @classmethod
    def dense(cls, variable: str, values: np.ndarray, finite: bool = False):
        return cls(variable, values, None, finite)

    @classmethod
    def sparse(
        cls,
        variable: str,
        indices: np.ndarray,
        values: np.ndarray,
        finite: bool = False,
    ):
        return cls(variable, values, indices, finite)

    @property
    def is_dense(self) -> bool:
        return self.indices is None

    @property
    def keyed(self) -> bool:
        """A hash-keyed table's gradient (``indices`` are keys)."""
        return getattr(self.record, "keyed", False)

    def bound(
        self, record: VariableRecord, values: np.ndarray, indices=None
    ) -> Gradient:
        """This gradient, checked against ``record`` (validation's result)."""
        return Gradient(self.variable, values, indices, self.finite, record)

    def with_values(self, values: np.ndarray) -> Gradient:
        """The same gradient with other values (clipping's result)."""
        return dataclasses.replace(self, values=values)

    def deduplicated(self) -> Gradient:
        """Sum duplicate rows (Keras does it after clipping, before the update)."""
        if self.is_dense or self.unique:
            return self
        rows, summed = deduplicate(self.indices, self.values)
        return dataclasses.replace(self, indices=rows, values=summed, unique=True)

    def shards(self) -> set[int]:
        """Shards holding what this gradient updates (a sparse one: its rows')."""
        record = self.record
        if self.keyed:  # and a replayed push's victims (``Tables.plan_push``)
            keys = self.indices
            if self.decided is not None and len(self.decided[1]):
                keys = np.concatenate([keys, self.decided[1]])
            return set(np.unique(shard_of(keys, record.num_shards)).tolist())
        if self.is_dense or len(record.parts) == 1:
            return set(record.shards)
        bounds = np.asarray([lo for _, lo, _ in record.parts[1:]])
        hit = np.unique(np.searchsorted(bounds, self.indices, side="right"))
        return {record.parts[i][0] for i in hit.tolist()}


def aggregate(pushes: list[list[Gradient]], average: bool) -> list[Gradient]:
    """Sum the replicas' validated gradients per variable, in replica order.

    Dense gradients add; sparse ones concatenate their rows (the update sums
    duplicates), as an all-reduce of IndexedSlices gathers them. ``average``
    divides by the number of replicas.
    """
    dense: dict[str, np.ndarray] = {}
    sparse: dict[str, list[Gradient]] = {}
    order: dict[tuple[str, bool], VariableRecord] = {}
    for gradients in pushes:
        for g in gradients:
            name = g.record.name
            order.setdefault((name, g.is_dense), g.record)
            if not g.is_dense:
                sparse.setdefault(name, []).append(g)
            elif name in dense:
                dense[name] += g.values
            else:
                dense[name] = g.values.copy()
    n = len(pushes)
    result = []
    for (name, is_dense), record in order.items():
        if is_dense:
            total = dense[name]
            if average:
                total /= record.dtype.type(n)
            result.append(Gradient(name, total, record=record))
            continue
        values = np.concatenate([g.values for g in sparse[name]])
        if average:
            values /= record.dtype.type(n)
        indices = np.concatenate([g.indices.astype(np.int64) for g in sparse[name]])
        result.append(Gradient(name, values, indices, record=record))
    return result
