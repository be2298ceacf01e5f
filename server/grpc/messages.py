"""Protobuf messages to the service's types and back, for the servicer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from adamax_ps.proto import codec, streams
from adamax_ps.proto.v1 import parameter_server_pb2 as pb
from adamax_ps.server.gradients import Gradient
from adamax_ps.server.ledger import PushId
from adamax_ps.server.optimizer_state import OptimizerSummary
from adamax_ps.server.store import VariableRecord


def view(message: pb.ClusterView) -> tuple[int, int] | None:
    """The sender's view of the cluster (None: a client, such as grpcurl,
    that sends none)."""
    if message.num_servers == 0:
        return None
    return message.server_index, message.num_servers


def variable_specs(
    request: pb.CreateVariablesRequest, initials: list[np.ndarray | None]
) -> list[dict[str, Any]]:
    """``create_variables`` specs, each with its initial value or None."""
    specs = []
    for spec, initial in zip(request.variables, initials, strict=True):
        global_shape = tuple(spec.global_shape)
        shape = (spec.rows, *global_shape[1:]) if global_shape else ()
        specs.append(
            {
                "name": spec.name,
                "shape": shape if initial is None else None,
                "dtype": codec.numpy_dtype(spec.dtype),
                "initial_value": initial,
                "initializer": initializer(spec.initializer_json),
                "seed": spec.seed,
                "global_shape": global_shape,
                "row_offset": spec.row_offset,
            }
        )
    return specs


def optimizer_state(
    summary: OptimizerSummary, created: bool = False
) -> pb.OptimizerState:
    return pb.OptimizerState(
        name=summary.name,
        config_json=json.dumps(summary.config),
        iterations=summary.iterations,
        weights=[
            pb.WeightRef(kind=w.kind, variable=w.variable, name=w.name)
            for w in summary.weights
        ],
        slot_names=summary.slot_names,
        created=created,
        pushes=summary.pushes,
    )


def tensor_chunks(value: np.ndarray) -> Iterator[pb.TensorChunk]:
    """A tensor as a server stream: its header, then its bytes in chunks."""
    yield pb.TensorChunk(header=codec.header(value))
    for piece in streams.chunks([value]):
        yield pb.TensorChunk(data=bytes(piece))


def gradient(
    variable: str,
    values: np.ndarray,
    indices: np.ndarray | None,
    finite: bool = False,
):
    if indices is None:
        return Gradient.dense(variable, values, finite)
    return Gradient.sparse(variable, indices, values, finite)


def push_id(request: Any) -> PushId | None:
    if not request.HasField("push_id"):
        return None
    push_id = request.push_id
    return PushId(push_id.client, push_id.sequence, push_id.attempt)


def initializer(text: str) -> str | dict:
    if not text:
        return "zeros"
    if text.lstrip().startswith("{"):
        return json_object(text, "initializer_json")
    return text


def json_object(text: str, what: str) -> dict:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise codec.CodecError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise codec.CodecError(f"{what} must be a JSON object")
    return value


def variable_info(record: VariableRecord, created: bool = False) -> pb.VariableInfo:
    return pb.VariableInfo(
        name=record.name,
        shape=record.shape,
        dtype=codec.dtype_code(record.dtype),
        global_shape=record.global_shape,
        row_offset=record.row_offset,
        created=created,
    )
