"""Hostile gRPC input: random bytes into every RPC, truncated and mutated valid
messages, and well-formed requests carrying bad tensors. Never a crash or a
hang, never INTERNAL; a refused request leaves the state bit for bit as it was."""

from __future__ import annotations

import hashlib

import grpc
import numpy as np
import pytest
from helpers.servers import start_fuzz_target

from adamax_ps.proto import codec, streams
from adamax_ps.proto.v1 import parameter_server_pb2 as pb

SERVICE = "/adamax_ps.v1.ParameterServer/"
UNARY = [
    "GetServerInfo",
    "CreateVariables",
    "ListVariables",
    "CreateOptimizer",
    "GetOptimizer",
    "CreateIterations",
    "ReserveStep",
    "ApplyGradients",
    "SetIterations",
    "AddSlot",
    "AddWeight",
    "Checkpoint",
    "ReadInline",
]
CLIENT_STREAMS = ["ApplyGradientsStream", "Assign"]
SERVER_STREAMS = ["Read"]
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
}
F32 = np.float32


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_fuzz_target(tmp_path_factory.mktemp("fuzz"))
    yield server
    assert server.process.poll() is None, "the server died during the fuzz run"
    server.kill()


@pytest.fixture(scope="module")
def channel(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    yield channel
    channel.close()


def fingerprint(channel) -> str:
    """Everything a push or a creation could change, hashed."""
    digest = hashlib.sha256()
    read = channel.unary_stream(
        SERVICE + "Read",
        request_serializer=pb.ReadRequest.SerializeToString,
        response_deserializer=pb.TensorChunk.FromString,
    )
    listing = channel.unary_unary(
        SERVICE + "ListVariables",
        request_serializer=pb.ListVariablesRequest.SerializeToString,
        response_deserializer=pb.ListVariablesResponse.FromString,
    )
    optimizer = channel.unary_unary(
        SERVICE + "GetOptimizer",
        request_serializer=pb.OptimizerRequest.SerializeToString,
        response_deserializer=pb.OptimizerState.FromString,
    )
    for variable in listing(pb.ListVariablesRequest(), timeout=10).variables:
        digest.update(variable.SerializeToString())
        for slot in ("", "m", "v"):
            request = pb.ReadRequest(
                variable=variable.name, optimizer="Adamax" if slot else "", slot=slot
            )
            try:
                for chunk in read(request, timeout=10):
                    digest.update(chunk.SerializeToString())
            except grpc.RpcError as e:
                digest.update(str(e.code()).encode())
    state = optimizer(pb.OptimizerRequest(optimizer="Adamax"), timeout=10)
    digest.update(state.SerializeToString())
    return digest.hexdigest()


def call(channel, method: str, payload):
    """Send raw bytes (or a list of raw messages for a stream); the status code
    (OK included) and the details."""
    try:
        if method in UNARY:
            channel.unary_unary(SERVICE + method)(payload, timeout=15)
        elif method in CLIENT_STREAMS:
            channel.stream_unary(SERVICE + method)(iter(payload), timeout=15)
        else:
            list(channel.unary_stream(SERVICE + method)(payload, timeout=15))
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details()


def check(channel, method, payload, before: str) -> str:
    code, details = call(channel, method, payload)
    assert code not in (
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
    ), (method, code, details)
    after = fingerprint(channel)
    if code != grpc.StatusCode.OK:
        assert code in REFUSALS, (method, code, details)
        assert details, (method, code)
        assert after == before, f"{method} was refused ({code}) but changed the state"
    return after


def test_random_bytes_into_every_rpc(server, channel):
    rng = np.random.default_rng(1)
    before = fingerprint(channel)
    for method in UNARY + CLIENT_STREAMS + SERVER_STREAMS:
        for _ in range(25):
            size = int(rng.choice([0, 1, 7, 64, 1000]))
            raw = rng.bytes(size)
            payload = (
                [raw, rng.bytes(int(rng.integers(0, 100)))]
                if (method in CLIENT_STREAMS)
                else raw
            )
            before = check(channel, method, payload, before)


def valid_messages() -> dict[str, bytes]:
    view = pb.ClusterView(server_index=0, num_servers=1)
    g = codec.encode(np.ones(6))
    return {
        "ApplyGradients": pb.ApplyRequest(
            view=view,
            optimizer="Adamax",
            push_id=pb.PushId(client="fz", sequence=1),
            gradients=[
                pb.Gradient(
                    variable="emb",
                    values=codec.encode(np.ones((2, 4), F32)),
                    indices=codec.encode(np.array([3, 9])),
                ),
                pb.Gradient(variable="w", values=g),
            ],
        ).SerializeToString(),
        "CreateVariables": pb.CreateVariablesRequest(
            view=view,
            variables=[
                pb.VariableSpec(
                    name="new",
                    global_shape=[3, 2],
                    dtype=pb.FLOAT32,
                    rows=3,
                    initializer_json='"glorot_uniform"',
                )
            ],
        ).SerializeToString(),
        "SetIterations": pb.SetIterationsRequest(
            view=view, optimizer="Adamax", iterations=1
        ).SerializeToString(),
        "Read": pb.ReadRequest(
            variable="emb", rows=codec.encode(np.array([1, 2]))
        ).SerializeToString(),
        "ReadInline": pb.ReadRequest(
            variable="emb", rows=codec.encode(np.array([1, 2]))
        ).SerializeToString(),
    }


def test_truncated_and_mutated_messages(server, channel):
    rng = np.random.default_rng(2)
    before = fingerprint(channel)
    for method, message in valid_messages().items():
        for _ in range(40):
            data = bytearray(message)
            if rng.random() < 0.5:
                data = data[: int(rng.integers(0, len(data)))]
            else:
                for _ in range(int(rng.integers(1, 4))):
                    data[int(rng.integers(0, len(data)))] ^= int(rng.integers(1, 256))
            before = check(channel, method, bytes(data), before)


def hostile_pushes() -> list[tuple[str, object]]:
    view = pb.ClusterView(server_index=0, num_servers=1)

    def apply(*gradients, **fields):
        return pb.ApplyRequest(
            view=view, optimizer="Adamax", gradients=list(gradients), **fields
        ).SerializeToString()

    def sparse(indices, values, variable="emb"):
        return pb.Gradient(
            variable=variable,
            values=codec.encode(values),
            indices=codec.encode(indices),
        )

    def streamed(gradients, cut: int) -> list[bytes]:
        """A streamed push of ``(variable, indices or None, values)``, its
        bytes cut into chunks of ``cut`` bytes."""
        header = pb.ApplyRequest(view=view, optimizer="Adamax")
        data = b""
        for variable, indices, values in gradients:
            g = header.gradients.add(variable=variable, values=codec.header(values))
            if indices is not None:
                g.indices.CopyFrom(codec.header(indices))
                data += indices.tobytes()
            data += values.tobytes()
        chunks = [data[k : k + cut] for k in range(0, len(data), cut)]
        return [pb.ApplyChunk(header=header).SerializeToString()] + [
            streams.data_chunk(c) for c in chunks
        ]

    nan_tail = np.array([1, 1, 1, 1, 1, np.nan])
    inf_row = np.ones((2, 4), F32)
    inf_row[1, 3] = np.inf
    ones = np.ones((1, 4), F32)
    huge_header = pb.Tensor(shape=[1 << 40, 1 << 20], dtype=pb.FLOAT32)
    lying = pb.ApplyChunk(
        header=pb.ApplyRequest(
            view=view,
            optimizer="Adamax",
            gradients=[
                pb.Gradient(variable="w", values=pb.Tensor(shape=[6], dtype=pb.FLOAT64))
            ],
        )
    )
    return [
        (
            "ApplyGradients",
            apply(pb.Gradient(variable="w", values=codec.encode(np.ones(6, F32)))),
        ),
        (
            "ApplyGradients",
            apply(pb.Gradient(variable="w", values=codec.encode(np.ones(5)))),
        ),
        (
            "ApplyGradients",
            apply(
                pb.Gradient(
                    variable="w", values=codec.encode(np.array([1, np.nan, 1, 1, 1, 1]))
                )
            ),
        ),
        (
            "ApplyGradients",
            apply(
                pb.Gradient(
                    variable="w", values=codec.encode(np.array([np.inf, 1, 1, 1, 1, 1]))
                )
            ),
        ),
        ("ApplyGradients", apply(sparse(np.array([-1]), ones))),
        ("ApplyGradients", apply(sparse(np.array([50]), ones))),
        ("ApplyGradients", apply(sparse(np.array([1 << 62]), ones))),
        ("ApplyGradients", apply(sparse(np.array([1.5]), ones))),
        ("ApplyGradients", apply(sparse(np.array([1, 2]), ones))),
        (
            "ApplyGradients",
            apply(
                pb.Gradient(
                    variable="w",
                    values=pb.Tensor(shape=[6], dtype=pb.FLOAT64, data=b"short"),
                )
            ),
        ),
        ("ApplyGradients", apply(pb.Gradient(variable="w", values=huge_header))),
        (
            "ApplyGradients",
            apply(
                pb.Gradient(
                    variable="w", values=pb.Tensor(shape=[-6], dtype=pb.FLOAT64)
                )
            ),
        ),
        (
            "ApplyGradients",
            apply(pb.Gradient(variable="w", values=codec.encode(np.ones(6))), step=-5),
        ),
        (
            "ApplyGradientsStream",
            [
                pb.ApplyChunk(
                    header=pb.ApplyRequest(
                        view=view,
                        optimizer="Adamax",
                        gradients=[pb.Gradient(variable="w", values=huge_header)],
                    )
                ).SerializeToString(),
                b"\x12\x03abc",
            ],
        ),
        ("ApplyGradientsStream", [lying.SerializeToString(), b"\x12\x04abcd"]),
        (
            "ApplyGradientsStream",
            [lying.SerializeToString(), streams.data_chunk(np.ones(7).tobytes())],
        ),
        ("ApplyGradientsStream", [streams.data_chunk(b"no header first")]),
        # Reads answered with a push: refused before the push applies.
        (
            "ApplyGradients",
            pb.ApplyRequest(
                view=view,
                optimizer="Adamax",
                push_id=pb.PushId(client="fz-read", sequence=1),
                gradients=[pb.Gradient(variable="w", values=codec.encode(np.ones(6)))],
                reads=[
                    pb.ReadRequest(
                        variable="emb",
                        rows=pb.Tensor(shape=[1 << 40], dtype=pb.INT64, data=b"\0" * 8),
                    )
                ],
            ).SerializeToString(),
        ),
        (
            "ApplyGradients",
            pb.ApplyRequest(
                view=view,
                optimizer="Adamax",
                push_id=pb.PushId(client="fz-read", sequence=2),
                gradients=[pb.Gradient(variable="w", values=codec.encode(np.ones(6)))],
                reads=[pb.ReadRequest(variable="emb")] * 100_000,
            ).SerializeToString(),
        ),
        # NaN or Inf in a later chunk, elements split across chunks: the scan
        # made while the stream arrives must still find them.
        ("ApplyGradientsStream", streamed([("w", None, nan_tail)], 20)),
        ("ApplyGradientsStream", streamed([("emb", np.array([1, 2]), inf_row)], 13)),
        (
            "ApplyGradientsStream",
            streamed([("w", None, np.ones(6)), ("emb", np.array([3]), inf_row[1:])], 7),
        ),
        (
            "Assign",
            [
                pb.AssignChunk(
                    header=pb.AssignRequest(
                        view=view,
                        variable="w",
                        value=pb.Tensor(shape=[7], dtype=pb.FLOAT64),
                    )
                ).SerializeToString(),
                streams.data_chunk(np.ones(7).tobytes()),
            ],
        ),
        (
            "Read",
            pb.ReadRequest(
                variable="emb", rows=codec.encode(np.array([99]))
            ).SerializeToString(),
        ),
        # Huge row lists: more rows than one read may ask for (the fuzz
        # target's --max-request-rows is 1000), and a list that claims far
        # more rows than it carries.
        (
            "Read",
            pb.ReadRequest(
                variable="emb", rows=codec.encode(np.zeros(5000, np.int64))
            ).SerializeToString(),
        ),
        (
            "Read",
            pb.ReadRequest(
                variable="emb",
                rows=pb.Tensor(shape=[1 << 40], dtype=pb.INT64, data=b"\0" * 8),
            ).SerializeToString(),
        ),
        (
            "ReadInline",
            pb.ReadRequest(
                variable="emb",
                rows=pb.Tensor(shape=[1 << 40], dtype=pb.INT64, data=b"\0" * 8),
            ).SerializeToString(),
        ),
        (
            "ReadInline",
            pb.ReadRequest(
                variable="emb", rows=codec.encode(np.zeros(5000, np.int64))
            ).SerializeToString(),
        ),
        (  # a huge declared size in a stream: refused before allocation
            "Assign",
            [
                pb.AssignChunk(
                    header=pb.AssignRequest(view=view, variable="w", value=huge_header)
                ).SerializeToString(),
                streams.data_chunk(b"x" * 64),
            ],
        ),
        (
            "CreateVariables",
            pb.CreateVariablesRequest(
                view=view,
                variables=[
                    pb.VariableSpec(
                        name="big",
                        global_shape=[1 << 40, 1 << 20],
                        dtype=pb.FLOAT64,
                        rows=1 << 40,
                    )
                ],
            ).SerializeToString(),
        ),
        (
            "CreateVariables",
            pb.CreateVariablesRequest(
                view=view,
                variables=[
                    pb.VariableSpec(name="x", global_shape=[4], dtype=pb.INT32, rows=4)
                ],
            ).SerializeToString(),
        ),
        (
            "CreateVariables",  # all or nothing: the valid first one is not made
            pb.CreateVariablesRequest(
                view=view,
                variables=[
                    pb.VariableSpec(
                        name="fine", global_shape=[4], dtype=pb.FLOAT32, rows=4
                    ),
                    pb.VariableSpec(name="x", global_shape=[4], dtype=pb.INT32, rows=4),
                ],
            ).SerializeToString(),
        ),
        (
            "SetIterations",
            pb.SetIterationsRequest(
                view=view, optimizer="Adamax", iterations=-3
            ).SerializeToString(),
        ),
        (
            "CreateOptimizer",
            pb.CreateOptimizerRequest(
                view=view, config_json='{"learning_rate": "fast"}'
            ).SerializeToString(),
        ),
        (
            "CreateOptimizer",
            pb.CreateOptimizerRequest(
                view=view, config_json="[1, 2"
            ).SerializeToString(),
        ),
        (
            "AddWeight",
            pb.AddWeightRequest(
                view=view,
                optimizer="Adamax",
                name="huge",
                shape=[1 << 40],
                dtype=pb.FLOAT64,
            ).SerializeToString(),
        ),
    ]


@pytest.mark.parametrize("index", range(len(hostile_pushes())))
def test_hostile_but_well_formed_requests_are_refused(server, channel, index):
    method, payload = hostile_pushes()[index]
    before = fingerprint(channel)
    code, details = call(channel, method, payload)
    assert code in REFUSALS, (method, code, details)
    assert details
    assert fingerprint(channel) == before
