"""A worker on HTTP keeps training through an online rescale and follows the
new layout on HTTP: the rescale learns each server's HTTP port, and server 0
names the new cluster's HTTP addresses beside its gRPC ones."""

from __future__ import annotations

import httpx
import pytest
from helpers.rescale_cluster import expected_after, two_and_a_spare
from helpers.rescale_model import SPLIT, Model, state
from helpers.servers import addresses

from adamax_ps.client import connect, placement
from adamax_ps.client.rescale import rescale

STEPS = 6


@pytest.fixture(autouse=True)
def _split(monkeypatch):
    monkeypatch.setattr(placement, "SPLIT_BYTES", SPLIT)  # as the servers place rows


@pytest.mark.slow
def test_a_worker_on_http_follows_a_rescale_on_http(tmp_path):

    expected = expected_after(tmp_path, 2 * STEPS)
    servers = two_and_a_spare(tmp_path / "c")
    http = [s.http_address for s in servers]
    try:
        with connect(",".join(http[:2])) as cluster:
            model = Model.on(cluster)
            for step in range(STEPS):
                model.step(step)
            rescale(addresses(servers), 3)
            for step in range(STEPS, 2 * STEPS):  # follows, on HTTP
                model.step(step)
            assert list(cluster.addresses) == http
        info = httpx.get(f"{http[0]}/api/v1/server", timeout=30).json()
        assert info["http_addresses"] == http
        assert info["addresses"] == [s.grpc_address for s in servers]
        assert state(addresses(servers)) == expected
    finally:
        for server in servers:
            server.stop()
