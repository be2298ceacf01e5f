"""The key -> row index of a hash-keyed table part, compiled by numba.

Open addressing with linear probing over a power-of-two array of row numbers
(``-1`` empty); a bucket holds only the row, and the key is read back from
the part's ``keys[row]``. That costs a second memory access per probe but
4 bytes per bucket instead of 12, and the index stays below half full, so a
row costs 8 to 16 bytes of index. Deletion shifts later entries of the run
back (no tombstones), so lookups never slow down as keys come and go.

Every function runs without the GIL; callers hold the shard's lock.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from adamax_ps.common.keys import BUCKET_SEED, mix

_JIT = {"nogil": True, "cache": True, "error_model": "numpy", "boundscheck": False}
EMPTY = -1
_ROWS = nb.int32[::1]
_KEYS = nb.int64[::1]
_IN_KEYS = nb.types.Array(nb.int64, 1, "C", readonly=True)


def buckets_for(rows: int) -> int:
    """Buckets for an index of ``rows`` rows: a power of two, at least twice it."""
    size = 16
    while size < 2 * rows:
        size *= 2
    return size


def empty_index(buckets: int) -> np.ndarray:
    return np.full(buckets, EMPTY, np.int32)


@nb.njit(nb.int64(_ROWS, _KEYS, nb.int64), **_JIT)
def find(index, keys, key):
    """The row of ``key``, or -1."""
    mask = np.uint64(index.shape[0] - 1)
    h = mix(key, BUCKET_SEED) & mask
    while True:
        row = index[h]
        if row == EMPTY:
            return -1
        if keys[row] == key:
            return row
        h = (h + np.uint64(1)) & mask


@nb.njit(nb.void(_ROWS, _KEYS, _IN_KEYS, nb.int64[::1]), **_JIT)
def lookup(index, keys, wanted, out):
    """``out[k]`` = the row of ``wanted[k]``, or -1."""
    for k in range(wanted.shape[0]):
        out[k] = find(index, keys, wanted[k])


@nb.njit(nb.void(_ROWS, _KEYS, nb.int64, nb.int64), **_JIT)
def insert(index, keys, key, row):
    """Index ``row`` (whose ``keys[row]`` is ``key``, absent so far)."""
    mask = np.uint64(index.shape[0] - 1)
    h = mix(key, BUCKET_SEED) & mask
    while index[h] != EMPTY:
        h = (h + np.uint64(1)) & mask
    index[h] = row


@nb.njit(nb.int64(_ROWS, _KEYS, nb.int64), **_JIT)
def remove(index, keys, key):
    """Unindex ``key``; its row, or -1 if absent. Later entries of the probe
    run move back into the gap (backward-shift deletion)."""
    mask = np.uint64(index.shape[0] - 1)
    h = mix(key, BUCKET_SEED) & mask
    while True:
        row = index[h]
        if row == EMPTY:
            return -1
        if keys[row] == key:
            break
        h = (h + np.uint64(1)) & mask
    gap = h
    j = h
    while True:
        j = (j + np.uint64(1)) & mask
        moved = index[j]
        if moved == EMPTY:
            break
        home = mix(keys[moved], BUCKET_SEED) & mask
        # The entry at j may fill the gap unless its home lies cyclically
        # in (gap, j]: then it would sit before its home.
        if (j > gap and (home <= gap or home > j)) or (
            j < gap and home <= gap and home > j
        ):
            index[gap] = moved
            gap = j
    index[gap] = EMPTY
    return row


@nb.njit(nb.void(_ROWS, _KEYS, nb.uint8[::1]), **_JIT)
def rebuild(index, keys, live):
    """Index every live row of ``keys`` into an emptied ``index``."""
    index[:] = EMPTY
    for row in range(live.shape[0]):
        if live[row]:
            insert(index, keys, keys[row], row)


@nb.njit(nb.void(_ROWS, _KEYS, nb.types.Array(nb.int64, 1, "C", readonly=True)), **_JIT)
def insert_rows(index, keys, rows):
    """Index each of ``rows`` under its ``keys[row]`` (absent so far)."""
    for k in range(rows.shape[0]):
        insert(index, keys, keys[rows[k]], rows[k])


@nb.njit(nb.void(_ROWS, _KEYS, _IN_KEYS, nb.int64[::1]), **_JIT)
def remove_keys(index, keys, wanted, out):
    """Unindex each of ``wanted``; ``out[k]`` its row, or -1 if absent."""
    for k in range(wanted.shape[0]):
        out[k] = remove(index, keys, wanted[k])
