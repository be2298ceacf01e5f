"""Synchronous mode: N replicas' pushes of a step are aggregated and applied once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from adamax_ps.server.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    StalePushError,
    SyncTimeoutError,
)
from adamax_ps.server.ledger import PushId
from adamax_ps.server.service import Gradient
from adamax_ps.server.sync import SyncSettings

F32 = np.float32


def setup(make_service, **sync):
    service = make_service(shards=2, split_bytes=64, sync=SyncSettings(**sync))
    service.create_optimizer({"learning_rate": 0.01})
    service.create_variable("w", shape=(40,))
    service.create_variable("e", shape=(20, 3))
    return service


def push_all(service, pushes, step=0, seq=0):
    """Each replica pushes from its own thread; returns results or exceptions."""

    def one(replica):
        try:
            return service.apply(
                "Adamax", pushes[replica], PushId(replica, seq), step=step
            )
        except Exception as e:  # collected for the assertions
            return e

    with ThreadPoolExecutor(len(pushes)) as pool:
        return dict(zip(pushes, pool.map(one, pushes), strict=True))


def replica_grads(n, seed=0):
    rng = np.random.default_rng(seed)
    return {
        f"r{k}": [
            Gradient.dense("w", rng.normal(size=40).astype(F32)),
            Gradient.sparse(
                "e", rng.integers(0, 20, 4), rng.normal(size=(4, 3)).astype(F32)
            ),
        ]
        for k in range(n)
    }


def single_push_of_the_sum(make_service, pushes, average=False):
    reference = make_service(shards=1)
    reference.create_optimizer({"learning_rate": 0.01})
    reference.create_variable("w", shape=(40,))
    reference.create_variable("e", shape=(20, 3))
    replicas = sorted(pushes)
    total = pushes[replicas[0]][0].values.copy()
    for r in replicas[1:]:
        total += pushes[r][0].values
    indices = np.concatenate([pushes[r][1].indices for r in replicas])
    values = np.concatenate([pushes[r][1].values for r in replicas])
    if average:
        total /= F32(len(replicas))
        values = values / F32(len(replicas))
    reference.apply(
        "Adamax", [Gradient.dense("w", total), Gradient.sparse("e", indices, values)]
    )
    return reference


@pytest.mark.parametrize("average", [False, True])
def test_four_replicas_equal_one_push_of_their_sum(make_service, average):
    service = setup(make_service, replicas=4, average=average)
    pushes = replica_grads(4)
    results = push_all(service, pushes)
    assert {(r.step, r.iterations) for r in results.values()} == {(0, 1)}
    reference = single_push_of_the_sum(make_service, pushes, average)
    for name in ("w", "e"):
        assert service.pull(name).tobytes() == reference.pull(name).tobytes()
        for slot in "mv":
            assert (
                service.get_slot("Adamax", name, slot).tobytes()
                == reference.get_slot("Adamax", name, slot).tobytes()
            )


def test_steps_follow_one_another_and_stale_pushes_are_refused(make_service):
    service = setup(make_service, replicas=2)
    for step in range(3):
        results = push_all(service, replica_grads(2, seed=step), step=step, seq=step)
        assert all(r.iterations == step + 1 for r in results.values())
    with pytest.raises(StalePushError, match=r"step 1 .* is stale"):
        service.apply("Adamax", replica_grads(1)["r0"], PushId("r0", 99), step=1)
    assert service.sync.stale == 1


def test_a_retry_after_the_step_gets_the_same_answer(make_service):
    service = setup(make_service, replicas=2)
    results = push_all(service, replica_grads(2))
    again = service.apply("Adamax", replica_grads(2)["r0"], PushId("r0", 0), step=0)
    assert again == results["r0"]
    assert service.iterations("Adamax") == 1


def test_backup_workers_apply_the_first_m_and_drop_the_rest(make_service):
    service = setup(make_service, replicas=3, replicas_to_aggregate=2)
    pushes = replica_grads(3)
    first_two = {r: pushes[r] for r in ("r0", "r1")}
    results = push_all(service, first_two)
    assert all(r.iterations == 1 for r in results.values())
    with pytest.raises(StalePushError):
        service.apply("Adamax", pushes["r2"], PushId("r2", 0), step=0)
    reference = single_push_of_the_sum(make_service, first_two)
    assert service.pull("w").tobytes() == reference.pull("w").tobytes()


def test_a_missing_replica_times_out_the_others_and_nothing_applies(make_service):
    service = setup(make_service, replicas=3, timeout=0.3)
    pushes = replica_grads(3)
    results = push_all(service, {r: pushes[r] for r in ("r0", "r1")})
    for error in results.values():
        assert isinstance(error, SyncTimeoutError)
        assert "waiting for 3 replicas at step 0" in str(error)
        assert "2 arrived" in str(error)
    assert service.iterations("Adamax") == 0
    assert service.pull("w").tolist() == [0.0] * 40
    # The same push ids can be sent again: nothing of them was applied.
    results = push_all(service, pushes)
    assert all(r.iterations == 1 for r in results.values())


def test_a_push_aggregated_by_the_workers_applies_at_once(make_service):
    service = setup(make_service, replicas=4)
    result = service.apply(
        "Adamax", replica_grads(1)["r0"], PushId("chief", 0), step=0, aggregate=False
    )
    assert result.iterations == 1
    with pytest.raises(StalePushError):
        service.apply("Adamax", replica_grads(1)["r0"], PushId("r1", 0), step=0)


def test_bad_synchronous_pushes(make_service):
    service = setup(make_service, replicas=2, timeout=5)
    grads = replica_grads(1)["r0"]
    with pytest.raises(InvalidArgumentError, match="must carry the step"):
        service.apply("Adamax", grads, PushId("r0", 0))
    with pytest.raises(InvalidArgumentError, match="need a push id"):
        service.apply("Adamax", grads, step=0)
    with pytest.raises(FailedPreconditionError, match="ahead of the server"):
        service.apply("Adamax", grads, PushId("r0", 0), step=5)


def test_a_replica_counts_once_per_step(make_service):
    """Two pushes of one replica for one step: whatever the arrival order, the
    step applies once and the extra push is refused."""
    service = setup(make_service, replicas=2, timeout=10)
    grads = replica_grads(1)["r0"]
    calls = [("r0", 1), ("r0", 2), ("r1", 1)]

    def one(call):
        try:
            return service.apply("Adamax", grads, PushId(*call), step=0)
        except (InvalidArgumentError, StalePushError) as e:
            return e

    with ThreadPoolExecutor(3) as pool:
        outcomes = list(pool.map(one, calls))
    refused = [o for o in outcomes if isinstance(o, Exception)]
    applied = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(refused) == 1 and len(applied) == 2
    assert "already pushed for step 0" in str(refused[0]) or "stale" in str(refused[0])
    assert applied[0] == applied[1] and service.iterations("Adamax") == 1


@pytest.mark.parametrize(
    "settings",
    [
        {"replicas": 0},
        {"replicas": 2, "replicas_to_aggregate": 3},
        {"replicas": 2, "timeout": 0},
    ],
)
def test_bad_sync_settings(settings):
    with pytest.raises(ValueError):
        SyncSettings(**settings)


def test_ranks_order_the_sum_whatever_the_client_ids(make_service):
    """Replica ids (the workers' ranks) order a step's sum numerically, so a
    run is reproducible; client ids (random per run) would order it by text."""
    n = 12
    rng = np.random.default_rng(7)
    grads = [
        (rng.normal(size=40) * 10.0 ** rng.integers(-4, 4)).astype(F32)
        for _ in range(n)
    ]
    by_rank = grads[0].copy()
    for g in grads[1:]:
        by_rank += g
    by_text = np.zeros(40, F32)
    for k in sorted(range(n), key=str):
        by_text += grads[k]
    assert by_rank.tobytes() != by_text.tobytes()  # the order shows in the bits
    service = setup(make_service, replicas=n)

    def one(rank):
        push = [Gradient.dense("w", grads[rank])]
        return service.apply(
            "Adamax", push, PushId(f"client-{n - rank}", 0), step=0, replica=rank
        )

    with ThreadPoolExecutor(n) as pool:
        assert {r.iterations for r in pool.map(one, range(n))} == {1}
    reference = make_service(shards=1)
    reference.create_optimizer({"learning_rate": 0.01})
    reference.create_variable("w", shape=(40,))
    reference.apply("Adamax", [Gradient.dense("w", by_rank)])
    assert service.pull("w").tobytes() == reference.pull("w").tobytes()


def test_bad_replica_ids(make_service):
    service = setup(make_service, replicas=2, timeout=10)
    grads = replica_grads(1)["r0"]
    with pytest.raises(
        InvalidArgumentError, match=r"replica 2 is not below .* 2 replicas"
    ):
        service.apply("Adamax", grads, PushId("a", 0), step=0, replica=2)
    with pytest.raises(InvalidArgumentError, match="non-negative integer"):
        service.apply("Adamax", grads, PushId("a", 0), step=0, replica=-1)

    def one(client):
        try:
            return service.apply("Adamax", grads, PushId(client, 0), step=0, replica=1)
        except InvalidArgumentError as e:
            return e

    # Two workers claiming rank 1: the second is refused, naming the rank.
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(one, "a")
        while service.sync.pending() == 0:  # rank 1 of client a is waiting
            pass
        second = one("b")
        assert isinstance(second, InvalidArgumentError)
        assert "'rank 1' already pushed for step 0" in str(second)
        assert service.iterations("Adamax") == 0
        service.apply("Adamax", grads, PushId("c", 0), step=0, replica=0)
        assert first.result().iterations == 1
