"""Bounded retries with exponential backoff, for both transports.

Every call a transport makes is idempotent or carries a push id (a retried
push is applied once), so an attempt that failed because the server could
not be reached, or was busy, is simply made again, a bounded number of
times. A transport's attempt raises ``RetryableError`` for such a failure, with the
error to raise once the attempts are spent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from adamax_ps.client.errors import ParameterServerError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff for unreachable servers.

    ``on_retry(address, reason)``, if given, is called before each retry (to
    log or count them).
    """

    attempts: int = 8
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0
    on_retry: Callable[[str, str], None] | None = None

    def retrying(self, address: str, reason: str) -> None:
        if self.on_retry is not None:
            self.on_retry(address, reason)

    def delays(self) -> Iterator[float]:
        delay = self.initial_backoff
        for _ in range(self.attempts - 1):
            yield delay
            delay = min(delay * self.multiplier, self.max_backoff)


class RetryableError(Exception):
    """An attempt failed in a way the next attempt may not (``reason`` says
    why); ``error`` is what the caller gets when no attempt is left."""

    def __init__(self, reason: str, error: ParameterServerError) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


def with_retries(policy: RetryPolicy, address: str, attempt: Callable[[int], T]) -> T:
    """``attempt(0)``, then ``attempt(1)``, ... while it raises ``RetryableError``,
    sleeping the policy's backoff between attempts; the last ``RetryableError``'s
    error once the policy's attempts are spent."""
    delays = policy.delays()
    number = 0
    while True:
        try:
            return attempt(number)
        except RetryableError as failed:
            delay = next(delays, None)
            if delay is None:
                raise failed.error from None
            policy.retrying(address, failed.reason)
            time.sleep(delay)
            number += 1
