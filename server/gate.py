"""The change gate: every change to a server's state passes it, and a rescale
closes it (no change starts, the ones in flight finish) to take a cut.

A change enters and leaves (``with gate.change():``); ``close(reason)``
refuses every new one with ``RescalingError(reason)`` (UNAVAILABLE: a worker
waits and retries), then waits until those in flight have left. Reads do not
pass the gate: while it is closed the state they see is the cut's.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from adamax_ps.server.errors import FailedPreconditionError, RescalingError

F = TypeVar("F", bound=Callable[..., Any])


def gated_unless(held: Callable[..., bool]) -> Callable[[F], F]:
    """``gated``, unless ``held(self, *args, **kwargs)`` says what the call
    asks for is there already: attaching to it changes nothing, so it is
    answered while the gate is closed (a worker inspecting a frozen cluster)."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        def change(self, *args: Any, **kwargs: Any) -> Any:
            if self.gate.closed is not None and held(self, *args, **kwargs):
                return method(self, *args, **kwargs)
            with self.gate.change():
                return method(self, *args, **kwargs)

        return change  # type: ignore[return-value]

    return decorate


def _never(*args: Any, **kwargs: Any) -> bool:
    return False


# A method of the service that changes its state: it passes ``self.gate``.
gated = gated_unless(_never)


class ChangeGate:
    """Counts the changes in flight; closed, refuses new ones. Thread-safe."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._inside = 0
        self._closed: str | None = None
        self._draining = False  # close() waits for the changes in flight

    @property
    def closed(self) -> str | None:
        """Why changes are refused, or None while they pass."""
        return self._closed

    @contextmanager
    def change(self, joins: Callable[[], bool] | None = None) -> Iterator[None]:
        """The block of one change: refused while the gate is closed, unless
        ``joins()`` says it joins changes in flight that wait for it (a
        synchronous round's other replicas) while ``close`` drains them.
        ``joins`` is asked only then, not on every change."""
        with self._cond:
            if self._closed is not None and not (
                self._draining and joins is not None and joins()
            ):
                raise RescalingError(self._closed)
            self._inside += 1
        try:
            yield
        finally:
            with self._cond:
                self._inside -= 1
                if not self._inside:
                    self._cond.notify_all()

    def close(self, reason: str, timeout: float) -> None:
        """Refuse every new change with ``reason``; return once none is in
        flight. ``FailedPreconditionError`` (the gate open again) when some
        are still in flight after ``timeout`` seconds (a synchronous round
        whose other replicas never came, say)."""
        with self._cond:
            self._closed, self._draining = reason, True
            drained = self._cond.wait_for(lambda: self._inside == 0, timeout)
            self._draining = False
            if not drained:
                busy, self._closed = self._inside, None
                raise FailedPreconditionError(
                    f"{busy} change(s) still in flight after {timeout:g} s: the "
                    "cluster was not frozen (try again, or give a longer timeout)"
                )

    def refuse(self, reason: str) -> None:
        """Keep the gate closed with a new reason (the cut is taken)."""
        with self._cond:
            self._closed = reason

    def open(self) -> None:
        with self._cond:
            self._closed = None
