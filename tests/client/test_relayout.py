"""How a worker's call follows a rescale (client/relayout.py), against a
stand-in for server 0: it waits while the cluster is frozen, takes up the
addresses server 0 names once it serves, and gives up on a view mismatch
that no rescale explains."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from adamax_ps.client import errors
from adamax_ps.client.relayout import Follower, following


@dataclass
class Info:
    rescale_state: str
    addresses: tuple[str, ...] = ()
    ready: bool = True


@dataclass
class Coordinator:
    """Server 0: its answers to ``server_info``, one per question."""

    answers: list[Info]

    def server_info(self) -> Info:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@dataclass
class FakeCluster:
    addresses: list[str]
    coordinator: Coordinator
    rescale_wait: float = 30.0
    taken_up: list[list[str]] = field(default_factory=list)

    @property
    def transports(self) -> list:
        return [self.coordinator]

    def relayout(self, addresses) -> None:
        self.addresses = list(addresses)
        self.taken_up.append(list(addresses))


OLD = ["grpc://a:1", "grpc://b:1"]
NEW = ("grpc://a:1", "grpc://b:1", "grpc://c:1")


def test_a_call_waits_out_the_freeze_then_runs_on_the_new_layout():
    cluster = FakeCluster(
        list(OLD),
        Coordinator([Info("frozen"), Info("adopted"), Info("serving", NEW)]),
    )
    calls = []

    def call():
        calls.append(list(cluster.addresses))
        if len(calls) == 1:
            raise errors.RescalingError("rescale r is under way")
        return "done"

    assert following(cluster, call) == "done"
    assert cluster.taken_up == [list(NEW)]
    assert calls == [OLD, list(NEW)]


def test_an_aborted_rescale_runs_the_call_again_on_the_same_layout():
    cluster = FakeCluster(list(OLD), Coordinator([Info("frozen"), Info("serving")]))
    outcomes = [errors.RescalingError("frozen"), "done"]

    def call():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert following(cluster, call) == "done"
    assert cluster.taken_up == []


def test_a_view_mismatch_no_rescale_explains_is_raised():
    cluster = FakeCluster(list(OLD), Coordinator([Info("serving")]))

    def call():
        raise errors.ClusterViewError("server 1 says it is 0 of 1")

    with pytest.raises(errors.ClusterViewError, match="0 of 1"):
        following(cluster, call)


def test_the_wait_for_a_rescale_is_bounded():
    cluster = FakeCluster(list(OLD), Coordinator([Info("frozen")]), rescale_wait=0.2)

    def call():
        raise errors.RescalingError("rescale r is under way")

    with pytest.raises(errors.RescalingError):
        following(cluster, call)


def test_a_layout_another_thread_took_up_counts_as_moved():
    cluster = FakeCluster(list(OLD), Coordinator([Info("serving")]))
    follower = Follower(cluster)
    assert not follower.moved()
    cluster.relayout(NEW)
    assert follower.moved()
    assert not follower.moved()
