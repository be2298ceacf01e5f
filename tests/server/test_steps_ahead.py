"""The coordinator hands out a client's next step with the answer to its
push (asynchronous cluster mode): the call is counted when it arrives, every
step handed out once, retries answered alike, and a replayed log counts the
same."""

from __future__ import annotations

import numpy as np
import pytest

from adamax_ps.server.errors import InvalidArgumentError
from adamax_ps.server.ledger import PushId
from adamax_ps.server.service import Gradient

F32 = np.float32


def coordinator(make_service, restore: bool = False, **settings):
    service = make_service(shards=2, server_index=0, num_servers=2, **settings)
    if settings.get("durability"):
        service.restore()
    if not restore:
        service.create_optimizer({"learning_rate": 0.01})
        service.create_variable("w", shape=(6,))
    return service


def grad(k: int) -> list[Gradient]:
    return [Gradient.dense("w", np.full(6, k + 1, F32))]


def commit(service, client: str, seq: int, step: int, ahead: bool, next_=True):
    return service.apply(
        "Adamax",
        grad(seq),
        PushId(client, seq),
        step=step,
        call_variables=["w"],
        reserve_next=next_,
        step_reserved_ahead=ahead,
    )


def interleaved(service) -> list[int]:
    """Two clients: a reserves its first step, then goes on with steps handed
    out ahead; b reserves each of its calls. Returns every step used."""
    used = []
    first = service.reserve_step("Adamax", ["w"], PushId("a", 0))
    answer = commit(service, "a", 0, first, ahead=False)
    used.append(first)
    for seq in range(1, 4):
        b_step = service.reserve_step("Adamax", ["w"], PushId("b", seq))
        commit(service, "b", seq, b_step, ahead=False, next_=False)
        used.append(b_step)
        step = answer.next_step
        answer = commit(service, "a", seq, step, ahead=True)
        used.append(step)
    return used


def test_calls_are_counted_once_and_steps_handed_out_once(make_service):
    service = coordinator(make_service)
    used = interleaved(service)
    assert sorted(used) == list(range(7)) and len(set(used)) == 7
    # 7 calls; client a holds one more step, handed out but not pushed.
    assert service.optimizer("Adamax").iterations == 7
    # A retry gets the same answer, next step included, and counts nothing.
    again = commit(service, "a", 3, used[-1], ahead=True)
    assert again.next_step == 7 and service.optimizer("Adamax").iterations == 7
    assert service.reserve_step("Adamax", ["w"], PushId("c", 0)) == 8


def test_a_replayed_log_counts_the_same(make_service, tmp_path):
    service = coordinator(make_service, checkpoint_dir=tmp_path, durability="wal")
    interleaved(service)
    service.checkpoint()
    answer = commit(service, "b", 9, 7, ahead=True)  # the step b was handed
    assert answer.iterations == 8
    expected = service.pull("w").tobytes()
    # A new process on the same folder, after a crash (nothing closed).
    restored = coordinator(
        make_service, restore=True, checkpoint_dir=tmp_path, durability="wal"
    )
    assert restored.replayed == 1
    assert restored.optimizer("Adamax").iterations == 8
    assert restored.pull("w").tobytes() == expected
    assert restored.reserve_step("Adamax", ["w"], PushId("c", 0)) == 8


def test_only_the_coordinator_hands_out_steps(make_service):
    other = make_service(shards=1, server_index=1, num_servers=2)
    other.create_optimizer({"learning_rate": 0.01})
    other.create_variable("w", shape=(6,))
    with pytest.raises(InvalidArgumentError, match="handed out ahead by server 0"):
        other.apply("Adamax", grad(0), PushId("a", 0), step=0, reserve_next=True)
    service = coordinator(make_service)
    with pytest.raises(InvalidArgumentError, match="push carrying its step"):
        service.apply("Adamax", grad(0), PushId("a", 0), step_reserved_ahead=True)
    assert service.optimizer("Adamax").iterations == 0
