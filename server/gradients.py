"""Gradients as the service takes them, and as it prepares them for the kernels.

A push is a list of ``DenseGradient`` and ``SparseGradient`` (IndexedSlices).
Once validated, each becomes a ``PreparedGradient``: clipped (Keras order) and,
if sparse, with duplicate rows summed; it also knows which shards it touches.
``aggregate`` sums the pushes of synchronous replicas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adamax_ps.server import adamax
from adamax_ps.server.store import VariableRecord


@dataclass(frozen=True)
class DenseGradient:
    """A gradient for the whole variable. ``finite``: the transport has already
    searched ``values`` for NaN and Inf as they arrived and found none."""

    variable: str
    values: np.ndarray
    finite: bool = False


@dataclass(frozen=True)
class SparseGradient:
    """An IndexedSlices gradient: ``values[k]`` is the gradient of ``indices[k]``.
    ``finite`` as for ``DenseGradient``."""

    variable: str
    indices: np.ndarray
    values: np.ndarray
    finite: bool = False


Gradient = DenseGradient | SparseGradient


@dataclass(frozen=True)
class PreparedGradient:
    """A validated gradient of one variable.

    Dense: ``dense``. Sparse before deduplication: ``indices`` and raw
    ``values`` ``[n, row_size]``; after: unique ``rows`` and ``summed`` values.
    """

    record: VariableRecord
    dense: np.ndarray | None = None
    indices: np.ndarray | None = None
    values: np.ndarray | None = None
    rows: np.ndarray | None = None
    summed: np.ndarray | None = None

    @property
    def is_dense(self) -> bool:
        return self.dense is not None

    @property
    def gradient(self) -> np.ndarray:
        """What clipping sees: the dense gradient or the raw sparse values."""
        return self.dense if self.is_dense else self.values

    def with_gradient(self, gradient: np.ndarray) -> PreparedGradient:
        if self.is_dense:
            return PreparedGradient(self.record, dense=gradient)
        return PreparedGradient(self.record, indices=self.indices, values=gradient)

    def deduplicated(self) -> PreparedGradient:
        """Sum duplicate rows (Keras does it after clipping, before the update)."""
        if self.is_dense:
            return self
        rows, summed = adamax.deduplicate(self.indices, self.values)
        return PreparedGradient(self.record, rows=rows, summed=summed)

    def shards(self) -> set[int]:
        """Shards holding what this gradient updates (a sparse one: its rows')."""
        if self.rows is None or len(self.record.parts) == 1:
            return set(self.record.shards)
        bounds = np.asarray([lo for _, lo, _ in self.record.parts[1:]])
        hit = np.unique(np.searchsorted(bounds, self.rows, side="right"))
        return {self.record.parts[i][0] for i in hit.tolist()}


def aggregate(
    pushes: list[list[PreparedGradient]], average: bool
) -> list[PreparedGradient]:
    """Sum the replicas' gradients per variable, in the given replica order.

    Dense gradients add; sparse ones concatenate their rows (the update sums
    duplicates), as an all-reduce of IndexedSlices gathers them. ``average``
    divides by the number of replicas.
    """
    dense: dict[str, np.ndarray] = {}
    sparse: dict[str, list[PreparedGradient]] = {}
    order: dict[tuple[str, bool], VariableRecord] = {}
    for pairs in pushes:
        for pair in pairs:
            name = pair.record.name
            order.setdefault((name, pair.is_dense), pair.record)
            if not pair.is_dense:
                sparse.setdefault(name, []).append(pair)
            elif name in dense:
                dense[name] += pair.dense
            else:
                dense[name] = pair.dense.copy()
    n = len(pushes)
    result = []
    for (name, is_dense), record in order.items():
        if is_dense:
            total = dense[name]
            if average:
                total /= record.dtype.type(n)
            result.append(PreparedGradient(record, dense=total))
            continue
        values = np.concatenate([p.values for p in sparse[name]])
        if average:
            values /= record.dtype.type(n)
        indices = np.concatenate([p.indices.astype(np.int64) for p in sparse[name]])
        result.append(PreparedGradient(record, indices=indices, values=values))
    return result
