"""Protobuf messages to the client's types and back, for the gRPC transport."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

from adamax_ps.client import errors
from adamax_ps.client.transport import OptimizerInfo, VariableInfo, VariableSpec
from adamax_ps.proto import codec
from adamax_ps.proto.v1 import parameter_server_pb2 as pb


def collect(method: Callable) -> Callable:
    """A server-streamed tensor (header, then chunks) into one numpy array."""

    def call(request, timeout=None, metadata=()):
        stream = method(request, timeout=timeout, metadata=metadata)
        first = next(stream, None)
        if first is None or not first.HasField("header"):
            raise errors.TransportError("a streamed tensor came without its header")
        size = codec.declared_nbytes(first.header, 1 << 62)
        buffer = np.empty(size, np.uint8)
        filled = 0
        for chunk in stream:
            end = filled + len(chunk.data)
            if end > size:
                raise errors.TransportError("a streamed tensor carried too many bytes")
            buffer[filled:end] = np.frombuffer(chunk.data, np.uint8)
            filled = end
        if filled != size:
            raise errors.TransportError("a streamed tensor ended early")
        return codec.decode(first.header, memoryview(buffer))

    return call


def variable_spec(spec: VariableSpec, with_data: bool) -> pb.VariableSpec:
    """A variable's spec on the wire; its initial value with its bytes, or
    described only (its bytes follow in a stream)."""
    initial = None
    if spec.initial_value is not None:
        value = codec.little_endian(np.asarray(spec.initial_value))
        initial = codec.encode(value) if with_data else codec.header(value)
    return pb.VariableSpec(
        name=spec.name,
        global_shape=spec.global_shape,
        dtype=codec.dtype_code(spec.dtype),
        row_offset=spec.row_offset,
        rows=spec.rows,
        seed=spec.seed,
        initial_value=initial,
        initializer_json=(
            spec.initializer
            if isinstance(spec.initializer, str)
            else json.dumps(spec.initializer)
        ),
    )


def variable_info(v: pb.VariableInfo) -> VariableInfo:
    return VariableInfo(
        v.name,
        tuple(v.shape),
        codec.numpy_dtype(v.dtype),
        tuple(v.global_shape),
        v.row_offset,
        v.created,
    )


def optimizer_info(r: pb.OptimizerState) -> OptimizerInfo:
    return OptimizerInfo(
        name=r.name,
        config=json.loads(r.config_json),
        iterations=r.iterations,
        weights=[(w.kind, w.variable, w.name) for w in r.weights],
        slot_names=list(r.slot_names),
        created=r.created,
        pushes=r.pushes,
    )
