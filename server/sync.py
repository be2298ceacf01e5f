"""Synchronous training: gather one push per replica for a step, apply them once.

Each replica pushes once per step, tagged with the step (the optimizer's
``iterations``) it computed its gradients from. When ``replicas_to_aggregate``
pushes of a step have arrived (all ``replicas`` by default; fewer makes the
rest backup workers), their gradients are summed (or averaged) in replica-id
order, so a run is reproducible, and applied as one step; every waiting replica
gets the same answer. A push for a step already applied, or closed because
enough replicas arrived, is stale and refused. A replica left waiting longer
than ``timeout`` seconds gets a ``SyncTimeoutError`` (so do the others of that
step); nothing of the step is applied and it may be pushed again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from adamax_ps.server.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    StalePushError,
    SyncTimeoutError,
)

Contribution = TypeVar("Contribution")
Result = TypeVar("Result")


@dataclass(frozen=True)
class SyncSettings:
    replicas: int
    replicas_to_aggregate: int | None = None
    average: bool = False
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be at least 1. Received: {self.replicas}")
        needed = self.needed
        if not 1 <= needed <= self.replicas:
            raise ValueError(
                f"replicas_to_aggregate must be in [1, {self.replicas}]. "
                f"Received: {self.replicas_to_aggregate}"
            )
        if self.timeout <= 0:
            raise ValueError(
                f"The sync timeout must be positive. Received: {self.timeout}"
            )

    @property
    def needed(self) -> int:
        return self.replicas_to_aggregate or self.replicas


@dataclass
class _Round(Generic[Contribution, Result]):
    step: int
    contributions: dict[str, Contribution] = field(default_factory=dict)
    done: bool = False
    result: Result | None = None
    error: BaseException | None = None


class SyncCoordinator(Generic[Contribution, Result]):
    """Rounds of contributions per (optimizer, step); see the module docstring."""

    def __init__(self, settings: SyncSettings) -> None:
        self.settings = settings
        self._cond = threading.Condition()
        self._rounds: dict[tuple[str, int], _Round] = {}
        self._closed: dict[str, int] = {}  # optimizer -> last step closed
        self.waits = 0
        self.stale = 0

    def contribute(
        self,
        optimizer: str,
        step: int,
        current: int,
        replica: str,
        contribution: Contribution,
        apply: Callable[[int, dict[str, Contribution]], Result],
    ) -> Result:
        """Add a replica's push for ``step`` (the optimizer is at ``current``).

        The push that completes the round calls ``apply(step, contributions)``
        (contributions keyed by replica) and every member gets its result.
        """
        key = (optimizer, step)
        with self._cond:
            self._check_step(optimizer, step, current)
            round_ = self._rounds.setdefault(key, _Round(step))
            if replica in round_.contributions:
                raise InvalidArgumentError(
                    f"replica {replica!r} already pushed for step {step} of "
                    f"optimizer {optimizer!r}"
                )
            round_.contributions[replica] = contribution
            complete = len(round_.contributions) >= self.settings.needed
            if complete:
                del self._rounds[key]
                self._closed[optimizer] = step
            else:
                self.waits += 1
        if complete:
            return self._apply(round_, optimizer, apply)
        return self._wait(round_, key, optimizer)

    def waiting(self, optimizer: str, step: int) -> bool:
        """Whether replicas' pushes for ``step`` wait for the others."""
        with self._cond:
            return (optimizer, step) in self._rounds

    def close_step(self, optimizer: str, step: int, current: int) -> None:
        """Claim ``step`` for a push already aggregated by the workers."""
        with self._cond:
            self._check_step(optimizer, step, current)
            if (optimizer, step) in self._rounds:
                raise FailedPreconditionError(
                    f"step {step} of optimizer {optimizer!r} already has replica "
                    "pushes waiting to be aggregated"
                )
            self._closed[optimizer] = step

    def reopen(self, optimizer: str, step: int) -> None:
        """A claimed step failed to apply (nothing changed): allow it again."""
        with self._cond:
            if self._closed.get(optimizer) == step:
                self._closed[optimizer] = step - 1

    def _check_step(self, optimizer: str, step: int, current: int) -> None:
        closed = self._closed.get(optimizer, -1)
        if step < current or step <= closed:
            self.stale += 1
            raise StalePushError(
                f"push for step {step} of optimizer {optimizer!r} is stale: that "
                f"step is already applied or closed (the optimizer is at "
                f"iterations {current})"
            )
        if step > current:
            raise FailedPreconditionError(
                f"push for step {step} of optimizer {optimizer!r} is ahead of the "
                f"server, which is at iterations {current}"
            )

    def _apply(self, round_: _Round, optimizer: str, apply: Callable) -> Result:
        try:
            round_.result = apply(round_.step, round_.contributions)
        except BaseException as e:
            round_.error = e
            self.reopen(optimizer, round_.step)
        with self._cond:
            round_.done = True
            self._cond.notify_all()
        if round_.error is not None:
            raise round_.error
        return round_.result

    def _wait(self, round_: _Round, key: tuple[str, int], optimizer: str) -> Result:
        with self._cond:
            finished = self._cond.wait_for(lambda: round_.done, self.settings.timeout)
            if not finished:
                arrived = len(round_.contributions)
                round_.error = SyncTimeoutError(
                    f"timed out after {self.settings.timeout:g} s waiting for "
                    f"{self.settings.needed} replicas at step {round_.step} of "
                    f"optimizer {optimizer!r}: {arrived} arrived"
                )
                round_.done = True
                if self._rounds.get(key) is round_:
                    del self._rounds[key]
                self._cond.notify_all()
        if round_.error is not None:
            raise round_.error
        return round_.result

    def pending(self) -> int:
        """Replicas currently waiting for their step to complete."""
        with self._cond:
            return sum(len(r.contributions) for r in self._rounds.values())


def replica_key(push_id: Any, replica: int | None, replicas: int) -> str:
    """The name a push's replica goes by in its step's round: ``rank N``
    (checked below the server's replicas), else its client id."""
    if replica is None:
        return push_id.client
    if isinstance(replica, bool) or not isinstance(replica, int) or replica < 0:
        raise InvalidArgumentError(
            f"a replica id is a non-negative integer. Received: {replica!r}"
        )
    if replica >= replicas:
        raise InvalidArgumentError(
            f"replica {replica} is not below this server's {replicas} replicas "
            "(--replicas): ranks run from 0"
        )
    return f"rank {replica}"


def replica_order(key: str) -> tuple[int, int, str]:
    """Ranks in numeric order, then client ids (a reproducible sum)."""
    if key.startswith("rank ") and key[5:].isdigit():
        return (0, int(key[5:]), "")
    return (1, 0, key)
