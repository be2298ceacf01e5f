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

A client forgotten altogether (more clients than the ledger keeps) leaves no
floor behind, so the ledger counts them: once it has forgotten any client, a
*retry* (``PushId.attempt > 0``) from a client it does not know is refused,
and a client it meets again starts with its floor just below its push, so no
older push of it can be applied again. A step reservation shares its call's
push id and the client's entry (answers are kept per operation kind).
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
    """Identifies one push: the client that sent it and its sequence number.

    ``attempt`` is not part of the identity: 0 for the first sending, more for
    a client's retries of the same push.
    """

    client: str
    sequence: int
    attempt: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if (
            not isinstance(self.client, str)
            or not 0 < len(self.client) <= MAX_CLIENT_ID
        ):
            raise InvalidArgumentError(
                f"A push's client id must be a string of 1 to {MAX_CLIENT_ID} "
                f"characters. Received: {self.client!r}"
            )
        for what, value in (
            ("sequence number", self.sequence),
            ("attempt", self.attempt),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidArgumentError(
                    f"A push's {what} must be a non-negative integer. "
                    f"Received: {value!r}"
                )


@dataclass(frozen=True)
class ApplyResult:
    """The answer to an applied push: the step it took and the iterations after."""

    optimizer: str
    step: int  # iterations before this push: the step's t is step + 1
    iterations: int
    record: int = field(default=0, compare=False)  # its log record, while new
    # The coordinator's step handed out ahead for the client's next call.
    next_step: int | None = None


PUSH, STEP = "push", "step"  # the operations a push id can name


@dataclass(frozen=True)
class Inherited:
    """A push some servers of an old cluster answered before it was resized:
    its answer and which old servers applied their share (``holders``). A
    retry applies only the rest (``inherited.py``)."""

    answer: ApplyResult
    holders: frozenset[int]


@dataclass
class _Client:
    answers: OrderedDict[tuple[int, str], ApplyResult] = field(
        default_factory=OrderedDict
    )
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
        self.forgotten = 0  # clients dropped whole, over max_clients
        self._lock = threading.Lock()
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._in_flight: dict[tuple[PushId, str], threading.Event] = {}
        # After a resize: pushes the old servers answered, not all of them,
        # and the old layout ({"num_servers", "split_bytes"}) to tell whose
        # share each row was.
        self._inherited: dict[tuple[str, int], Inherited] = {}
        self.old_layout: dict[str, int] | None = None

    def begin(self, push_id: PushId, kind: str = PUSH) -> ApplyResult | None:
        """The remembered answer, or None when the caller now owns the push.

        An owner must call ``complete`` or ``abandon``. A duplicate of a push
        in flight waits for its owner, then answers like it (or takes over if
        the owner abandoned it). ``kind``: a push, or a step reservation.
        """
        key = (push_id.sequence, kind)
        while True:
            with self._lock:
                client = self._clients.get(push_id.client)
                if client is not None:
                    self._clients.move_to_end(push_id.client)
                    answer = client.answers.get(key)
                    if answer is not None:
                        return answer
                event = self._in_flight.get((push_id, kind))
                if event is None:
                    self._refuse_forgotten(push_id, client)
                    self._in_flight[(push_id, kind)] = threading.Event()
                    return None
            event.wait()

    def _refuse_forgotten(self, push_id: PushId, client: _Client | None) -> None:
        """``PushTooOldError`` for a push that may have been applied and forgotten."""
        if client is not None and push_id.sequence <= client.floor:
            raise PushTooOldError(
                f"push {push_id.sequence} of client {push_id.client!r} is older "
                f"than the server remembers (the last {self.per_client} per "
                "client): it may have been applied, so it is refused rather than "
                "risk applying it twice"
            )
        if client is None and push_id.attempt > 0 and self.forgotten:
            raise PushTooOldError(
                f"push {push_id.sequence} of client {push_id.client!r} is a retry, "
                "and this server no longer remembers that client (it keeps the "
                f"{self.max_clients} most recently active): it may have been "
                "applied, so it is refused rather than risk applying it twice"
            )

    def inherited(self, push_id: PushId) -> Inherited | None:
        """What the old cluster did of this push (an owned push not answered
        here), or None."""
        with self._lock:
            return self._inherited.get((push_id.client, push_id.sequence))

    def answered(self, push_id: PushId, kind: str = PUSH) -> bool:
        """Whether the push's answer is remembered."""
        with self._lock:
            client = self._clients.get(push_id.client)
            return client is not None and (push_id.sequence, kind) in client.answers

    def complete(self, push_id: PushId, answer: ApplyResult, kind: str = PUSH) -> None:
        """Remember the answer of an owned push and release its duplicates."""
        with self._lock:
            self._remember(push_id, answer, kind)
            if kind == PUSH:
                self._inherited.pop((push_id.client, push_id.sequence), None)
            event = self._in_flight.pop((push_id, kind), None)
        if event is not None:
            event.set()

    def abandon(self, push_id: PushId, kind: str = PUSH) -> None:
        """The owned push failed and changed nothing: duplicates may retry it."""
        with self._lock:
            event = self._in_flight.pop((push_id, kind), None)
        if event is not None:
            event.set()

    def _remember(self, push_id: PushId, answer: ApplyResult, kind: str) -> None:
        client = self._clients.get(push_id.client)
        if client is None:
            # Met again after being forgotten: none of its older pushes may
            # apply now, whatever they are (a first meeting has no floor).
            floor = push_id.sequence - 1 if self.forgotten else -1
            client = self._clients[push_id.client] = _Client(floor=floor)
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
                self.forgotten += 1
        self._clients.move_to_end(push_id.client)
        client.answers[(push_id.sequence, kind)] = answer
        while len(client.answers) > self.per_client:
            (sequence, _), _ = client.answers.popitem(last=False)
            client.floor = max(client.floor, sequence)

    # Checkpoints ----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy of the memory (answered pushes only)."""
        with self._lock:
            clients = {
                name: {
                    "floor": c.floor,
                    "answers": [
                        [seq, kind, a.optimizer, a.step, a.iterations]
                        for (seq, kind), a in c.answers.items()
                    ],
                }
                for name, c in self._clients.items()
            }
            inherited = [
                [client, seq, *_answer(i.answer), sorted(i.holders)]
                for (client, seq), i in self._inherited.items()
            ]
            return {
                "clients": clients,
                "forgotten": self.forgotten,
                "inherited": inherited,
                "old_layout": self.old_layout,
            }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Replace the memory with a snapshot's (or an older checkpoint's,
        which held the clients alone and named no operation kind)."""
        current = "clients" in snapshot and "forgotten" in snapshot
        saved = snapshot["clients"] if current else snapshot
        clients: OrderedDict[str, _Client] = OrderedDict()
        for name, entry in saved.items():
            client = _Client(floor=int(entry["floor"]))
            for item in entry["answers"]:
                if len(item) == 4:  # an older checkpoint's: pushes only
                    item = [item[0], PUSH, *item[1:]]
                seq, kind, optimizer, step, iterations = item
                client.answers[(int(seq), kind)] = ApplyResult(
                    optimizer, int(step), int(iterations)
                )
            clients[name] = client
        forgotten = int(snapshot["forgotten"]) if current else 0
        inherited = {
            (client, int(seq)): Inherited(
                ApplyResult(optimizer, int(step), int(iterations)), frozenset(holders)
            )
            for client, seq, optimizer, step, iterations, holders in (
                snapshot.get("inherited") or [] if current else []
            )
        }
        with self._lock:
            self._clients = clients
            self.forgotten = forgotten
            self._inherited = inherited
            self.old_layout = snapshot.get("old_layout") if current else None

    def __len__(self) -> int:
        with self._lock:
            return sum(len(c.answers) for c in self._clients.values())


def _answer(answer: ApplyResult) -> list:
    return [answer.optimizer, answer.step, answer.iterations]
