"""Real servers shared by the client tests of one module."""

from __future__ import annotations

import pytest
from helpers.servers import addresses, start_cluster

from adamax_ps.client import connect
from adamax_ps.client import placement as placement_module


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


LAYOUTS = [
    "grpc-one-server",
    "grpc-three-servers-split",
    "http-one-server",
    "http-three-servers-split",
]


@pytest.fixture(params=LAYOUTS)
def cluster(request, one_server, three_servers, monkeypatch):
    """A connected cluster, over each transport (the same contract suite runs
    on grpc:// and http://): one server, or three with every variable split by
    rows (the split threshold lowered to one byte for the test)."""
    scheme, _, layout = request.param.partition("-")
    if layout == "one-server":
        servers = one_server
    else:
        servers = three_servers
        monkeypatch.setattr(placement_module, "SPLIT_BYTES", 1)
    if scheme == "grpc":
        address = addresses(servers)
    else:
        address = ",".join(s.http_address for s in servers)
    with connect(address) as connected:
        yield connected
