"""Admission of new keys into a hash-keyed table: a count-min sketch of how
often each key was pushed, and the per-push probability test.

The sketch has ``DEPTH`` rows of 16-bit counters; a key's count is the least
of its ``DEPTH`` counters (never below the truth, above it only through
collisions). Counters only add, so sketches of disjoint key sets sum to the
sketch of their union: a restore onto another shard count merges them. After
``8 x width`` counts every counter halves (integer shift), so in an endless
stream of new ids old counts fade and the filter does not fill up.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from adamax_ps.common.keys import mix

_JIT = {"nogil": True, "cache": True, "error_model": "numpy", "boundscheck": False}
DEPTH = 4
_SEEDS = np.array(
    [0x243F6A8885A308D3, 0x13198A2E03707344, 0xA4093822299F31D0, 0x082EFA98EC4E6C89],
    dtype=np.uint64,
)
_KEYS = nb.types.Array(nb.int64, 1, "C", readonly=True)
_SKETCH = nb.uint16[:, ::1]


@nb.njit(nb.void(_SKETCH, _KEYS, nb.int64[::1], nb.uint64[::1]), **_JIT)
def _estimate(sketch, keys, out, seeds):
    width = np.uint64(sketch.shape[1])
    for k in range(keys.shape[0]):
        least = np.int64(65535)
        for d in range(sketch.shape[0]):
            c = np.int64(sketch[d, mix(keys[k], seeds[d]) % width])
            least = min(least, c)
        out[k] = least


@nb.njit(nb.void(_SKETCH, _KEYS, nb.uint64[::1]), **_JIT)
def _add(sketch, keys, seeds):
    width = np.uint64(sketch.shape[1])
    for k in range(keys.shape[0]):
        for d in range(sketch.shape[0]):
            j = mix(keys[k], seeds[d]) % width
            if sketch[d, j] < 65535:
                sketch[d, j] += 1


class CountingFilter:
    """A count-min sketch of pushes per key (guard it with the part's lock)."""

    @staticmethod
    def bytes_for(nbytes: int) -> int:
        """Bytes of the sketch made for a budget of ``nbytes``."""
        return 2 * DEPTH * max(64, nbytes // (2 * DEPTH))

    def __init__(self, nbytes: int, sketch: np.ndarray | None = None) -> None:
        width = max(64, nbytes // (2 * DEPTH))
        self.sketch = np.zeros((DEPTH, width), np.uint16) if sketch is None else sketch
        self.counted = 0  # counts since the last halving

    @property
    def nbytes(self) -> int:
        return self.sketch.nbytes

    def counts(self, keys: np.ndarray) -> np.ndarray:
        """Each key's estimated count so far."""
        out = np.empty(len(keys), np.int64)
        if len(keys):
            _estimate(self.sketch, keys, out, _SEEDS)
        return out

    def add(self, keys: np.ndarray) -> None:
        """Count one push of each key (halving all counts now and then)."""
        if not len(keys):
            return
        _add(self.sketch, np.ascontiguousarray(keys, dtype=np.int64), _SEEDS)
        self.counted += len(keys)
        if self.counted >= 8 * self.sketch.shape[1]:
            self.sketch >>= 1
            self.counted = 0

    def merged(self, other: np.ndarray) -> None:
        """Add another sketch of the same width (a restore's merge)."""
        total = self.sketch.astype(np.uint32) + other.astype(np.uint32)
        self.sketch[...] = np.minimum(total, 65535).astype(np.uint16)


def admitted_by_chance(keys: np.ndarray, seed: int, step: int, p: float) -> np.ndarray:
    """Which keys pass a probability-``p`` test at ``step`` (a hash, so every
    replay decides the same)."""
    salt = np.uint64((int(seed) * 0x9E3779B97F4A7C15 + int(step)) & (2**64 - 1))
    out = np.empty(len(keys), np.float64)
    _unit_hashes(np.ascontiguousarray(keys, dtype=np.int64), salt, out)
    return out < p


@nb.njit(nb.void(_KEYS, nb.uint64, nb.float64[::1]), **_JIT)
def _unit_hashes(keys, salt, out):
    for k in range(keys.shape[0]):
        out[k] = np.float64(mix(keys[k], salt) >> np.uint64(11)) / 9007199254740992.0
