"""Reads answered with a push (a worker's refresh in the step's round trip):
after the push, checked before it, never applied twice; and the requests a
training step costs, counted by the servers."""

from __future__ import annotations

import re

import grpc
import httpx
import numpy as np
import pytest
import torch
from helpers.servers import addresses, start_cluster
from helpers.state import snapshot

from adamax_ps.client import (
    Adamax,
    IndexedSlices,
    connect,
    errors,
    placement,
    push_reads,
)
from adamax_ps.client.transport import Read
from adamax_ps.proto import codec
from adamax_ps.proto.v1 import parameter_server_pb2 as pb
from adamax_ps.proto.v1 import parameter_server_pb2_grpc as pb_grpc
from adamax_ps.proto.wire import INLINE_READ_BYTES
from adamax_ps.server.grpc.server import create_grpc_server
from adamax_ps.server.service import ParameterService, ServiceSettings
from adamax_ps.torch import Adamax as TorchAdamax
from adamax_ps.torch import Embedding

F32 = np.float32


@pytest.fixture
def served():
    """An in-process service behind a real gRPC server, and a stub; 8 MB of
    requests in flight at most."""
    service = ParameterService(ServiceSettings(shards=2, max_inflight_bytes=8 << 20))
    server = create_grpc_server(service, "127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    with connect(f"grpc://127.0.0.1:{server.port}") as cluster:
        w = cluster.variable("w", initial_value=np.arange(4, dtype=F32))
        cluster.variable("big", shape=(INLINE_READ_BYTES // 4 + 1,))
        cluster.variable("half", shape=(INLINE_READ_BYTES // 8,))
        Adamax(cluster=cluster).apply_gradients([(np.ones(4, F32), w)])
        yield service, pb_grpc.ParameterServerStub(channel)
    channel.close()
    server.stop(0)
    service.close()


def push(stub, sequence: int, *reads: pb.ReadRequest):
    return stub.ApplyGradients(
        pb.ApplyRequest(
            view=pb.ClusterView(server_index=0, num_servers=1),
            optimizer="Adamax",
            push_id=pb.PushId(client="reader", sequence=sequence),
            gradients=[pb.Gradient(variable="w", values=codec.encode(np.ones(4, F32)))],
            reads=list(reads),
        ),
        timeout=10,
    )


def test_reads_come_after_the_push_and_a_retry_reads_again(served):
    service, stub = served
    answer = push(
        stub,
        1,
        pb.ReadRequest(variable="w"),
        pb.ReadRequest(variable="w", rows=codec.encode(np.array([3, 0]))),
    )
    after = service.pull("w")
    assert answer.iterations == 2
    np.testing.assert_array_equal(codec.decode(answer.values[0]), after)
    np.testing.assert_array_equal(codec.decode(answer.values[1]), after[[3, 0]])
    state = snapshot(service)
    again = push(stub, 1, pb.ReadRequest(variable="w"))  # a retry: not applied again
    assert again.iterations == 2 and snapshot(service) == state
    np.testing.assert_array_equal(codec.decode(again.values[0]), after)


@pytest.mark.parametrize(
    ("read", "code", "message"),
    [
        (pb.ReadRequest(variable="nope"), "NOT_FOUND", "nope"),
        (
            pb.ReadRequest(variable="w", rows=codec.encode(np.array([4]))),
            "INVALID_ARGUMENT",
            "4",
        ),
        (pb.ReadRequest(variable="big"), "RESOURCE_EXHAUSTED", "read them apart"),
        (
            pb.ReadRequest(variable="w", optimizer="Adamax", slot="m"),
            "INVALID_ARGUMENT",
            "not slots",
        ),
    ],
)
def test_a_bad_read_refuses_the_push_whole(served, read, code, message):
    service, stub = served
    state = snapshot(service)
    with pytest.raises(grpc.RpcError) as refused:
        push(stub, 7, read)
    assert refused.value.code() == grpc.StatusCode[code]
    assert message in refused.value.details()
    assert snapshot(service) == state


def test_a_push_s_reads_are_held_in_the_in_flight_budget(served):
    """Their bytes are taken before the push applies: with the budget held
    by other requests the push is refused as busy, and nothing changes."""
    service, stub = served
    service.inflight.wait = 0.2  # how long a push waits for the budget to free
    service.inflight.acquire(6 << 20, "another request")
    try:
        state = snapshot(service)
        with pytest.raises(grpc.RpcError) as refused:
            push(stub, 8, pb.ReadRequest(variable="half"), pb.ReadRequest(variable="w"))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "a push's reads needs" in refused.value.details()
        assert snapshot(service) == state
    finally:
        service.inflight.release(6 << 20)
    answer = push(stub, 8, pb.ReadRequest(variable="half"))
    assert answer.iterations == 2 and service.inflight.used == 0


def scheme_address(servers, scheme: str) -> str:
    """The cluster's address list over gRPC or over HTTP."""
    if scheme == "grpc":
        return addresses(servers)
    return ",".join(s.http_address for s in servers)


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_the_client_refreshes_split_variables_with_the_push(
    tmp_path, scheme, monkeypatch
):
    monkeypatch.setattr(placement, "SPLIT_BYTES", 1)  # every variable split by rows
    servers = start_cluster(2, tmp_path, checkpoints=False)
    try:
        address = scheme_address(servers, scheme)
        with connect(address) as cluster:
            emb = cluster.variable("emb", initial_value=np.zeros((6, 2), F32))
            w = cluster.variable("w", initial_value=np.zeros(3, F32))
            assert cluster.placement("emb").split
            opt = Adamax(cluster=cluster)
            grads = [
                (IndexedSlices(np.ones((1, 2), F32), [4]), emb),
                (np.ones(3, F32), w),
            ]
            iterations, values = opt.apply_and_refresh(grads, [emb, w])
            assert iterations == 1
            np.testing.assert_array_equal(values[0], emb.numpy())
            np.testing.assert_array_equal(values[1], w.numpy())
            assert values[0][4].any() and not values[0][:4].any()
    finally:
        for server in servers:
            server.kill()


def requests(server) -> dict[str, float]:
    text = httpx.get(server.http_address + "/metrics").text
    found = re.findall(
        r'adamax_ps_requests_total\{method="(\w+)",transport="grpc"\} (\S+)', text
    )
    return {method: float(count) for method, count in found}


@pytest.mark.parametrize("servers_count", [1, 2])
def test_a_pytorch_step_is_one_request_a_server(tmp_path, servers_count, monkeypatch):
    """In the steady state each step's forward sends the push the last step
    held back and reads the batch's rows and the dense layer with it: one
    ApplyGradients a server, no reads. With two servers (table and layer
    split over both) the coordinator hands out each call's step with the
    answer to the one before: no reservation of its own after the first."""
    monkeypatch.setattr(placement, "SPLIT_BYTES", 1)
    servers = start_cluster(servers_count, tmp_path, checkpoints=False)
    try:
        with connect(addresses(servers)) as cluster:
            table = Embedding(100, 4, name="counted", cluster=cluster)
            dense = torch.nn.Linear(4, 2)
            params = [("counted/handle", table.handle), ("counted_dense", dense.weight)]
            optimizer = TorchAdamax(params, cluster=cluster, name="counted_opt")

            def step(number: int) -> None:
                optimizer.zero_grad()
                ids = torch.tensor([[number, 60 + number, 7]])
                dense(table(ids).mean(dim=1)).sum().backward()
                optimizer.step()

            step(0)
            step(1)  # its forward sends the first push, and its reservation
            before = [requests(server) for server in servers]
            steps = 10
            for number in range(2, steps + 2):
                step(number)
            after = [requests(server) for server in servers]
            held = int(optimizer.remote.iterations.numpy())
            optimizer.flush()
            iterations = int(optimizer.remote.iterations.numpy())
        assert (held, iterations) == (steps + 1, steps + 2)
        for was, now in zip(before, after, strict=True):
            spent = {m: (now[m] - was.get(m, 0)) / steps for m in now}
            assert {m: n for m, n in spent.items() if n} == {"ApplyGradients": 1.0}
    finally:
        for server in servers:
            server.kill()


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_the_client_reads_rows_with_the_push(tmp_path, scheme, monkeypatch):
    """The next batch's rows come back with the push, after it is applied:
    parts on servers the push goes to with it (a small budget sends the rest
    on their own, after), parts on untouched servers beside it."""
    monkeypatch.setattr(placement, "SPLIT_BYTES", 1)  # every variable split by rows
    monkeypatch.setattr(push_reads, "INLINE_READ_BYTES", 24)  # three rows a server
    servers = start_cluster(2, tmp_path, checkpoints=False)
    try:
        address = scheme_address(servers, scheme)
        with connect(address) as cluster:
            table = np.arange(12, dtype=F32).reshape(6, 2)
            emb = cluster.variable("emb", initial_value=table)
            w = cluster.variable("w", initial_value=np.zeros(3, F32))
            opt = Adamax(cluster=cluster)
            opt.apply_gradients([(IndexedSlices(np.ones((1, 2), F32), [0]), emb)])
            assert [s.server for s in cluster.placement("emb").slices] == [0, 1]
            wanted = np.array([5, 0, 4, 4, 1, 3])
            grads = [(IndexedSlices(np.ones((2, 2), F32), [4, 3]), emb)]  # server 1
            iterations, (rows, dense, none) = opt.apply_and_read(
                grads,
                [Read("emb", wanted), Read("w"), Read("emb", np.array([], np.int64))],
            )
            assert iterations == 2
            after = emb.numpy()
            np.testing.assert_array_equal(rows, after[wanted])
            assert rows[2].tolist() != [8.0, 9.0]  # row 4 as the push left it
            np.testing.assert_array_equal(dense, w.numpy())
            assert none.shape == (0, 2)
    finally:
        for server in servers:
            server.kill()


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_the_replica_id_travels_with_a_synchronous_push(tmp_path, scheme):
    (server,) = start_cluster(1, tmp_path, "--replicas", "2", checkpoints=False)
    try:
        address = server.grpc_address if scheme == "grpc" else server.http_address
        with connect(address, replica=2) as cluster:
            w = cluster.variable("w", initial_value=np.zeros(3, F32))
            with pytest.raises(
                errors.InvalidArgumentError, match="replica 2 is not below"
            ):
                Adamax(cluster=cluster).apply_gradients([(np.ones(3, F32), w)])
    finally:
        server.kill()
