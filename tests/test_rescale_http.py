"""A worker on HTTP keeps training through an online rescale and follows the
new layout on HTTP: the rescale learns each server's HTTP port, and server 0
names the new cluster's HTTP addresses beside its gRPC ones."""

from __future__ import annotations

import httpx
import pytest
from helpers.rescale_model import SPLIT, Model, state
from helpers.servers import Server, addresses, start_cluster

from adamax_ps.client import connect, placement
from adamax_ps.client.rescale import rescale

STEPS = 6
EXTRA = ["--cluster-split-bytes", str(SPLIT), "--eviction-interval", "0"]


@pytest.fixture(autouse=True)
def _split(monkeypatch):
    monkeypatch.setattr(placement, "SPLIT_BYTES", SPLIT)  # as the servers place rows


@pytest.mark.slow
def test_a_worker_on_http_follows_a_rescale_on_http(tmp_path):
    (tmp_path / "single").mkdir()
    single = start_cluster(1, tmp_path / "single", *EXTRA)
    try:
        with connect(addresses(single)) as cluster:
            model = Model.on(cluster)
            for step in range(2 * STEPS):
                model.step(step)
        expected = state(addresses(single))
    finally:
        single[0].stop()

    (tmp_path / "c").mkdir()
    servers = start_cluster(2, tmp_path / "c", *EXTRA)
    args = ["--grpc-port", "0", "--http-port", "0", "--shards", "2", *EXTRA]
    args += ["--server-index", "2", "--num-servers", "2"]
    args += ["--checkpoint-dir", str(tmp_path / "c" / "server-2")]
    servers.append(Server(args, tmp_path / "c" / "server-2.log").start())
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
