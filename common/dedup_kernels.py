"""The numba kernels of ``dedup``: first appearances and segment sums.

Compiled like the update kernels (``error_model="numpy"``, ``nogil``, explicit
signatures cached on disk). Imported only by ``dedup.deduplicate`` on first
use, so importing the client never loads numba.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_JIT = {"nogil": True, "cache": True, "error_model": "numpy", "boundscheck": False}
_FLOATS = (nb.float32, nb.float64)
_INTS = (nb.int32, nb.int64)


def _in(dtype, ndim: int = 1):
    """A read-only C array type (accepts writable arrays too)."""
    return nb.types.Array(dtype, ndim, "C", readonly=True)


@nb.njit([nb.types.UniTuple(nb.int64[::1], 2)(_in(i)) for i in _INTS], **_JIT)
def first_appearance(indices):
    """Unique indices in order of first appearance, and each input's position.

    Returns ``(unique, position)`` with ``indices[k] == unique[position[k]]``.
    An open-addressing hash table (Fibonacci hashing, linear probing) makes this
    O(n) and keeps TensorFlow's ``tf.unique`` order without a sort.
    """
    n = indices.shape[0]
    bits = 1
    while (1 << bits) < 2 * n:
        bits += 1
    size = 1 << bits
    mask = size - 1
    shift = np.uint64(64 - bits)
    keys = np.empty(size, np.int64)
    slots = np.full(size, -1, np.int64)
    unique = np.empty(n, np.int64)
    position = np.empty(n, np.int64)
    count = 0
    for k in range(n):
        key = np.int64(indices[k])
        h = np.int64((np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> shift)
        while True:
            slot = slots[h]
            if slot < 0:
                slots[h] = count
                keys[h] = key
                unique[count] = key
                position[k] = count
                count += 1
                break
            if keys[h] == key:
                position[k] = slot
                break
            h = (h + 1) & mask
    return unique[:count].copy(), position


@nb.njit([f[:, ::1](_in(f, 2), _in(nb.int64), nb.int64) for f in _FLOATS], **_JIT)
def segment_sum(values, position, count):
    """Sum rows of ``values`` into ``count`` rows, in input order.

    Each output row starts at zero and adds its inputs one by one, as
    ``tf.math.unsorted_segment_sum`` does, so the rounding matches TensorFlow.
    """
    width = values.shape[1]
    out = np.zeros((count, width), values.dtype)
    for k in range(values.shape[0]):
        p = position[k]
        for j in range(width):
            out[p, j] += values[k, j]
    return out
