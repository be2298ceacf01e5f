"""Placement: which owner holds which rows of a variable, the same everywhere.

One rule serves a cluster (owners are servers, computed alike by every
worker) and a server (owners are its shards): a variable smaller than
``split_bytes``, or with fewer rows than owners, lives whole with the owner
``crc32(name) % owners`` (a stable hash, never the salted ``hash()``); a larger
one is split into contiguous, near-equal row ranges, one per owner in order.
"""

from __future__ import annotations

import math
import zlib

Ranges = tuple[tuple[int, int, int], ...]  # (owner, first row, end row)


def place_rows(
    name: str, shape: tuple[int, ...], itemsize: int, owners: int, split_bytes: int
) -> Ranges:
    """``(owner, lo, hi)`` for each owner holding rows ``[lo, hi)`` of ``name``."""
    rows = shape[0] if shape else 1
    nbytes = math.prod(shape) * itemsize
    if owners == 1 or not shape or nbytes < split_bytes or rows < owners:
        return ((zlib.crc32(name.encode()) % owners, 0, rows),)
    bounds = [rows * i // owners for i in range(owners + 1)]
    return tuple((i, bounds[i], bounds[i + 1]) for i in range(owners))
