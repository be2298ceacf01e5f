"""Stable hashing of int64 table keys: which server and which shard hold a key.

Every worker and every server computes the same answer from the key alone,
so any of them can route a key without asking. Placement over servers is
Lamping and Veach's jump consistent hash of a mixed key: growing a cluster
from ``n`` to ``n + 1`` servers moves only the keys the new server takes
(about ``1 / (n + 1)`` of them), never keys between old servers. Shards and
hash buckets use the same mixer with other seeds, so the three choices are
independent (keys on one server still spread over all its shards and
buckets).

The mixer is splitmix64's finaliser, a bijection of 64-bit words whose
output bits each depend on every input bit.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_JIT = {"nogil": True, "cache": True, "error_model": "numpy", "boundscheck": False}

SERVER_SEED = np.uint64(0)
SHARD_SEED = np.uint64(0x5EED5EED5EED5EED)
BUCKET_SEED = np.uint64(0xB0C4E7B0C4E7B0C4)


@nb.njit(nb.uint64(nb.int64, nb.uint64), **_JIT)
def mix(key, seed):
    """splitmix64's finaliser of ``key + seed``, as an unsigned word."""
    z = np.uint64(key) + seed + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@nb.njit(nb.int64(nb.uint64, nb.int64), **_JIT)
def jump(hashed, buckets):
    """Jump consistent hash: the bucket in ``[0, buckets)`` of a 64-bit hash."""
    b = np.int64(-1)
    j = np.int64(0)
    h = hashed
    while j < buckets:
        b = j
        h = h * np.uint64(2862933555777941757) + np.uint64(1)
        j = np.int64(
            np.float64(b + 1)
            * (np.float64(1 << 31) / np.float64((h >> np.uint64(33)) + np.uint64(1)))
        )
    return b


_KEYS = nb.types.Array(nb.int64, 1, "C", readonly=True)


@nb.njit(nb.int64[::1](_KEYS, nb.int64), **_JIT)
def _servers(keys, servers):
    out = np.empty(keys.shape[0], np.int64)
    for k in range(keys.shape[0]):
        out[k] = jump(mix(keys[k], SERVER_SEED), servers)
    return out


@nb.njit(nb.int64[::1](_KEYS, nb.int64), **_JIT)
def _shards(keys, shards):
    out = np.empty(keys.shape[0], np.int64)
    for k in range(keys.shape[0]):
        out[k] = np.int64(mix(keys[k], SHARD_SEED) % np.uint64(shards))
    return out


def as_keys(keys: np.ndarray) -> np.ndarray:
    """``keys`` as a contiguous int64 array (int32 keys are widened)."""
    return np.ascontiguousarray(keys, dtype=np.int64)


def server_of(keys: np.ndarray, servers: int) -> np.ndarray:
    """The server (of ``servers``) holding each key."""
    if servers == 1:
        return np.zeros(len(keys), np.int64)
    return _servers(as_keys(keys), servers)


def shard_of(keys: np.ndarray, shards: int) -> np.ndarray:
    """The shard (of a server's ``shards``) holding each key."""
    if shards == 1:
        return np.zeros(len(keys), np.int64)
    return _shards(as_keys(keys), shards)
