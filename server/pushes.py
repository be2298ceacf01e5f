"""Exactly-once pushes: the bounded memory of answered push ids.

Every push carries a client id and a sequence number. The first push with an
id is applied and its answer remembered; a repeat (a retry after a lost
answer) gets the same answer and applies nothing, and a repeat that arrives
while the first is still being applied waits for it.

Bounds: the last ``per_client`` answers of each of the ``max_clients`` most
recently active clients (defaults 1024 and 4096). A client's forgotten ids
are below its *floor*; a push at or below the floor that is not remembered
is refused (``PushTooOldError``): it may have been applied, and refusing is
the only answer that can never apply it twice. Clients number their pushes
upwards, so only a retry of a push older than the last 1024 hits the floor.
The memory is part of every checkpoint and restored with it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from adamax_ps.server.errors import InvalidArgumentError, PushTooOldError

DEFAULT_PER_CLIENT = 1024
DEFAULT_MAX_CLIENTS = 4096
MAX_CLIENT_ID = 256


@dataclass(frozen=True, order=True)
class PushId:
    """Identifies one push: the client that sent it and its sequence number."""

    client: str
    sequence: int

    def __post_init__(self) -> None:
        if (
            not isinstance(self.client, str)
            or not 0 < len(self.client) <= MAX_CLIENT_ID
        ):
            raise InvalidArgumentError(
                f"A push's client id must be a string of 1 to {MAX_CLIENT_ID} "
                f"characters. Received: {self.client!r}"
            )
        if not isinstance(self.sequence, int) or self.sequence < 0:
            raise InvalidArgumentError(
                "A push's sequence number must be a non-negative integer. "
                f"Received: {self.sequence!r}"
            )


@dataclass(frozen=True)
class ApplyResult:
    """The answer to an applied push: the step it took and the iterations after."""

    optimizer: str
    step: int  # iterations before this push: the step's t is step + 1
    iterations: int


@dataclass
class _Client:
    answers: OrderedDict[int, ApplyResult] = field(default_factory=OrderedDict)
    floor: int = -1


class PushLedger:
    """Remembers answered pushes; thread-safe. See the module docstring."""

    def __init__(
        self,
        per_client: int = DEFAULT_PER_CLIENT,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        self.per_client = per_client
        self.max_clients = max_clients
        self._lock = threading.Lock()
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._in_flight: dict[PushId, threading.Event] = {}

    def begin(self, push_id: PushId) -> ApplyResult | None:
        """The remembered answer, or None when the caller now owns the push.

        An owner must call ``complete`` or ``abandon``. A duplicate of a push
        in flight waits for its owner, then answers like it (or takes over if
        the owner abandoned it).
        """
        while True:
            with self._lock:
                client = self._clients.get(push_id.client)
                if client is not None:
                    self._clients.move_to_end(push_id.client)
                    answer = client.answers.get(push_id.sequence)
                    if answer is not None:
                        return answer
                    if push_id.sequence <= client.floor:
                        raise PushTooOldError(
                            f"push {push_id.sequence} of client {push_id.client!r} is "
                            "older than the server remembers (the last "
                            f"{self.per_client} per client): it may have been "
                            "applied, so it is refused rather than risk applying "
                            "it twice"
                        )
                event = self._in_flight.get(push_id)
                if event is None:
                    self._in_flight[push_id] = threading.Event()
                    return None
            event.wait()

    def answered(self, push_id: PushId) -> bool:
        """Whether the push's answer is remembered."""
        with self._lock:
            client = self._clients.get(push_id.client)
            return client is not None and push_id.sequence in client.answers

    def complete(self, push_id: PushId, answer: ApplyResult) -> None:
        """Remember the answer of an owned push and release its duplicates."""
        with self._lock:
            self._remember(push_id, answer)
            event = self._in_flight.pop(push_id, None)
        if event is not None:
            event.set()

    def abandon(self, push_id: PushId) -> None:
        """The owned push failed and changed nothing: duplicates may retry it."""
        with self._lock:
            event = self._in_flight.pop(push_id, None)
        if event is not None:
            event.set()

    def _remember(self, push_id: PushId, answer: ApplyResult) -> None:
        client = self._clients.get(push_id.client)
        if client is None:
            client = self._clients[push_id.client] = _Client()
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        self._clients.move_to_end(push_id.client)
        client.answers[push_id.sequence] = answer
        while len(client.answers) > self.per_client:
            sequence, _ = client.answers.popitem(last=False)
            client.floor = max(client.floor, sequence)

    # Checkpoints ----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy of the memory (answered pushes only)."""
        with self._lock:
            return {
                name: {
                    "floor": c.floor,
                    "answers": [
                        [seq, a.optimizer, a.step, a.iterations]
                        for seq, a in c.answers.items()
                    ],
                }
                for name, c in self._clients.items()
            }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Replace the memory with a snapshot's."""
        clients: OrderedDict[str, _Client] = OrderedDict()
        for name, entry in snapshot.items():
            client = _Client(floor=int(entry["floor"]))
            for seq, optimizer, step, iterations in entry["answers"]:
                client.answers[int(seq)] = ApplyResult(
                    optimizer, int(step), int(iterations)
                )
            clients[name] = client
        with self._lock:
            self._clients = clients

    def __len__(self) -> int:
        with self._lock:
            return sum(len(c.answers) for c in self._clients.values())
