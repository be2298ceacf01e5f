"""Many large pushes at once stay within a server's budget for bytes in flight.

16 pushes of 12 MB each (192 MB sent) reach a server that allows 16 MB in
flight, over gRPC streams and over HTTP bodies, each with a NaN in its last
bytes so every one is received whole and then refused. All are refused,
nothing changes, and the server's peak resident memory grows by the budget
plus gRPC's bounded read-ahead (1 MB a stream), far less than was sent. A
warm-up round of small pushes first starts the server's threads, whose stacks
and malloc arenas are not what this measures.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable

import grpc
import httpx
import numpy as np
import pytest
from helpers import memory
from helpers.servers import Server

from adamax_ps.client import Adamax, connect
from adamax_ps.proto import codec, streams
from adamax_ps.proto.v1 import parameter_server_pb2 as pb
from adamax_ps.server.grpc.server import READ_AHEAD

MB = 1 << 20
BUDGET = 16 * MB
PUSH = 12 * MB
CONCURRENT = 16
# What the server may grow by: the budget, each stream's read-ahead, and room
# for Python objects and allocator slack that the budget does not count.
ALLOWED = BUDGET + CONCURRENT * READ_AHEAD + 48 * MB

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inflight")
    args = ["--grpc-port", "0", "--http-port", "0", "--shards", "2"]
    args += ["--max-request-bytes", "16M", "--max-inflight-bytes", "16M"]
    server = Server(args, folder / "server.log").start()
    try:
        with connect(server.grpc_address) as cluster:
            emb = cluster.variable("emb", shape=(100, 4), initializer="ones")
            Adamax(cluster=cluster).apply_gradients(
                [(np.ones((100, 4), np.float32), emb)]
            )
        yield server
    finally:
        server.kill()


def nan_push(nbytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Row ids and values of a sparse push of ``nbytes``, NaN in its last value."""
    rows = nbytes // (8 + 16)
    values = np.ones((rows, 4), np.float32)
    values[-1, -1] = np.nan
    return np.zeros(rows, np.int64), values


def state(server: Server) -> str:
    """A hash of everything a push could change."""
    digest = hashlib.sha256()
    with connect(server.grpc_address) as cluster:
        opt = Adamax(cluster=cluster)
        emb = cluster.variable("emb", shape=(100, 4))
        digest.update(emb.numpy().tobytes())
        for slot in ("m", "v"):
            digest.update(opt.get_slot(emb, slot).numpy().tobytes())
        digest.update(str(opt.iterations.numpy()).encode())
    return digest.hexdigest()


def grpc_sender(server: Server) -> Callable[[int], str]:
    """Sends one streamed NaN push of the given size; returns its status code."""
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stream_unary = channel.stream_unary(
        "/adamax_ps.v1.ParameterServer/ApplyGradientsStream",
        request_serializer=lambda b: b,
        response_deserializer=pb.ApplyResponse.FromString,
    )

    def send(nbytes: int) -> str:
        rows, values = nan_push(nbytes)
        header = pb.ApplyRequest(
            view=pb.ClusterView(server_index=0, num_servers=1),
            optimizer="Adamax",
            gradients=[
                pb.Gradient(
                    variable="emb",
                    values=codec.header(values),
                    indices=codec.header(rows),
                )
            ],
        )
        body = rows.tobytes() + values.tobytes()
        chunks = [pb.ApplyChunk(header=header).SerializeToString()]
        chunks += [
            streams.data_chunk(body[k : k + MB]) for k in range(0, len(body), MB)
        ]
        try:
            stream_unary(iter(chunks), timeout=120)
        except grpc.RpcError as e:
            return e.code().name
        return "OK"

    return send


def http_sender(server: Server) -> Callable[[int], str]:
    """Sends one framed NaN push of the given size; returns its status."""

    def send(nbytes: int) -> str:
        rows, values = nan_push(nbytes)
        gradient = {
            "variable": "emb",
            "indices": codec.describe(rows),
            "values": codec.describe(values),
        }
        body = b"".join(codec.frame({"gradients": [gradient]}, [rows, values]))
        with httpx.Client(base_url=server.http_address, timeout=120) as client:
            response = client.post(
                "/api/v1/optimizers/Adamax/apply",
                content=body,
                headers={"content-type": codec.FRAMED},
            )
        return str(response.status_code)

    return send


def at_once(send: Callable[[int], str], nbytes: int) -> list[str]:
    """``CONCURRENT`` pushes of ``nbytes`` sent together; their answers."""
    answers: list[str] = []
    threads = [
        threading.Thread(target=lambda: answers.append(send(nbytes)))
        for _ in range(CONCURRENT)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    return answers


@pytest.mark.parametrize(
    ("make_sender", "refusal"),
    [(grpc_sender, "INVALID_ARGUMENT"), (http_sender, "400")],
    ids=["grpc", "http"],
)
def test_concurrent_large_pushes_stay_within_the_budget(server, make_sender, refusal):
    send = make_sender(server)
    before = state(server)
    assert at_once(send, 64 << 10) == [refusal] * CONCURRENT  # warm-up
    start = memory.reset_peak(server.process.pid)
    assert at_once(send, PUSH) == [refusal] * CONCURRENT
    grown = memory.peak(server.process.pid) - start
    sent = CONCURRENT * PUSH
    assert grown < ALLOWED, f"grew {grown / MB:.0f} MB for {sent / MB:.0f} MB sent"
    assert sent / 2 > ALLOWED  # the bound means something
    assert state(server) == before
