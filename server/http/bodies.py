"""Request bodies and large answers, within the server's byte budgets.

A body is refused beyond ``--max-request-bytes`` before it is read, and its
bytes count in the in-flight budget while the request lives (the declared
length, or a growing share as a body without one arrives); it is read into
one pooled buffer. A read's copy counts in the budget until its answer is
sent. ``EndOfRequest`` gives everything a request held back once it is
answered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from typing import Any

import anyio
import numpy as np
from fastapi import Request
from fastapi.responses import StreamingResponse

from adamax_ps.proto import codec, streams
from adamax_ps.server.errors import ServerBusyError
from adamax_ps.server.limits import InflightBudget
from adamax_ps.server.metrics import Metrics

WAITING_BODIES = 64  # requests that may wait at once for room in the budget


class TooLargeError(Exception):
    """A request or answer over its size limit (413)."""


class Bodies:
    """Reads request bodies for one app; see the module docstring."""

    def __init__(
        self,
        inflight: InflightBudget,
        metrics: Metrics,
        max_request_bytes: int,
        buffers: streams.BufferPool | None = None,
    ) -> None:
        self.inflight = inflight
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.buffers = buffers or streams.BufferPool()
        self._waits = anyio.CapacityLimiter(WAITING_BODIES)

    async def read(self, request: Request) -> memoryview:
        """The request body, refused beyond the size limit before it is read.

        With a declared length it is read into one buffer of that length, from
        ``buffers`` when large: a fresh buffer above glibc's mmap threshold is
        a fresh mapping whose pages every push would fault in again.
        """
        limit = self.max_request_bytes
        length = request.headers.get("content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        if declared is not None and declared > limit:
            raise TooLargeError(
                f"the request has {length} bytes, over this server's limit of "
                f"{limit} (--max-request-bytes)"
            )
        if declared:
            await self._hold(request, declared, wait=True)
        data: np.ndarray | bytearray = (
            self.buffers.take(declared) if declared else bytearray()
        )
        filled = 0
        async for chunk in request.stream():
            end = filled + len(chunk)
            if end > limit:
                raise TooLargeError(
                    f"the request exceeds this server's limit of {limit} "
                    "bytes (--max-request-bytes)"
                )
            if end > _held(request):  # no length declared (or more than it)
                await self._hold(request, max(end, _held(request)), wait=False)
            if isinstance(data, np.ndarray) and end <= len(data):
                data[filled:end] = np.frombuffer(chunk, np.uint8)
            else:  # no length declared (or more than it): a growing bytearray
                if isinstance(data, np.ndarray):
                    data = bytearray(data[:filled])
                data += chunk
            filled = end
        self.metrics.received_bytes.labels("http").inc(filled)
        return memoryview(data)[:filled]

    async def framed(self, request: Request) -> tuple[dict, memoryview]:
        """A framed body's JSON header and the raw bytes after it."""
        return codec.unframe(await self.read(request))

    async def _hold(self, request: Request, nbytes: int, wait: bool) -> None:
        """Count ``nbytes`` more of this request in the in-flight budget (given
        back when the request ends). ``wait``: for room, on a thread of its
        own (never one a handler needs)."""
        inflight = self.inflight
        if not inflight.try_acquire(nbytes):
            if not wait:
                raise ServerBusyError(
                    "this server is busy: the requests in flight hold its budget "
                    "(--max-inflight-bytes); retry"
                )
            await anyio.to_thread.run_sync(
                inflight.acquire, nbytes, "the request's body", limiter=self._waits
            )
        request.state.inflight_bytes = _held(request) + nbytes
        at_end(request, lambda: inflight.release(nbytes))


def held_until_answered(
    request: Request, context: AbstractContextManager[np.ndarray]
) -> np.ndarray:
    """Enter ``context`` (a service read) and leave it once the answer is sent:
    the copy's bytes count in the in-flight budget until then."""
    stack = ExitStack()
    array = stack.enter_context(context)
    at_end(request, stack.close)
    return array


def npy(array: np.ndarray) -> StreamingResponse:
    """An array as ``.npy`` bytes, sent in chunks."""
    array = np.asarray(array, order="C")

    def pieces() -> Iterator[bytes | memoryview]:
        yield codec.npy_header(array)
        view = memoryview(array.reshape(-1)).cast("B")
        for start in range(0, len(view), streams.CHUNK_BYTES):
            yield bytes(view[start : start + streams.CHUNK_BYTES])

    return StreamingResponse(pieces(), media_type=codec.NPY)


def _held(request: Request) -> int:
    """Bytes of the in-flight budget this request's body holds."""
    return getattr(request.state, "inflight_bytes", 0)


def at_end(request: Request, cleanup: Callable[[], Any]) -> None:
    """Run ``cleanup`` once the request is answered (``EndOfRequest``)."""
    state = request.scope.setdefault("state", {})
    state.setdefault(_CLEANUPS, []).append(cleanup)


_CLEANUPS = "adamax_ps_cleanups"


class CountRequests:
    """Counts each request by its method and route (``POST
    /api/v1/optimizers/{name}/apply``), once the app has routed it."""

    def __init__(self, app: Any, counter: Any) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http":
                route = scope.get("route")
                path = getattr(route, "path", None) or "unrouted"
                self.counter.labels("http", f"{scope['method']} {path}").inc()


class EndOfRequest:
    """Runs each request's cleanups once the app has answered it, the whole
    body of the answer sent: what it held of the in-flight budget (its body's
    buffer, its read copy) is given back then."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            for cleanup in scope.get("state", {}).pop(_CLEANUPS, ()):
                cleanup()
