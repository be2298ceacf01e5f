"""The memory-traffic probe: an Adamax update's reads and writes without its
arithmetic, the ceiling the kernels are measured against (benchmarks only)."""

from __future__ import annotations

import numba as nb

_JIT = {"nogil": True, "cache": True, "error_model": "numpy", "boundscheck": False}
_FLOATS = (nb.float32, nb.float64)


@nb.njit([nb.void(f[::1], f[::1], f[::1], f[::1]) for f in _FLOATS], **_JIT)
def stream_4r3w(a, b, c, d):
    """The update's memory traffic without its arithmetic: read 4, write 3.

    The benchmark's ceiling for a memory-bound Adamax step on this machine.
    """
    for i in range(a.shape[0]):
        x = a[i]
        y = b[i]
        z = c[i]
        s = d[i]
        a[i] = x + s
        b[i] = y + s
        c[i] = z + s
