"""Resizing a cluster keeps every bit of optimizer state: the same pushes
(dense, sparse rows of a variable split over the servers, hash-keyed) on one
server throughout, and on 2 servers restored onto 3, then onto 1
(``--restore-from`` the old servers' checkpoint folders), give bit-identical
weights, slots, tables and iterations; a push acknowledged before a resize
and retried after it is not applied again."""

from __future__ import annotations

import itertools

import pytest
from helpers.rescale_model import SPLIT, Model, state
from helpers.servers import Server, addresses, start_cluster

from adamax_ps.client import TransportError, connect, placement

STEPS = 12


def train(
    address: str,
    steps: range,
    client_id: str | None = None,
    retry: bool = False,
    failing: int | None = None,
) -> None:
    """One ``apply_gradients`` call per step; ``client_id``: the worker's
    exactly-once id, its calls numbered from the first step. ``retry``: the
    calls were sent already, each with the step handed out for it (a
    worker's retry repeats its request: push id and step). ``failing``: the
    server whose share never arrives (it stopped), so the call fails."""
    with connect(address) as cluster:
        if client_id is not None:
            cluster.client_id = client_id
            cluster._sequence = itertools.count(steps.start)
        if retry:
            cluster._ahead["Adamax"] = steps.start
        if failing is not None:

            def stopped(*args, **kwargs):
                raise TransportError(f"server {failing} stopped")

            cluster.transports[failing].apply = stopped
        model = Model.on(cluster)
        for step in steps:
            model.step(step)


def cluster_of(count: int, folder, restore_from=()) -> list[Server]:
    folder.mkdir(parents=True)
    extra = ["--cluster-split-bytes", str(SPLIT), "--eviction-interval", "0"]
    if restore_from:
        extra += ["--restore-from", ",".join(map(str, restore_from))]
    return start_cluster(count, folder, *extra)


def stop(servers: list[Server]) -> list:
    """SIGTERM (each writes its final checkpoint); their checkpoint folders."""
    for server in servers:
        assert server.stop() == 0
    return [s.args[s.args.index("--checkpoint-dir") + 1] for s in servers]


@pytest.mark.slow
def test_one_server_and_a_resized_cluster_end_bit_identical(tmp_path, monkeypatch):
    monkeypatch.setattr(placement, "SPLIT_BYTES", SPLIT)  # as the servers place rows
    single = cluster_of(1, tmp_path / "single")
    try:
        train(addresses(single), range(3 * STEPS))
        expected = state(addresses(single))
    finally:
        stop(single)
    two = cluster_of(2, tmp_path / "two")
    try:
        train(addresses(two), range(STEPS), client_id="worker")
    finally:
        folders = stop(two)
    three = cluster_of(3, tmp_path / "three", restore_from=folders)
    try:
        address = addresses(three)
        before = state(address)
        assert before["iterations"] == STEPS
        # A retry, after the resize, of the call acknowledged last before it:
        # the merged exactly-once memory answers it; nothing is applied.
        train(address, range(STEPS - 1, STEPS), client_id="worker", retry=True)
        assert state(address) == before
        train(address, range(STEPS, 2 * STEPS))
    finally:
        stop(three)
    one = cluster_of(1, tmp_path / "one", restore_from=[tmp_path / "three"])
    try:
        train(addresses(one), range(2 * STEPS, 3 * STEPS))
        assert state(addresses(one)) == expected
    finally:
        stop(one)


@pytest.mark.slow
def test_a_call_cut_by_the_resize_is_completed_by_its_retry(tmp_path, monkeypatch):
    """The call of step 6 reaches server 0 of 2 (which applies its share and
    counts it) but never server 1, which stops. The cluster is restored onto
    3 servers and the worker retries the call (same push id, same step):
    only old server 1's share is applied now, the count is not repeated, and
    the result is bit-identical to one server applying every call once."""
    monkeypatch.setattr(placement, "SPLIT_BYTES", SPLIT)
    single = cluster_of(1, tmp_path / "single")
    try:
        train(addresses(single), range(10))
        expected = state(addresses(single))
    finally:
        stop(single)
    two = cluster_of(2, tmp_path / "two")
    try:
        train(addresses(two), range(6), client_id="worker")
        with pytest.raises(TransportError, match="server 1 stopped"):
            train(addresses(two), range(6, 7), "worker", retry=True, failing=1)
    finally:
        folders = stop(two)
    three = cluster_of(3, tmp_path / "three", restore_from=folders)
    try:
        address = addresses(three)
        assert state(address)["iterations"] == 7  # counted by old server 0
        # The worker goes on: its retry, then its next calls.
        train(address, range(6, 10), client_id="worker", retry=True)
        assert state(address) == expected
    finally:
        stop(three)
