"""``grpc://``: every operation over one gRPC channel to one server.

Tensors travel as raw bytes in protobuf messages; pushes, assignments and
initial values over 1 MB as a stream of 1 MB chunks, whose data chunks are
encoded without protobuf (``proto.streams``). Calls are retried per the
``RetryPolicy`` when the server is unreachable or busy.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import numpy as np

from adamax_ps.client import errors, grpc_messages
from adamax_ps.client.grpc_tables import GrpcTableCalls
from adamax_ps.client.retry import RetryableError, RetryPolicy, with_retries
from adamax_ps.client.transport import (
    Applied,
    ApplyOptions,
    Gradient,
    OptimizerInfo,
    PushId,
    ServerInfo,
    VariableInfo,
    VariableSpec,
    View,
)
from adamax_ps.proto import codec, streams
from adamax_ps.proto.v1 import parameter_server_pb2 as pb
from adamax_ps.proto.v1 import parameter_server_pb2_grpc as pb_grpc
from adamax_ps.proto.wire import ERROR_KEY, INLINE_READ_BYTES, MESSAGE_LIMIT

STREAM_ABOVE = streams.CHUNK_BYTES  # pushes larger than this travel as a stream


class GrpcTransport(GrpcTableCalls):
    """``grpc://host:port``: one channel, reused by every thread."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.address = address
        target = address.removeprefix("grpc://")
        options = [
            ("grpc.max_send_message_length", MESSAGE_LIMIT),
            ("grpc.max_receive_message_length", MESSAGE_LIMIT),
        ]
        if credentials is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            self.channel = grpc.secure_channel(target, credentials, options=options)
        self.stub = pb_grpc.ParameterServerStub(self.channel)
        # Streams whose data chunks are encoded without protobuf (codec).
        service = "/adamax_ps.v1.ParameterServer/"
        self.apply_stream = self.channel.stream_unary(
            service + "ApplyGradientsStream",
            request_serializer=streams.chunk_serializer,
            response_deserializer=pb.ApplyResponse.FromString,
        )
        self.assign_stream = self.channel.stream_unary(
            service + "Assign",
            request_serializer=streams.chunk_serializer,
            response_deserializer=pb.AssignResponse.FromString,
        )
        self.create_stream = self.channel.stream_unary(
            service + "CreateVariablesStream",
            request_serializer=streams.chunk_serializer,
            response_deserializer=pb.CreateVariablesResponse.FromString,
        )
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.retry = retry or RetryPolicy()

    # Plumbing ---------------------------------------------------------------------

    def _call(
        self, method: Callable, make_request: Callable[..., Any], *, counted=False
    ) -> Any:
        """Call with retries; ``make_request`` builds a fresh request (or
        stream), given the attempt number (0, 1, ...) when ``counted``: a push
        says when it is a retry."""

        def attempt(number: int) -> Any:
            request = make_request(number) if counted else make_request()
            try:
                return method(request, timeout=self.timeout, metadata=self.metadata)
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else None
                domain = _domain_name(e)
                if (
                    code is grpc.StatusCode.UNAVAILABLE and domain not in errors.FINAL
                ) or (code is grpc.StatusCode.DEADLINE_EXCEEDED and not domain):
                    raise RetryableError(code.name, self._error(e)) from None
                raise self._error(e) from None

        return with_retries(self.retry, self.address, attempt)

    def _error(self, e: grpc.RpcError) -> errors.ParameterServerError:
        code = e.code() if hasattr(e, "code") else None
        details = e.details() if hasattr(e, "details") else str(e)
        domain = errors.BY_NAME.get(_domain_name(e) or "")
        if domain is not None:
            return domain(details)
        by_code = {
            grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgumentError,
            grpc.StatusCode.NOT_FOUND: errors.NotFoundError,
            grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExistsError,
            grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPreconditionError,
            grpc.StatusCode.UNAUTHENTICATED: errors.UnauthenticatedError,
            grpc.StatusCode.PERMISSION_DENIED: errors.UnauthenticatedError,
            grpc.StatusCode.RESOURCE_EXHAUSTED: errors.MessageTooLargeError,
            grpc.StatusCode.INTERNAL: errors.ServerInternalError,
        }
        cls = by_code.get(code, errors.TransportError)
        name = code.name if code is not None else "UNKNOWN"
        return cls(f"{self.address}: {name}: {details}")

    def close(self) -> None:
        self.channel.close()

    # Operations ---------------------------------------------------------------------

    def server_info(self) -> ServerInfo:
        r = self._call(self.stub.GetServerInfo, pb.ServerInfoRequest)
        return ServerInfo(
            self.address,
            r.version,
            r.server_index,
            r.num_servers,
            r.shards,
            r.replicas,
            r.replicas_to_aggregate,
            r.ready,
            r.max_request_rows,
            r.rescale_state or "serving",
            tuple(r.addresses),
            tuple(r.http_addresses),
        )

    def create_variables(
        self, view: View, specs: list[VariableSpec]
    ) -> list[VariableInfo]:
        """Create in one message; initial values larger than one message
        stream in chunks after a header that describes them."""
        initials = [
            codec.little_endian(np.asarray(s.initial_value))
            for s in specs
            if s.initial_value is not None
        ]
        streamed = sum(a.nbytes for a in initials) > STREAM_ABOVE

        def request() -> pb.CreateVariablesRequest:
            return pb.CreateVariablesRequest(
                view=_view(view),
                variables=[
                    grpc_messages.variable_spec(s, with_data=not streamed)
                    for s in specs
                ],
            )

        if not streamed:
            response = self._call(self.stub.CreateVariables, request)
        else:

            def stream() -> Iterator[pb.CreateVariablesChunk | bytes]:
                yield pb.CreateVariablesChunk(header=request())
                for piece in streams.chunks(initials):
                    yield streams.data_chunk(piece)

            response = self._call(self.create_stream, stream)
        return [grpc_messages.variable_info(v) for v in response.variables]

    def list_variables(self) -> list[VariableInfo]:
        response = self._call(self.stub.ListVariables, pb.ListVariablesRequest)
        return [grpc_messages.variable_info(v) for v in response.variables]

    def create_optimizer(self, view: View, config: dict) -> OptimizerInfo:
        response = self._call(
            self.stub.CreateOptimizer,
            lambda: pb.CreateOptimizerRequest(
                view=_view(view), config_json=json.dumps(config)
            ),
        )
        return grpc_messages.optimizer_info(response)

    def get_optimizer(
        self, name: str, create_iterations: bool = False
    ) -> OptimizerInfo:
        method = (
            self.stub.CreateIterations if create_iterations else self.stub.GetOptimizer
        )
        response = self._call(method, lambda: pb.OptimizerRequest(optimizer=name))
        return grpc_messages.optimizer_info(response)

    def reserve_step(
        self, view: View, optimizer: str, variables: Sequence[str], push_id: PushId
    ) -> int:
        response = self._call(
            self.stub.ReserveStep,
            lambda attempt: pb.ReserveStepRequest(
                view=_view(view),
                optimizer=optimizer,
                variables=list(variables),
                push_id=_push_id(push_id, attempt),
            ),
            counted=True,
        )
        return response.step

    def apply(
        self,
        view: View,
        optimizer: str,
        gradients: list[Gradient],
        push_id: PushId,
        options: ApplyOptions,
    ) -> Applied:
        arrays: list[np.ndarray] = []
        for g in gradients:
            if g.indices is not None:
                arrays.append(g.indices)
            arrays.append(g.values)
        nbytes = sum(a.nbytes for a in arrays)

        def request(with_data: bool, attempt: int) -> pb.ApplyRequest:
            encode = codec.encode if with_data else codec.header
            return pb.ApplyRequest(
                view=_view(view),
                optimizer=optimizer,
                push_id=_push_id(push_id, attempt),
                gradients=[
                    pb.Gradient(
                        variable=g.variable,
                        values=encode(g.values),
                        indices=encode(g.indices) if g.indices is not None else None,
                    )
                    for g in gradients
                ],
                step=options.step,
                aggregated=options.aggregated,
                call_variables=list(options.call_variables),
                clipped=options.clipped,
                replica=options.replica,
                reserve_next=options.reserve_next,
                step_reserved_ahead=options.step_reserved_ahead,
                reads=[
                    pb.ReadRequest(
                        variable=r.variable,
                        rows=None if r.rows is None else codec.encode(r.rows),
                        wire_dtype=_wire_code(r.wire_dtype),
                    )
                    for r in options.reads
                ],
            )

        if nbytes <= STREAM_ABOVE:
            response = self._call(
                self.stub.ApplyGradients,
                lambda attempt: request(True, attempt),
                counted=True,
            )
        else:

            def stream(attempt: int) -> Iterator[pb.ApplyChunk | bytes]:
                yield pb.ApplyChunk(header=request(False, attempt))
                for piece in streams.chunks(arrays):
                    yield streams.data_chunk(piece)

            response = self._call(self.apply_stream, stream, counted=True)
        return Applied(
            response.step,
            response.iterations,
            [
                _handed_out(codec.decode(value), read.wire_dtype)
                for value, read in zip(response.values, options.reads, strict=True)
            ],
            response.next_step if response.HasField("next_step") else None,
        )

    def read(
        self,
        variable: str = "",
        *,
        optimizer: str = "",
        slot: str = "",
        rows: np.ndarray | None = None,
        weight: str = "",
        expected_bytes: int | None = None,
        wire_dtype: str | None = None,
        view: View | None = None,
    ) -> np.ndarray:
        def request() -> pb.ReadRequest:
            return pb.ReadRequest(
                variable=variable,
                optimizer=optimizer,
                slot=slot,
                weight=weight,
                rows=codec.encode(rows) if rows is not None else None,
                wire_dtype=_wire_code(wire_dtype),
                view=_view(view) if view is not None else None,
            )

        if expected_bytes is not None and expected_bytes <= INLINE_READ_BYTES:
            # One message: a streamed answer costs gRPC a thread per call.
            # A writable copy, as a streamed read gives (the message's bytes
            # are read-only).
            value = codec.decode(self._call(self.stub.ReadInline, request))
        else:
            value = self._call(grpc_messages.collect(self.stub.Read), request)
        return _handed_out(value, wire_dtype)

    def assign(
        self,
        view: View,
        value: np.ndarray,
        *,
        variable: str = "",
        optimizer: str = "",
        slot: str = "",
        weight: str = "",
    ) -> None:
        value = codec.little_endian(np.asarray(value))

        def stream() -> Iterator[pb.AssignChunk]:
            yield pb.AssignChunk(
                header=pb.AssignRequest(
                    view=_view(view),
                    variable=variable,
                    optimizer=optimizer,
                    slot=slot,
                    weight=weight,
                    value=codec.header(value),
                )
            )
            for piece in streams.chunks([value]):
                yield pb.AssignChunk(data=bytes(piece))

        self._call(self.stub.Assign, stream)

    def set_iterations(self, view: View, optimizer: str, iterations: int) -> None:
        self._call(
            self.stub.SetIterations,
            lambda: pb.SetIterationsRequest(
                view=_view(view), optimizer=optimizer, iterations=iterations
            ),
        )

    def add_slot(
        self, view: View, optimizer: str, variable: str, slot: str, initializer: str
    ) -> None:
        self._call(
            self.stub.AddSlot,
            lambda: pb.AddSlotRequest(
                view=_view(view),
                optimizer=optimizer,
                variable=variable,
                slot=slot,
                initializer=initializer,
            ),
        )

    def add_weight(
        self,
        view: View,
        optimizer: str,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
        initializer: str,
    ) -> np.ndarray:
        response = self._call(
            self.stub.AddWeight,
            lambda: pb.AddWeightRequest(
                view=_view(view),
                optimizer=optimizer,
                name=name,
                shape=shape,
                dtype=codec.dtype_code(dtype),
                initializer=initializer,
            ),
        )
        return codec.decode(response.value).copy()

    def checkpoint(self) -> dict[str, Any]:
        r = self._call(self.stub.Checkpoint, pb.CheckpointRequest)
        return {
            "path": r.path,
            "sequence": r.sequence,
            "bytes": r.bytes,
            "seconds": r.seconds,
        }


def _domain_name(e: grpc.RpcError) -> str | None:
    try:
        for key, value in e.trailing_metadata() or ():
            if key == ERROR_KEY:
                return value
    except Exception:  # a transport-level error has no trailers
        return None
    return None


def _push_id(push_id: PushId, attempt: int) -> pb.PushId:
    return pb.PushId(client=push_id.client, sequence=push_id.sequence, attempt=attempt)


def _view(view: View) -> pb.ClusterView:
    return pb.ClusterView(server_index=view[0], num_servers=view[1])


def _wire_code(wire_dtype: str | None) -> int:
    """``ReadRequest.wire_dtype`` of a reduced-precision read."""
    if wire_dtype is None:
        return pb.DTYPE_UNSPECIFIED
    return codec.dtype_code(codec.REDUCED[wire_dtype])


def _handed_out(value: np.ndarray, wire_dtype: str | None) -> np.ndarray:
    """A value as the client hands it out: writable (a message's own bytes
    are read-only), and float32 again when it came in reduced precision."""
    if wire_dtype is not None:
        return value.astype(np.float32)
    return value if value.flags.writeable else value.copy()
