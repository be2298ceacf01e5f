"""Fused Adamax loops compiled by numba: one pass over memory per update.

These are the memory-bound inner loops behind ``adamax.py``. Each loop reads
``w``, ``m``, ``v`` and the gradient once and writes ``w``, ``m``, ``v`` once
(28 bytes per float32 parameter), which is the least traffic the update allows.

Compilation choices, each measured on our machines (bench/kernels.py):

- ``error_model="numpy"``: numba's default "python" model adds a zero-division
  check that stops SIMD vectorisation and halves the speed (float32, serial:
  0.84 against 1.54 Gparam/s).
- ``nogil=True``: callers run several shards' updates on threads at once.
- no ``fastmath``: it would let LLVM contract ``a * b + c`` into FMA and reorder
  operations, and the result would no longer match TensorFlow bit for bit.
- explicit signatures with ``cache=True``: compiled (or loaded from the on-disk
  cache) at import, so no first request pays for the JIT (a warm cache loads in
  0.13-0.15 s, a cold compile takes 0.47-0.58 s).

Scalars are passed already in the array's dtype; computing ``1 - beta_1`` here
would promote a float32 loop to float64 and change both speed and rounding.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_JIT = {"nogil": True, "cache": True, "error_model": "numpy", "boundscheck": False}
_FLOATS = (nb.float32, nb.float64)
_INTS = (nb.int32, nb.int64)


def _in(dtype, ndim: int = 1):
    """A read-only C array type: accepts writable arrays too, and the zero-copy
    (read-only) views transports decode gradients into."""
    return nb.types.Array(dtype, ndim, "C", readonly=True)


@nb.njit([nb.void(f[::1], f[::1], f[::1], _in(f), f, f, f, f) for f in _FLOATS], **_JIT)
def dense_adamax(w, m, v, g, one_minus_beta_1, beta_2, lr_hat, epsilon):
    """ResourceApplyAdaMax on flat contiguous arrays, in place, in their dtype.

    ``m += (g - m) * (1 - beta_1)``; ``v = max(beta_2 * v, |g|)``;
    ``w -= lr_hat * (m / (v + epsilon))``. The max keeps ``beta_2 * v`` when
    ``|g|`` is NaN, as Eigen's ``cwiseMax`` does (so NaN never enters ``v``).
    """
    for i in range(w.shape[0]):
        m_i = m[i] + (g[i] - m[i]) * one_minus_beta_1
        decayed = beta_2 * v[i]
        magnitude = abs(g[i])
        v_i = magnitude if decayed < magnitude else decayed
        m[i] = m_i
        v[i] = v_i
        w[i] -= lr_hat * (m_i / (v_i + epsilon))


@nb.njit(
    [
        nb.void(
            f[:, ::1],
            f[:, ::1],
            f[:, ::1],
            _in(nb.int64),
            _in(f, 2),
            nb.int64,
            nb.int64,
            f,
            f,
            f,
            f,
            f,
        )
        for f in _FLOATS
    ],
    **_JIT,
)
def sparse_adamax(
    w, m, v, rows, g_rows, lo, hi, beta_1, one_minus_beta_1, beta_2, neg_lr_hat, epsilon
):
    """Keras 2 lazy sparse Adamax on unique rows, in place.

    ``w``, ``m``, ``v`` hold rows ``[lo, hi)`` of a variable (a whole variable
    has ``lo = 0``); rows of ``rows`` outside that range are skipped, so each
    shard of a split variable can take the same arguments. For each row r:
    ``m_r = m_r * beta_1 + g_r * (1 - beta_1)`` (the sparse rounding form),
    ``v_r = max(v_r * beta_2, |g_r|)`` propagating NaN as ``tf.maximum``, and
    ``w_r += neg_lr_hat * (m_r / (v_r + epsilon))``. Other rows are untouched.
    """
    width = w.shape[1]
    for r in range(rows.shape[0]):
        row = rows[r]
        if row < lo or row >= hi:
            continue
        local = row - lo
        for j in range(width):
            g = g_rows[r, j]
            m_j = m[local, j] * beta_1 + g * one_minus_beta_1
            decayed = v[local, j] * beta_2
            magnitude = abs(g)
            if decayed != decayed or magnitude != magnitude:
                v_j = decayed + magnitude
            elif decayed < magnitude:
                v_j = magnitude
            else:
                v_j = decayed
            m[local, j] = m_j
            v[local, j] = v_j
            w[local, j] += neg_lr_hat * (m_j / (v_j + epsilon))


@nb.njit([nb.int64(_in(u), u, u) for u in (nb.uint16, nb.uint32, nb.uint64)], **_JIT)
def first_nonfinite_bits(bits, magnitude, exponent):
    """Index of the first NaN or Inf, given a float array's bits, or -1.

    A float is NaN or Inf exactly when its magnitude bits (all but the sign)
    are at least the exponent mask. One pass takes the largest magnitude: an
    integer max-reduction over the whole array, which LLVM vectorises (44 GB/s
    here; the same loop cut into blocks with an early exit did not vectorise
    and ran at 5 GB/s). Only an array holding such a value is searched again,
    element by element.
    """
    top = bits.dtype.type(0)
    for i in range(bits.shape[0]):
        top = max(top, bits[i] & magnitude)
    if top < exponent:
        return -1
    for i in range(bits.shape[0]):
        if bits[i] & magnitude >= exponent:
            return i
    return -1


_EXPONENT = {  # dtype: (its bits, the magnitude mask, the exponent mask)
    np.dtype(np.float16): (np.uint16, np.uint16(0x7FFF), np.uint16(0x7C00)),
    np.dtype(np.float32): (
        np.uint32,
        np.uint32(0x7FFFFFFF),
        np.uint32(0x7F800000),
    ),
    np.dtype(np.float64): (
        np.uint64,
        np.uint64(0x7FFFFFFFFFFFFFFF),
        np.uint64(0x7FF0000000000000),
    ),
}


def first_nonfinite(values: np.ndarray) -> int:
    """Index of the first NaN or Inf in a flat float array, or -1."""
    unsigned, magnitude, exponent = _EXPONENT[values.dtype]
    return int(first_nonfinite_bits(values.view(unsigned), magnitude, exponent))


@nb.njit([nb.int64(_in(i), nb.int64) for i in _INTS], **_JIT)
def first_out_of_range(indices, rows):
    """Position of the first index outside ``[0, rows)``, or -1."""
    for k in range(indices.shape[0]):
        if indices[k] < 0 or indices[k] >= rows:
            return k
    return -1


@nb.njit(
    [
        nb.types.Tuple((nb.float64, nb.float64, nb.float64, nb.float64, nb.int64))(
            _in(f, 2)
        )
        for f in _FLOATS
    ],
    **_JIT,
)
def summary(rows):
    """One pass over a ``[rows, row_size]`` array: sum of squares, min, max, sum
    (accumulated in float64) and the number of rows with a non-zero value."""
    squares = 0.0
    low = np.inf
    high = -np.inf
    total = 0.0
    nonzero = 0
    for r in range(rows.shape[0]):
        any_nonzero = False
        for j in range(rows.shape[1]):
            x = np.float64(rows[r, j])
            squares += x * x
            total += x
            low = min(low, x)
            high = max(high, x)
            any_nonzero = any_nonzero or x != 0
        nonzero += any_nonzero
    return squares, low, high, total, nonzero


@nb.njit(
    [nb.float64[::1](_in(f, 2), _in(f, 2), nb.float64, nb.boolean) for f in _FLOATS],
    **_JIT,
)
def row_scores(m, v, epsilon, by_update):
    """Per row: the L2 norm of ``|m| / (v + epsilon)`` (the size of the step
    Adamax is about to take, before the learning rate) or of ``m``."""
    out = np.empty(m.shape[0], np.float64)
    for r in range(m.shape[0]):
        total = 0.0
        for j in range(m.shape[1]):
            x = np.float64(m[r, j])
            if by_update:
                x = x / (np.float64(v[r, j]) + epsilon)
            total += x * x
        out[r] = np.sqrt(total)
    return out
