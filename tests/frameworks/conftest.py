"""Real servers shared by the framework tests of one module."""

from __future__ import annotations

import pytest
from helpers.servers import start_cluster


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two servers of one cluster, for the module's tests."""
    servers = start_cluster(2, tmp_path_factory.mktemp("servers"), checkpoints=False)
    yield servers
    for server in servers:
        server.kill()
