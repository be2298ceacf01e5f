"""The wire codec: exact round trips, zero-copy decoding, and refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adamax_ps.proto import codec, streams
from adamax_ps.proto.v1 import parameter_server_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int32", "int64"])
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 3, 4)])
def test_round_trip_is_exact(dtype, shape):
    array = (np.arange(int(np.prod(shape))) - 2).astype(dtype).reshape(shape)
    decoded = codec.decode(codec.encode(array))
    assert decoded.dtype == array.dtype and decoded.shape == shape
    assert decoded.tobytes() == array.tobytes()


def test_decoding_does_not_copy():
    tensor = codec.encode(np.arange(1000, dtype=np.float32))
    decoded = codec.decode(tensor)
    assert not decoded.flags.owndata and not decoded.flags.writeable


def test_big_endian_input_goes_out_little_endian():
    array = np.arange(4, dtype=">f4")
    assert codec.encode(array).data == np.arange(4, dtype="<f4").tobytes()


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (pb.Tensor(shape=[2], dtype=pb.FLOAT32, data=b"abc"), "needs 8 bytes"),
        (pb.Tensor(shape=[2], dtype=pb.DTYPE_UNSPECIFIED, data=b""), "unspecified"),
        (pb.Tensor(shape=[-1], dtype=pb.FLOAT32, data=b""), "negative"),
    ],
)
def test_bad_tensors_are_refused(tensor, message):
    with pytest.raises(codec.CodecError, match=message):
        codec.decode(tensor)


def test_unsupported_dtypes_cannot_travel():
    with pytest.raises(codec.CodecError, match="cannot travel"):
        codec.encode(np.array(["x"]))


def test_stream_assembler_checks_sizes_before_allocating():
    enormous = pb.Tensor(shape=[1 << 40, 1 << 20], dtype=pb.FLOAT64)
    with pytest.raises(codec.CodecError, match="exceeds the request limit"):
        streams.StreamAssembler([enormous], limit=1 << 30)
    parts = [
        pb.Tensor(shape=[3], dtype=pb.FLOAT32),
        pb.Tensor(shape=[2], dtype=pb.INT64),
    ]
    assembler = streams.StreamAssembler(parts, limit=1 << 20)
    payload = np.array([1, 2, 3], np.float32).tobytes() + np.array([7, 8]).tobytes()
    assembler.feed(payload[:5])
    with pytest.raises(codec.CodecError, match="ended after 5 of the 28 bytes"):
        assembler.arrays()
    assembler.feed(payload[5:])
    values, indices = assembler.arrays()
    assert values.tolist() == [1, 2, 3] and indices.tolist() == [7, 8]
    with pytest.raises(codec.CodecError, match="more bytes than its header declares"):
        assembler.feed(b"x")


def test_buffer_pool_reuses_a_buffer_only_once_nothing_views_it():
    pool = streams.BufferPool(budget=1 << 20, min_bytes=1 << 10)
    first = pool.take(4096)
    first[:] = 1
    address = first.__array_interface__["data"][0]
    held = pool.take(4096)  # the first is still in use: another buffer
    assert held.__array_interface__["data"][0] != address
    del held
    view = np.frombuffer(memoryview(first[:8]), np.uint8)
    del first  # an array made from it still lives: it must not be handed out
    again = pool.take(2048)
    assert again.__array_interface__["data"][0] != address
    assert view.tolist() == [1] * 8
    del view, again
    reused = pool.take(2048)  # now free, and big enough
    assert reused.__array_interface__["data"][0] == address
    assert len(reused) == 2048
    small, huge = pool.take(16), pool.take(2 << 20)  # outside the pooled sizes
    assert len(small) == 16 and len(huge) == 2 << 20
    assert sum(b.nbytes for b in pool._buffers) <= 1 << 20


def test_stream_assembler_exposes_its_layout():
    parts = [
        pb.Tensor(shape=[2], dtype=pb.INT64),
        pb.Tensor(shape=[2, 3], dtype=pb.FLOAT32),
    ]
    assembler = streams.StreamAssembler(parts, 1 << 20, streams.BufferPool(min_bytes=0))
    assert assembler.layout == [(0, 16, np.dtype("<i8")), (16, 24, np.dtype("<f4"))]
    assembler.feed(b"\0" * 10)
    assert assembler.filled == 10 and len(assembler.buffer) == 40


def test_chunks_split_without_copying():
    array = np.arange(10, dtype=np.float32)
    pieces = list(streams.chunks([array], size=16))
    assert [len(p) for p in pieces] == [16, 16, 8]
    assert b"".join(pieces) == array.tobytes()


def test_generated_code_is_fresh():
    """The committed stubs equal what the pinned grpcio-tools generates now."""
    result = subprocess.run(
        [sys.executable, ROOT / "proto" / "generate.py", "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300_000, 1 << 20])
def test_data_chunks_are_protobuf_on_the_wire(size):
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    raw = streams.data_chunk(memoryview(payload))
    assert pb.ApplyChunk.FromString(raw).data == payload
    if size:  # protobuf leaves an empty field out; ours writes it, also valid
        assert raw == pb.ApplyChunk(data=payload).SerializeToString()
    parsed = streams.chunk_parser(pb.ApplyChunk)(raw)
    assert bytes(parsed.data) == payload and not parsed.HasField("header")


def test_header_chunks_go_through_protobuf():
    header = pb.ApplyChunk(header=pb.ApplyRequest(optimizer="Adamax"))
    raw = streams.chunk_serializer(header)
    parsed = streams.chunk_parser(pb.ApplyChunk)(raw)
    assert parsed.HasField("header") and parsed.header.optimizer == "Adamax"
    assert streams.chunk_serializer(b"abc") == b"abc"
