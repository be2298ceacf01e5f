"""Initial rows of hash-keyed tables: a pure function of the key and the seed.

A key's initial row is drawn from a counter-based generator (splitmix64 of
the seed, the key and the column), not from a stream, so every server, every
restart and every placement gives an unseen key the same row without storing
anything. The distributions are Keras's (``initializers.py`` parses them);
the draws are this generator's, not TensorFlow's. Shape-dependent ones
(glorot, he) take a row as the shape ``(1, dim)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numba as nb
import numpy as np

from adamax_ps.common.keys import mix
from adamax_ps.server.initializers import Initializer

_JIT = {"nogil": True, "cache": True, "error_model": "numpy", "boundscheck": False}
_ALIASES = {"uniform": "random_uniform", "normal": "random_normal"}
_KINDS = {"constant": 0, "uniform": 1, "normal": 2, "truncated": 3}
_TWO_PI = 6.283185307179586


@nb.njit(nb.float64(nb.uint64), **_JIT)
def _unit(bits):
    """A float64 in (0, 1) from 53 high bits."""
    return (np.float64(bits >> np.uint64(11)) + 0.5) * (1.0 / 9007199254740992.0)


@nb.njit(nb.float64(nb.uint64, nb.uint64), **_JIT)
def _gauss(base, counter):
    """A standard normal (Box-Muller over two counters' uniforms)."""
    u1 = _unit(mix(np.int64(counter), base))
    u2 = _unit(mix(np.int64(counter + np.uint64(1)), base))
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(_TWO_PI * u2)


@nb.njit(
    [
        nb.void(
            nb.types.Array(nb.int64, 1, "C", readonly=True),
            f[:, ::1],
            nb.int64,
            nb.uint64,
            nb.float64,
            nb.float64,
        )
        for f in (nb.float32, nb.float64)
    ],
    **_JIT,
)
def _fill(keys, out, kind, seed, a, b):
    width = out.shape[1]
    for r in range(keys.shape[0]):
        base = mix(keys[r], seed)
        for j in range(width):
            if kind == 0:
                x = a
            elif kind == 1:
                x = a + (b - a) * _unit(mix(np.int64(j), base))
            elif kind == 2:
                x = a + b * _gauss(base, np.uint64(2 * j))
            else:  # truncated at two standard deviations: redraw further out
                attempt = np.uint64(0)
                z = 3.0
                while abs(z) > 2.0:
                    z = _gauss(base, np.uint64(2 * j) + attempt * np.uint64(2 * width))
                    attempt += np.uint64(1)
                x = a + b * z
            out[r, j] = x


class KeyInitializer:
    """A table's initializer: ``fill(keys, out)`` writes each key's initial row."""

    def __init__(self, spec: str | Mapping[str, Any], dim: int, seed: int) -> None:
        if isinstance(spec, str):
            spec = _ALIASES.get(spec, spec)
        elif isinstance(spec, Mapping) and spec.get("class_name") in ("uniform",):
            spec = {**spec, "class_name": "random_uniform"}
        parsed = Initializer(spec, (1, dim), seed)
        self.name = parsed.name
        self.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        kind, *params = parsed._distribution
        self.kind = _KINDS[kind]
        self.params = (float(params[0]), float(params[1]) if len(params) > 1 else 0.0)

    def fill(self, keys: np.ndarray, out: np.ndarray) -> None:
        """``out[r]`` = the initial row of ``keys[r]`` (``out`` is 2-D, C order)."""
        if not len(keys):
            return
        if self.kind == 0:
            out.fill(self.params[0])
            return
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        if out.dtype == np.float16:  # numba has no half arithmetic
            wide = np.empty(out.shape, np.float32)
            _fill(keys, wide, self.kind, np.uint64(self.seed), *self.params)
            out[...] = wide
            return
        _fill(keys, out, self.kind, np.uint64(self.seed), *self.params)

    def rows(self, keys: np.ndarray, dim: int, dtype: np.dtype) -> np.ndarray:
        out = np.empty((len(keys), dim), dtype)
        self.fill(keys, out)
        return out
