"""While a rescale refills a server's state (an adoption, or a rebuild after a
restart), no look at the state is answered, with a view or without: every
read over gRPC and HTTP is RescalingError (UNAVAILABLE, 503), never a
half-filled answer; the server's place, its metrics and its cut are still
answered. A real server (gRPC and uvicorn) in this process."""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest

from adamax_ps.client import connect
from adamax_ps.proto.v1 import parameter_server_pb2 as pb
from adamax_ps.proto.v1 import parameter_server_pb2_grpc as pb_grpc
from adamax_ps.proto.wire import ERROR_KEY
from adamax_ps.server.config import ServerConfig
from adamax_ps.server.serve import ServerProcess


@pytest.fixture
def served(tmp_path):
    """A server on free ports holding ``w``, and a gRPC stub to it."""
    process = ServerProcess(
        ServerConfig(grpc_port=0, http_port=0, checkpoint_dir=tmp_path, shards=1)
    )
    process.start()
    grpc_address = f"127.0.0.1:{process.grpc.port}"
    with connect(f"grpc://{grpc_address}") as cluster:
        cluster.variable("w", initial_value=np.arange(4, dtype=np.float32))
    channel = grpc.insecure_channel(grpc_address)
    try:
        yield process, pb_grpc.ParameterServerStub(channel)
    finally:
        channel.close()
        process.stop()


def test_every_read_waits_while_the_state_is_refilled(served):
    process, stub = served
    http = f"http://127.0.0.1:{process.http_port}"
    reads = {
        "Read": lambda: list(stub.Read(pb.ReadRequest(variable="w"))),
        "ReadInline": lambda: stub.ReadInline(pb.ReadRequest(variable="w")),
        "ListVariables": lambda: stub.ListVariables(pb.ListVariablesRequest()),
        "ListTables": lambda: stub.ListTables(pb.ListTablesRequest()),
    }
    paths = ["/api/v1/variables", "/api/v1/variables/w/value", "/api/v1/optimizers"]
    for read in reads.values():  # answered while the state is whole
        read()
    for path in paths:
        assert httpx.get(http + path, timeout=30).status_code == 200, path

    process.service.rescale.standing.importing = True  # as an adoption does
    try:
        for name, read in reads.items():
            with pytest.raises(grpc.RpcError) as refused:
                read()
            error = refused.value
            assert error.code() is grpc.StatusCode.UNAVAILABLE, name
            assert "rebuilding its state" in error.details(), name
            assert (ERROR_KEY, "RescalingError") in error.trailing_metadata(), name
        for path in paths:
            answer = httpx.get(http + path, timeout=30)
            assert answer.status_code == 503, path
            assert answer.json()["error"] == "RescalingError", path
        # Still answered: where the server stands, its metrics, a cut's status.
        info = stub.GetServerInfo(pb.ServerInfoRequest())
        assert info.rescale_state == "serving"
        status = stub.Rescale(pb.RescaleRequest(phase=pb.RescaleRequest.STATUS))
        assert status.rebuilding
        assert httpx.get(http + "/api/v1/server", timeout=30).status_code == 200
        assert httpx.get(http + "/metrics", timeout=30).status_code == 200
    finally:
        process.service.rescale.standing.importing = False
    assert list(stub.Read(pb.ReadRequest(variable="w")))
