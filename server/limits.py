"""What one server may spend: its state memory budget and its byte budget for
requests in flight, with the defaults derived from the machine's memory.

The kernel overcommits memory: a huge ``np.empty`` is granted, then the
process is killed while it fills it. So the server counts what it holds and
refuses, before allocating, what would exceed its budget:

- ``MemoryBudget`` (``--memory-limit``): the bytes of every variable, slot and
  optimizer weight. Creating one beyond it is ``MemoryBudgetError``.
- ``InflightBudget`` (``--max-inflight-bytes``): the bytes of request bodies
  (pushes, assignments, created initial values) and of read copies being
  answered at once, over both transports. A request that would exceed it
  waits briefly for others to finish, then is refused as busy.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from adamax_ps.server.errors import (
    MemoryBudgetError,
    ResourceExhaustedError,
    ServerBusyError,
)

STATE_FRACTION = 0.6  # default --memory-limit: of the memory this process may use
INFLIGHT_FRACTION = 0.2  # default --max-inflight-bytes
MAX_REQUEST_BYTES = 2 << 30  # default --max-request-bytes, at most
BUSY_WAIT_SECONDS = 30.0
_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_bytes(text: str | int) -> int:
    """``"8G"``, ``"512M"``, ``"1.5GiB"`` or a number of bytes, as bytes
    (suffixes are powers of 1024)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = _SIZE.match(str(text))
    if match is None:
        raise ValueError(
            f"a size is a number of bytes with an optional K, M, G or T suffix "
            f"(8G, 512M). Received: {text!r}"
        )
    return int(float(match[1]) * _SUFFIXES[match[2].upper()])


def format_bytes(nbytes: int) -> str:
    """``1536 -> "1.5 KiB"``: for messages."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.4g} {unit}"
        value /= 1024
    return f"{value:.4g} TiB"


def available_memory(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The memory this process may use: the machine's, or its container's
    (cgroup v2 ``memory.max`` or v1 ``memory.limit_in_bytes``) when lower."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for name in ("memory.max", "memory/memory.limit_in_bytes"):
        try:
            text = (cgroup / name).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return min(physical, int(text))
    return physical


class MemoryBudget:
    """Bytes of state this server may hold; thread-safe."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a memory limit is positive. Received: {limit}")
        self.limit = limit
        self.used = 0
        self.refused = 0  # creations refused so far
        self._lock = threading.Lock()

    def reserve(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` more, or raise ``MemoryBudgetError`` naming ``what``."""
        with self._lock:
            if self.used + nbytes > self.limit:
                self.refused += 1
                raise MemoryBudgetError(
                    f"{what} needs {format_bytes(nbytes)}; this server holds "
                    f"{format_bytes(self.used)} of its {format_bytes(self.limit)} "
                    "state budget (--memory-limit). Raise the limit, or add "
                    "servers so the variable is split over more of them"
                )
            self.used += nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.used = max(0, self.used - nbytes)


class InflightBudget:
    """Bytes of requests being received or answered at once; thread-safe."""

    def __init__(self, limit: int, wait: float = BUSY_WAIT_SECONDS) -> None:
        if limit < 1:
            raise ValueError(f"an in-flight limit is positive. Received: {limit}")
        self.limit = limit
        self.wait = wait
        self.used = 0
        self.busy = 0  # requests refused as busy so far
        self._cond = threading.Condition()

    def acquire(self, nbytes: int, what: str = "the request") -> None:
        """Take ``nbytes``, waiting up to ``wait`` seconds for others to finish.

        Larger than the whole budget: ``ResourceExhaustedError`` at once.
        Still over after the wait: ``ServerBusyError`` (a client retries).
        """
        if nbytes > self.limit:
            raise ResourceExhaustedError(
                f"{what} needs {format_bytes(nbytes)} in memory, more than this "
                f"server's budget for requests in flight ({format_bytes(self.limit)},"
                " --max-inflight-bytes): send it in smaller parts"
            )
        with self._cond:
            if not self._cond.wait_for(
                lambda: self.used + nbytes <= self.limit, self.wait
            ):
                self.busy += 1
                raise ServerBusyError(
                    f"this server is busy: requests in flight hold "
                    f"{format_bytes(self.used)} of its {format_bytes(self.limit)} "
                    f"budget, and {what} needs {format_bytes(nbytes)} more; retry"
                )
            self.used += nbytes

    def try_acquire(self, nbytes: int) -> bool:
        """Take ``nbytes`` if they fit now (never waits)."""
        with self._cond:
            if nbytes > self.limit or self.used + nbytes > self.limit:
                return False
            self.used += nbytes
            return True

    def release(self, nbytes: int) -> None:
        with self._cond:
            self.used = max(0, self.used - nbytes)
            self._cond.notify_all()

    @contextmanager
    def held(self, nbytes: int, what: str = "the request") -> Iterator[None]:
        """``acquire`` for the ``with`` block, released at its end."""
        self.acquire(nbytes, what)
        try:
            yield
        finally:
            self.release(nbytes)
