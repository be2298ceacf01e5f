"""Keras 2 Adamax arithmetic: step scalars, in-place dense and sparse updates, clipping.

Adamax is the infinity-norm variant of Adam (Kingma & Ba 2014, section 7.1)::

    t = iterations + 1
    m = beta_1 * m + (1 - beta_1) * g
    v = max(beta_2 * v, |g|)
    w = w - lr_t / (1 - beta_1 ** t) * m / (v + epsilon)

This module reproduces ``tf.keras.optimizers.legacy.Adamax`` bit for bit (see
docs/keras-semantics.md): hyper-parameters are float32-rounded, arithmetic
runs in the variable's dtype in TensorFlow's operation order, ``beta_1 ** t``
uses the C library's ``pow``, and the dense and sparse paths keep their two
different rounding forms. It is pure: no I/O, no locks, no logging, no state.
Functions update the arrays they are handed in place; callers own the arrays.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from adamax_ps.common.dedup import deduplicate
from adamax_ps.common.keras import clip_gradients
from adamax_ps.server import kernels

__all__ = [
    "FLOAT_DTYPES",
    "INDEX_DTYPES",
    "StepScalars",
    "c_pow",
    "clip_gradients",
    "cosf",
    "deduplicate",
    "dense_update",
    "logf",
    "powf",
    "rows_view",
    "sparse_rows_update",
    "sparse_update",
]

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))

# A schedule maps the step (iterations, already cast to the variable's dtype)
# to a float32 learning rate, as Keras's LearningRateSchedule.__call__ does.
Schedule = Callable[[np.floating], np.floating]

_libm = ctypes.CDLL(ctypes.util.find_library("m"))
for _name, _arity in (("powf", 2), ("cosf", 1), ("logf", 1)):
    getattr(_libm, _name).argtypes = [ctypes.c_float] * _arity
    getattr(_libm, _name).restype = ctypes.c_float


def powf(base: np.float32, exponent: np.float32) -> np.float32:
    """The C library's float32 ``pow``, which TensorFlow's scalar ``tf.pow`` uses.

    numpy's float32 power differs from it by one ulp for about a fifth of the
    exponents, which flips bits of the weights a few steps later.
    """
    return np.float32(_libm.powf(float(base), float(exponent)))


def cosf(x: np.float32) -> np.float32:
    """The C library's float32 cosine, which TensorFlow's scalar ``tf.cos`` matches
    (numpy's own float32 cosine is one ulp off at some arguments)."""
    return np.float32(_libm.cosf(float(x)))


def logf(x: np.float32) -> np.float32:
    """The C library's float32 natural logarithm."""
    return np.float32(_libm.logf(float(x)))


def c_pow(base: np.floating, exponent: np.floating) -> np.floating:
    """``base ** exponent`` in the dtype of ``base``, rounded as TensorFlow does."""
    dtype = np.asarray(base).dtype
    if dtype == np.float64:
        return np.float64(math.pow(float(base), float(exponent)))
    result = powf(np.float32(base), np.float32(exponent))
    return dtype.type(result)


@dataclass(frozen=True)
class StepScalars:
    """The scalars of one Adamax step for one dtype, shared by every variable.

    Computed once per push: every variable of an ``apply_gradients`` call uses
    the same ``t``. All values are numpy scalars of ``dtype``.
    """

    dtype: np.dtype
    t: int
    lr_t: np.floating
    beta_1: np.floating
    one_minus_beta_1: np.floating
    beta_2: np.floating
    epsilon: np.floating
    lr_hat: np.floating
    neg_lr_hat: np.floating

    @classmethod
    def compute(
        cls,
        *,
        learning_rate: float | Schedule,
        beta_1: float,
        beta_2: float,
        epsilon: float,
        decay: float,
        iterations: int,
        dtype: np.dtype | type,
    ) -> StepScalars:
        """Scalars for the step taken when the optimizer is at ``iterations``.

        The learning rate (constant or schedule, then legacy ``decay``) is
        evaluated at ``iterations``; bias correction uses ``t = iterations + 1``.
        learning_rate, beta_1, beta_2 and decay are float32-rounded first (they
        are float32 variables in Keras); epsilon is not.
        """
        dtype = np.dtype(dtype)
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"Adamax needs a float16/32/64 dtype. Received: {dtype}")
        T = dtype.type
        step = T(iterations)
        if callable(learning_rate):
            lr_t = T(learning_rate(step))
        else:
            lr_t = T(np.float32(learning_rate))
        if decay > 0:
            lr_t = lr_t / (T(1) + T(np.float32(decay)) * step)
        b1 = T(np.float32(beta_1))
        b1_power = c_pow(b1, T(iterations + 1))
        bias = T(1) - b1_power
        return cls(
            dtype=dtype,
            t=iterations + 1,
            lr_t=lr_t,
            beta_1=b1,
            one_minus_beta_1=T(1) - b1,
            beta_2=T(np.float32(beta_2)),
            epsilon=T(epsilon),
            lr_hat=lr_t / bias,
            neg_lr_hat=(-lr_t) / bias,
        )


def _flat(a: np.ndarray) -> np.ndarray:
    """A 1-D view of a C-contiguous array (never a copy: updates are in place)."""
    if not a.flags.c_contiguous:
        raise ValueError("Adamax state and gradients must be C-contiguous arrays")
    return a.reshape(-1)


def rows_view(a: np.ndarray) -> np.ndarray:
    """A 2-D ``[rows, row_size]`` view of a C-contiguous array of rank >= 1."""
    if not a.flags.c_contiguous:
        raise ValueError("Adamax state and gradients must be C-contiguous arrays")
    return a.reshape(a.shape[0], math.prod(a.shape[1:]))


def dense_update(
    w: np.ndarray, m: np.ndarray, v: np.ndarray, g: np.ndarray, step: StepScalars
) -> None:
    """One dense Keras Adamax step on ``w``, ``m``, ``v``, in place.

    TensorFlow's ResourceApplyAdaMax rounding: ``m += (g - m) * (1 - beta_1)``.
    All four arrays share shape and dtype (the caller validates).
    """
    if w.dtype == np.float16:
        _dense_update_numpy(_flat(w), _flat(m), _flat(v), _flat(g), step)
        return
    kernels.dense_adamax(
        _flat(w),
        _flat(m),
        _flat(v),
        _flat(g),
        step.one_minus_beta_1,
        step.beta_2,
        step.lr_hat,
        step.epsilon,
    )


def _dense_update_numpy(w, m, v, g, step: StepScalars) -> None:
    """float16 dense step (numba has no half arithmetic): op by op in half."""
    with np.errstate(all="ignore"):  # overflow to inf is TF's result too, unwarned
        _dense_half(w, m, v, g, step)


def _dense_half(w, m, v, g, step: StepScalars) -> None:
    m += (g - m) * step.one_minus_beta_1
    decayed = step.beta_2 * v
    magnitude = np.abs(g)
    np.copyto(v, np.where(decayed < magnitude, magnitude, decayed))
    w -= step.lr_hat * (m / (v + step.epsilon))


def sparse_rows_update(
    w: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    rows: np.ndarray,
    summed: np.ndarray,
    step: StepScalars,
    lo: int = 0,
) -> None:
    """Lazy sparse step on unique ``rows`` of a ``[rows, row_size]`` block.

    ``w``, ``m``, ``v`` are 2-D and hold the variable's rows ``[lo, lo + len)``;
    rows outside that range are ignored. Only named rows change, with Keras's
    sparse rounding ``m * beta_1 + g * (1 - beta_1)``.
    """
    hi = lo + w.shape[0]
    if w.dtype == np.float16:
        _sparse_rows_numpy(w, m, v, rows, summed, step, lo, hi)
        return
    kernels.sparse_adamax(
        w,
        m,
        v,
        rows,
        summed,
        lo,
        hi,
        step.beta_1,
        step.one_minus_beta_1,
        step.beta_2,
        step.neg_lr_hat,
        step.epsilon,
    )


def _sparse_rows_numpy(w, m, v, rows, summed, step: StepScalars, lo, hi) -> None:
    """float16 sparse step, op by op in half; NaN propagates as in tf.maximum."""
    with np.errstate(all="ignore"):
        _sparse_rows_half(w, m, v, rows, summed, step, lo, hi)


def _sparse_rows_half(w, m, v, rows, summed, step: StepScalars, lo, hi) -> None:
    inside = (rows >= lo) & (rows < hi)
    local = rows[inside] - lo
    g = summed[inside]
    m_rows = m[local] * step.beta_1 + g * step.one_minus_beta_1
    v_rows = np.maximum(v[local] * step.beta_2, np.abs(g))
    m[local] = m_rows
    v[local] = v_rows
    w[local] += step.neg_lr_hat * (m_rows / (v_rows + step.epsilon))


def sparse_update(
    w: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    step: StepScalars,
) -> None:
    """One sparse (IndexedSlices) Keras Adamax step on a whole variable.

    ``values`` has shape ``[len(indices), *w.shape[1:]]``. Duplicates are summed
    first, then each unique row is updated once; every other row of ``w``,
    ``m`` and ``v`` stays bit-for-bit as it was.
    """
    row_size = math.prod(w.shape[1:])
    rows, summed = deduplicate(indices, values.reshape(len(indices), row_size))
    sparse_rows_update(rows_view(w), rows_view(m), rows_view(v), rows, summed, step)
