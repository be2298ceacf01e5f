"""Placement: which servers hold which rows of a variable, the same on every
worker given the same servers.

A small variable lives whole on the server ``crc32(name) % n``; a large one
(64 MB or more, at least ``n`` rows) is split by row ranges over all servers
(``common.placement``, the rule that also places a server's variables on its
shards).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from adamax_ps.client.transport import Gradient
from adamax_ps.common.placement import place_rows

SPLIT_BYTES = 64 << 20


@dataclass(frozen=True)
class Slice:
    """Rows ``[lo, hi)`` of a variable, held by server ``server``."""

    server: int
    lo: int
    hi: int


@dataclass(frozen=True)
class Placement:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    slices: tuple[Slice, ...]
    keyed: bool = False  # a hash-keyed table: rows are keys, spread by hash

    @property
    def split(self) -> bool:
        return len(self.slices) > 1

    def locate(self, rows: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """``(server, positions in rows, the server's own rows)`` for each
        server holding some of ``rows`` (checked global rows, or keys)."""
        if self.keyed:
            if len(self.slices) == 1:
                return [(0, np.arange(len(rows)), rows)] if len(rows) else []
            from adamax_ps.common.keys import server_of  # numba: on first use

            owner = server_of(rows, len(self.slices))
            found = []
            for server in range(len(self.slices)):
                where = np.flatnonzero(owner == server)
                if where.size:
                    found.append((server, where, rows[where]))
            return found
        found = []
        for piece in self.slices:
            where = np.flatnonzero((rows >= piece.lo) & (rows < piece.hi))
            if where.size:
                found.append((piece.server, where, rows[where] - piece.lo))
        return found

    def servers(self) -> list[int]:
        return [s.server for s in self.slices]

    def nbytes(self, rows: int | None = None) -> int:
        """Bytes of ``rows`` rows (a scalar or 1-D variable's rows are
        elements), or of the whole variable."""
        row = self.dtype.itemsize * math.prod(self.shape[1:])
        if rows is None:
            rows = self.shape[0] if self.shape else 1
        return row * rows


def place(
    name: str, shape: tuple[int, ...], dtype: np.dtype, servers: int
) -> Placement:
    """Where a variable lives; the same on every worker with the same servers."""
    ranges = place_rows(name, shape, np.dtype(dtype).itemsize, servers, SPLIT_BYTES)
    return Placement(name, shape, np.dtype(dtype), tuple(Slice(*r) for r in ranges))


def place_table(name: str, dim: int, dtype: np.dtype, servers: int) -> Placement:
    """A hash-keyed table: every server holds the keys ``common.keys`` gives it."""
    return Placement(
        name,
        (0, dim),
        np.dtype(dtype),
        tuple(Slice(i, 0, 0) for i in range(servers)),
        keyed=True,
    )


def check_rows(rows: Any, placement: Placement) -> np.ndarray:
    rows = np.asarray(rows)
    what = "keys" if placement.keyed else "rows"
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise ValueError(
            f"{what} of {placement.name!r} must be a 1-D array of integers. "
            f"Received shape {rows.shape}, dtype {rows.dtype}"
        )
    if placement.keyed:
        if rows.dtype == np.uint64 and rows.size and rows.max() >= 2**63:
            raise ValueError(f"keys of {placement.name!r} must fit in int64")
        return rows.astype(np.int64, copy=False)
    total = placement.shape[0] if placement.shape else 0
    bad = np.flatnonzero((rows < 0) | (rows >= total))
    if bad.size:
        raise ValueError(
            f"rows[{bad[0]}] = {rows[bad[0]]} is not in [0, {total}) for variable "
            f"{placement.name!r}"
        )
    return rows.astype(np.int64, copy=False)


def server_shares(
    placement: Placement, gradient: Gradient
) -> Iterator[tuple[int, Gradient]]:
    """Each server's share of one gradient (sparse rows made local)."""
    name, values, indices = placement.name, gradient.values, gradient.indices
    if placement.keyed:
        for server, where, keys in placement.locate(indices):
            yield server, Gradient(name, values[where], keys)
        return
    if not placement.split:
        yield placement.slices[0].server, gradient
        return
    if indices is None:
        for piece in placement.slices:
            yield piece.server, Gradient(name, values[piece.lo : piece.hi])
        return
    for piece in placement.slices:
        where = np.flatnonzero((indices >= piece.lo) & (indices < piece.hi))
        if where.size:
            local = (indices[where] - piece.lo).astype(indices.dtype)
            yield piece.server, Gradient(name, values[where], local)


def call_shares(
    placements: list[Placement], gradients: list[Gradient], slotted: set[str]
) -> tuple[dict[int, list[Gradient]], list[str]]:
    """Each server's share of one ``apply_gradients`` call, in call order,
    and the split variables whose slots this call makes.

    Keras makes slots for the whole variable: the first push of a split
    variable not in ``slotted`` gives every slice's server a share (empty where
    no row is pushed), so each creates its slots."""
    shares: dict[int, list[Gradient]] = {}
    new: list[str] = []
    for placement, gradient in zip(placements, gradients, strict=True):
        hit = set()
        for server, share in server_shares(placement, gradient):
            shares.setdefault(server, []).append(share)
            hit.add(server)
        if placement.split and not placement.keyed and placement.name not in slotted:
            for piece in placement.slices:
                if piece.server not in hit:
                    empty = np.zeros((0, *placement.shape[1:]), placement.dtype)
                    shares.setdefault(piece.server, []).append(
                        Gradient(placement.name, empty, np.zeros(0, np.int64))
                    )
            new.append(placement.name)
    return shares, new
