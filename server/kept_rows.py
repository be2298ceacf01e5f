"""Rows an old server keeps through a rescale, left where they are in memory.

A server of the old cluster that is also in the new one owns, after the
rescale, some of the rows it held before: server 0 of 2 -> 3 keeps the first
two thirds of its rows. Its state is frozen and equal to its cut, so instead
of reading those rows back from the cut into new arrays (a copy, and fresh
pages the machine must fault in), the new variable's parts are views of the
old parts for the rows kept; only the rows that come from elsewhere are
imported. A shard holds one part of a variable, so this needs a free shard
for each imported range; where there is none, the variable is imported
whole, as on a new server.

The pages of an old array outside its kept view hold rows that left: they
are handed back to the system (``madvise(MADV_DONTNEED)``), so the server's
memory is what it owns, as after a plain import.
"""

from __future__ import annotations

import ctypes
import mmap
from dataclasses import dataclass

import numpy as np

from adamax_ps.server import libc
from adamax_ps.server.store import Part, ShardedStore, VariableRecord

MADV_DONTNEED = 4


@dataclass(frozen=True)
class Held:
    """One variable as the old server held it: its record and its parts."""

    record: VariableRecord
    parts: list[Part]

    @property
    def first(self) -> int:
        return self.record.row_offset

    @property
    def last(self) -> int:
        return self.record.row_offset + self.record.shape[0]


def held_rows(store: ShardedStore) -> dict[str, Held]:
    """What the store holds of each variable with rows (before it is emptied)."""
    held = {}
    for record in store.records():
        if record.shape:
            held[record.name] = Held(record, store.parts(record))
    return held


# A new part: (shard, lo, hi, None) to import, or with (old part, its view).
Layout = list[tuple[int, int, int, tuple[Part, Part] | None]]


def layout(
    held: Held | None,
    global_shape: tuple[int, ...],
    dtype: np.dtype,
    owned: tuple[int, int],
    num_shards: int,
) -> Layout | None:
    """The parts of a variable whose global rows ``owned`` this server owns
    now, relative to its first row: the rows it held as views of the old
    parts, each on its old shard, and each other range on a free shard, to
    be imported; None when nothing is kept or no shard is free."""
    if held is None or not global_shape:
        return None
    old = held.record
    if (old.global_shape or old.shape) != global_shape or old.dtype != dtype:
        return None
    lo, hi = owned
    first, last = max(lo, held.first), min(hi, held.last)
    if first >= last:
        return None
    parts: Layout = []
    for part in held.parts:
        a = max(first, held.first + part.lo)
        b = min(last, held.first + part.hi)
        if a < b:
            rows = slice(a - held.first - part.lo, b - held.first - part.lo)
            view = Part(
                old.name,
                part.shard,
                a - lo,
                b - lo,
                part.value[rows],
                {key: slot[rows] for key, slot in part.slots.items()},
            )
            parts.append((part.shard, a - lo, b - lo, (part, view)))
    imported = [(a, b) for a, b in ((lo, first), (last, hi)) if a < b]
    free = sorted(set(range(num_shards)) - {shard for shard, _, _, _ in parts})
    if len(imported) > len(free):
        return None
    parts += [
        (shard, a - lo, b - lo, None)
        for shard, (a, b) in zip(free, imported, strict=False)
    ]
    return sorted(parts, key=lambda p: p[1])


def release_outside(parts: Layout) -> int:
    """Hand back the pages of the old parts' arrays outside their kept views
    (rows that left this server); returns the bytes released."""
    released = 0
    for _, _, _, kept in parts:
        if kept is not None:
            old, view = kept
            released += _advise_outside(old.value, view.value)
            for key, slot in old.slots.items():
                released += _advise_outside(slot, view.slots[key])
    return released


def _advise_outside(array: np.ndarray, view: np.ndarray) -> int:
    """``madvise(MADV_DONTNEED)`` the whole pages of ``array`` before and
    after ``view`` (a slice of it); the bytes so released."""
    madvise = libc.function("madvise", ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if madvise is None or not array.size:
        return 0
    page = mmap.PAGESIZE
    start = array.ctypes.data
    end = start + array.nbytes
    inner = view.ctypes.data
    ranges = [
        (-(-start // page) * page, inner // page * page),
        (-(-(inner + view.nbytes) // page) * page, end // page * page),
    ]
    released = 0
    for a, b in ranges:
        if b > a and madvise(a, b - a, MADV_DONTNEED) == 0:
            released += b - a
    return released
