"""glibc malloc tuning for processes that move large messages (server and client).

By default glibc serves every allocation above a dynamic threshold with its own
mmap and returns freed memory to the system at once, so each 4-32 MB message
pays for fresh page faults (about 6 us per 4 KiB page on our machines), which
made such messages 3-10x slower: protobuf pushes of 4 and 32 MB over gRPC fell
to 0.17-0.27 GB/s, against 0.8-1.0 GB/s tuned. Raising the mmap threshold to
glibc's maximum and keeping freed memory for reuse removes most of that cost.
Elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 << 20


def tune_malloc() -> bool:
    """Apply the tuning to this process; False where glibc is not in use or
    ``ADAMAX_PS_MALLOC_TUNE=0``."""
    if os.environ.get("ADAMAX_PS_MALLOC_TUNE", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    libc = ctypes.CDLL(name)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all(
        mallopt(option, value) == 1
        for option, value in (
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (M_TOP_PAD, TOP_PAD),
        )
    )
