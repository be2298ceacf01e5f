"""The change gate a rescale closes: changes in flight finish first, new ones
are refused with a clear error, attaching to what exists still works, and a
freeze that cannot drain in time leaves the server as it was."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from adamax_ps.server.errors import FailedPreconditionError, RescalingError
from adamax_ps.server.gate import ChangeGate
from adamax_ps.server.hyperparams import AdamaxConfig
from adamax_ps.server.service import Gradient


def _held(gate: ChangeGate) -> tuple[threading.Thread, threading.Event]:
    """A change inside the gate until the returned event is set."""
    inside, leave = threading.Event(), threading.Event()

    def change() -> None:
        with gate.change():
            inside.set()
            assert leave.wait(30)

    worker = threading.Thread(target=change)
    worker.start()
    assert inside.wait(30)
    return worker, leave


def test_close_waits_for_the_change_in_flight_and_refuses_new_ones():
    gate = ChangeGate()
    worker, leave = _held(gate)
    closed = threading.Event()
    closer = threading.Thread(target=lambda: (gate.close("frozen", 30), closed.set()))
    closer.start()
    # The gate refuses new changes at once, while the one inside runs on.
    with pytest.raises(RescalingError, match="frozen"):
        for _ in range(10_000):
            with gate.change():
                pass
    assert not closed.is_set()
    leave.set()
    worker.join(30)
    assert closed.wait(30)
    closer.join(30)
    gate.open()
    with gate.change():
        pass


def test_a_freeze_that_cannot_drain_opens_the_gate_again():
    gate = ChangeGate()
    worker, leave = _held(gate)
    with pytest.raises(FailedPreconditionError, match=r"1 change.* still in flight"):
        gate.close("frozen", 0.05)
    assert gate.closed is None
    leave.set()
    worker.join(30)


def test_a_closed_gate_refuses_changes_but_not_reads_or_attaching(make_service):
    service = make_service(shards=2)
    config = AdamaxConfig.from_keras(learning_rate=0.01)
    service.create_optimizer(config)
    service.create_variable("w", shape=(4, 2), initializer="ones")
    service.iterations("Adamax")
    service.gate.close("rescale r is under way", 1)
    before = service.pull("w")
    refused = [
        lambda: service.apply(
            "Adamax", [Gradient.dense("w", np.ones((4, 2), np.float32))]
        ),
        lambda: service.create_variable("v", shape=(3,)),
        lambda: service.assign("w", np.zeros((4, 2), np.float32)),
        lambda: service.set_iterations("Adamax", 5),
        lambda: service.create_table("t", dim=4),
    ]
    for change in refused:
        with pytest.raises(RescalingError, match="rescale r is under way"):
            change()
    # What exists is attached to and read, unchanged.
    assert service.create_optimizer(config)[1] is False
    assert service.create_variable("w", shape=(4, 2), initializer="ones")[1] is False
    assert service.iterations("Adamax") == 0
    assert np.array_equal(service.pull("w"), before)
    service.gate.open()
    service.apply("Adamax", [Gradient.dense("w", np.ones((4, 2), np.float32))])
    assert service.iterations("Adamax") == 1


def test_while_an_adoption_rebuilds_the_state_reads_with_a_view_wait(make_service):
    """A read stating its view (every worker's) is answered RescalingError
    while a rescale's import refills the store, never a half-filled answer."""
    service = make_service(shards=1)
    service.create_variable("w", shape=(4,), initializer="ones")
    service.check_view((0, 1))
    service.rescale.standing.importing = True
    with pytest.raises(RescalingError):
        service.check_view((0, 1))
    service.rescale.standing.importing = False
    service.check_view((0, 1))


def test_a_change_that_joins_those_in_flight_passes_only_while_they_drain():
    """A synchronous round's last replica joins the others waiting inside:
    it passes while ``close`` drains them, never once the gate is closed."""
    gate = ChangeGate()
    worker, leave = _held(gate)
    closer = threading.Thread(target=lambda: gate.close("frozen", 30))
    closer.start()
    with pytest.raises(RescalingError):  # draining: only a joining change
        for _ in range(10_000):  # (as soon as the closer has run)
            with gate.change():
                pass
    with gate.change(joins=lambda: True):  # waits for nothing here: let in
        leave.set()
    worker.join(30)
    closer.join(30)
    assert gate.closed == "frozen"
    with (
        pytest.raises(RescalingError, match="frozen"),
        gate.change(joins=lambda: True),
    ):
        pass
