"""The exactly-once ledger stays exact when it forgets: retries it cannot
vouch for are refused, never applied again."""

from __future__ import annotations

import numpy as np
import pytest

from adamax_ps.server.errors import PushTooOldError
from adamax_ps.server.ledger import PUSH, STEP, ApplyResult, PushId, PushLedger
from adamax_ps.server.service import Gradient


def answered(ledger: PushLedger, push_id: PushId, kind: str = PUSH) -> ApplyResult:
    assert ledger.begin(push_id, kind) is None
    answer = ApplyResult("Adamax", push_id.sequence, push_id.sequence + 1)
    ledger.complete(push_id, answer, kind)
    return answer


def test_a_retry_from_a_forgotten_client_is_refused():
    ledger = PushLedger(per_client=8, max_clients=2)
    answered(ledger, PushId("a", 0))
    answered(ledger, PushId("b", 0))
    answered(ledger, PushId("c", 0))  # "a" is forgotten whole
    assert ledger.forgotten == 1
    with pytest.raises(PushTooOldError, match="no longer remembers that client"):
        ledger.begin(PushId("a", 0, attempt=1))
    # Its next push (a first sending) is applied; no older one ever again.
    answered(ledger, PushId("a", 1))
    for attempt in (0, 1):
        with pytest.raises(PushTooOldError, match="older than the server remembers"):
            ledger.begin(PushId("a", 0, attempt=attempt))


def test_a_ledger_that_never_forgot_takes_a_new_clients_retry():
    """Its first sending may have been lost on the way: nothing was applied."""
    ledger = PushLedger(per_client=8, max_clients=2)
    assert ledger.begin(PushId("new", 5, attempt=3)) is None


def test_a_remembered_answer_is_repeated_to_a_retry():
    ledger = PushLedger(per_client=8, max_clients=2)
    answer = answered(ledger, PushId("a", 4))
    assert ledger.begin(PushId("a", 4, attempt=2)) == answer


def test_a_step_reservation_shares_its_push_id_and_client_entry():
    ledger = PushLedger(per_client=8, max_clients=1)
    step = answered(ledger, PushId("w", 3), STEP)
    push = answered(ledger, PushId("w", 3), PUSH)
    assert ledger.forgotten == 0  # one client, not two
    assert list(ledger.snapshot()["clients"]) == ["w"]
    assert ledger.begin(PushId("w", 3, attempt=1), STEP) == step
    assert ledger.begin(PushId("w", 3, attempt=1), PUSH) == push


def test_snapshots_keep_kinds_floors_and_what_was_forgotten():
    ledger = PushLedger(per_client=2, max_clients=1)
    for seq in range(3):
        answered(ledger, PushId("x", seq), STEP)
    answered(ledger, PushId("y", 0))
    restored = PushLedger(per_client=2, max_clients=1)
    restored.restore(ledger.snapshot())
    assert restored.snapshot() == ledger.snapshot()
    assert restored.forgotten == 1
    with pytest.raises(PushTooOldError):
        restored.begin(PushId("x", 2, attempt=1), STEP)


def test_an_older_checkpoints_ledger_is_read():
    restored = PushLedger()
    restored.restore({"w": {"floor": 2, "answers": [[3, "Adamax", 7, 8]]}})
    assert restored.begin(PushId("w", 3, attempt=1)) == ApplyResult("Adamax", 7, 8)
    with pytest.raises(PushTooOldError):
        restored.begin(PushId("w", 1))


def test_a_service_with_more_clients_than_it_remembers_applies_nothing_twice(
    make_service,
):
    service = make_service(shards=1, ledger_max_clients=3)
    service.create_optimizer({})
    service.create_variable("a", shape=(2,))
    for client in range(5):
        service.apply(
            "Adamax",
            [Gradient.dense("a", np.ones(2, np.float32))],
            PushId(f"c{client}", 0),
        )
    value, iterations = service.pull("a"), service.iterations("Adamax")
    for client in (0, 1):  # forgotten: their retries are refused
        with pytest.raises(PushTooOldError):
            service.apply(
                "Adamax",
                [Gradient.dense("a", np.ones(2, np.float32))],
                PushId(f"c{client}", 0, attempt=1),
            )
    again = service.apply(
        "Adamax",
        [Gradient.dense("a", np.ones(2, np.float32))],
        PushId("c4", 0, attempt=1),
    )
    assert again.iterations == 5  # remembered: the same answer, nothing applied
    assert service.pull("a").tobytes() == value.tobytes()
    assert service.iterations("Adamax") == iterations
    assert service.metrics.rejected.labels("PushTooOldError")._value.get() == 2
