"""Real servers shared by the client tests of one module."""

from __future__ import annotations

import pytest
from helpers.servers import addresses, start_cluster

from adamax_ps.client import cluster as cluster_module
from adamax_ps.client import connect


@pytest.fixture(scope="module")
def one_server(tmp_path_factory):
    servers = start_cluster(1, tmp_path_factory.mktemp("one"), checkpoints=False)
    yield servers
    for server in servers:
        server.kill()


@pytest.fixture(scope="module")
def three_servers(tmp_path_factory):
    servers = start_cluster(3, tmp_path_factory.mktemp("three"), checkpoints=False)
    yield servers
    for server in servers:
        server.kill()


@pytest.fixture(params=["one-server", "three-servers-split"])
def cluster(request, one_server, three_servers, monkeypatch):
    """A connected cluster: one server, or three with every variable split by
    rows (the split threshold lowered to one byte for the test)."""
    if request.param == "one-server":
        servers = one_server
    else:
        servers = three_servers
        monkeypatch.setattr(cluster_module, "SPLIT_BYTES", 1)
    with connect(addresses(servers)) as connected:
        yield connected
