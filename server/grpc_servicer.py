"""The gRPC face of a ParameterService: decode, call, encode; nothing else.

Domain errors map to status codes through ``errors.py`` (each error carries
its code); malformed tensors are INVALID_ARGUMENT; anything unexpected is
INTERNAL and logged with its traceback. The standard health and reflection
services are served beside ours.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any, ClassVar

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from adamax_ps.proto import codec, streams
from adamax_ps.proto.v1 import parameter_server_pb2 as pb
from adamax_ps.proto.v1 import parameter_server_pb2_grpc as pb_grpc
from adamax_ps.proto.wire import ERROR_KEY, MESSAGE_LIMIT
from adamax_ps.server.errors import ParameterServerError, ResourceExhaustedError
from adamax_ps.server.gradients import Gradient
from adamax_ps.server.ledger import PushId
from adamax_ps.server.optimizer_state import OptimizerState
from adamax_ps.server.service import ParameterService
from adamax_ps.server.store import VariableRecord
from adamax_ps.server.validation import NonFinitePolicy, StreamFiniteScan

log = logging.getLogger("adamax_ps.grpc")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ParameterServer"].full_name
# Bytes gRPC reads ahead on each stream before its handler asks for them. With
# the default bandwidth-delay probing the window grows to megabytes, so
# streams waiting for the in-flight budget were buffered whole by gRPC
# itself (16 waiting 3 MB pushes grew the server by 74 MB); a fixed 1 MB
# window bounds that to 1 MB a stream and moved 64 MB pushes as fast.
READ_AHEAD = 1 << 20


def _domain_errors(method: Callable) -> Callable:
    """Turn domain and codec errors into gRPC statuses with their messages."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            if isinstance(request, streams.Malformed):
                raise codec.CodecError(request.error)
            return method(self, request, context)
        except (ParameterServerError, codec.CodecError) as e:
            _abort(context, e)
        except grpc.RpcError:
            raise
        except Exception:
            if context.code() is not None:  # already aborted on purpose
                raise
            log.exception("internal error in %s", method.__name__)
            context.abort(
                grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}"
            )

    return wrapper


def _abort(context: grpc.ServicerContext, e: Exception) -> None:
    """End the call with the status of a domain or codec error, the domain
    error's class name in the trailing metadata."""
    if isinstance(e, codec.TooLargeError):
        e = ResourceExhaustedError(f"{e} (this server's --max-request-bytes)")
    if isinstance(e, ParameterServerError):
        context.set_trailing_metadata(((ERROR_KEY, type(e).__name__),))
        context.abort(grpc.StatusCode[e.code], str(e))
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))


def _streaming_errors(method: Callable) -> Callable:
    """The same for server-streaming methods (errors before the first yield)."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            if isinstance(request, streams.Malformed):
                raise codec.CodecError(request.error)
            yield from method(self, request, context)
        except (ParameterServerError, codec.CodecError) as e:
            _abort(context, e)

    return wrapper


class ParameterServerServicer(pb_grpc.ParameterServerServicer):
    """Translates the ``adamax_ps.v1.ParameterServer`` RPCs to the service."""

    def __init__(
        self,
        service: ParameterService,
        max_request_bytes: int,
        buffers: streams.BufferPool | None = None,
    ) -> None:
        self.service = service
        self.max_request_bytes = max_request_bytes
        self.buffers = buffers or streams.BufferPool()  # streams' receive buffers
        settings = service.settings
        self.index, self.size = settings.server_index, settings.num_servers
        self.ready = False

    def _check_view(self, view: pb.ClusterView) -> None:
        """Refuse a client whose idea of the cluster differs from this server's."""
        if view.num_servers == 0 and self.size == 1:
            return  # a client that sends no view (grpcurl) to a lone server
        self.service.check_view(view.server_index, view.num_servers)

    @_domain_errors
    def GetServerInfo(self, request, context):
        sync = self.service.settings.sync
        return pb.ServerInfo(
            version=server_version(),
            server_index=self.index,
            num_servers=self.size,
            shards=self.service.store.num_shards,
            replicas=sync.replicas if sync else 0,
            replicas_to_aggregate=sync.needed if sync else 0,
            ready=self.ready,
            max_message_bytes=MESSAGE_LIMIT,
            max_request_rows=self.service.settings.max_request_rows,
        )

    @_domain_errors
    def CreateVariables(self, request, context):
        self._check_view(request.view)
        initials = [
            codec.decode(spec.initial_value) if spec.HasField("initial_value") else None
            for spec in request.variables
        ]
        return self._create(request, initials)

    @_domain_errors
    def CreateVariablesStream(self, request_iterator, context):
        with ExitStack() as held:
            request, assembler, chunks = self._open_stream(
                request_iterator,
                held,
                "creation",
                lambda r: [
                    s.initial_value for s in r.variables if s.HasField("initial_value")
                ],
            )
            for chunk in chunks:
                assembler.feed(chunk.data)
            received = iter(assembler.arrays())
            initials = [
                next(received) if spec.HasField("initial_value") else None
                for spec in request.variables
            ]
            return self._create(request, initials)

    def _create(
        self, request: pb.CreateVariablesRequest, initials: list
    ) -> pb.CreateVariablesResponse:
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
                    "initializer": _initializer(spec.initializer_json),
                    "seed": spec.seed,
                    "global_shape": global_shape,
                    "row_offset": spec.row_offset,
                }
            )
        created = self.service.create_variables(specs)
        return pb.CreateVariablesResponse(
            variables=[_variable_info(*pair) for pair in created]
        )

    @_domain_errors
    def ListVariables(self, request, context):
        records = self.service.variables()
        return pb.ListVariablesResponse(variables=[_variable_info(r) for r in records])

    @_domain_errors
    def CreateOptimizer(self, request, context):
        self._check_view(request.view)
        config = _json_object(request.config_json, "config_json")
        state, created = self.service.create_optimizer(config)
        return self._optimizer_state(state.name, created)

    @_domain_errors
    def GetOptimizer(self, request, context):
        return self._optimizer_state(request.optimizer)

    @_domain_errors
    def CreateIterations(self, request, context):
        self.service.iterations(request.optimizer)
        return self._optimizer_state(request.optimizer)

    def _optimizer_state(self, name: str, created: bool = False) -> pb.OptimizerState:
        state: OptimizerState = self.service.optimizer(name)
        with state.lock:
            return pb.OptimizerState(
                name=state.name,
                config_json=json.dumps(
                    state.config.get_config(hypers_created=state.hypers_created)
                ),
                iterations=state.iterations,
                weights=[
                    pb.WeightRef(kind=w.kind, variable=w.variable, name=w.name)
                    for w in state.weights
                ],
                slot_names=state.slot_names,
                created=created,
                pushes=state.pushes,
            )

    @_domain_errors
    def ReserveStep(self, request, context):
        self._check_view(request.view)
        step = self.service.reserve_step(
            request.optimizer, list(request.variables), _push_id(request)
        )
        return pb.ReserveStepResponse(step=step)

    @_domain_errors
    def ApplyGradients(self, request, context):
        self._check_view(request.view)
        gradients = []
        nbytes = 0
        for g in request.gradients:
            values = codec.decode(g.values)
            indices = codec.decode(g.indices) if g.HasField("indices") else None
            nbytes += values.nbytes + (indices.nbytes if indices is not None else 0)
            gradients.append(_gradient(g.variable, values, indices))
        self.service.metrics.received_bytes.labels("grpc").inc(nbytes)
        return self._apply(request, gradients)

    @_domain_errors
    def ApplyGradientsStream(self, request_iterator, context):
        with ExitStack() as held:
            return self._apply_stream(request_iterator, held)

    def _apply_stream(self, request_iterator, held: ExitStack) -> pb.ApplyResponse:
        values_at = []  # where each gradient's values are in the stream

        def declared(request: pb.ApplyRequest) -> list[pb.Tensor]:
            tensors = []  # in stream order: each gradient's indices, then values
            for g in request.gradients:
                if g.HasField("indices"):
                    tensors.append(g.indices)
                values_at.append(len(tensors))
                tensors.append(g.values)
            return tensors

        request, assembler, chunks = self._open_stream(
            request_iterator, held, "push", declared
        )
        scan = None
        if self.service.settings.nonfinite is not NonFinitePolicy.ALLOW:
            scan = StreamFiniteScan(assembler.buffer, assembler.layout, values_at)
            scan.advance(assembler.filled)
        for chunk in chunks:
            assembler.feed(chunk.data)
            if scan is not None:
                scan.advance(assembler.filled)
        received = assembler.arrays()
        if scan is not None:
            scan.advance(assembler.filled)
        self.service.metrics.received_bytes.labels("grpc").inc(
            sum(a.nbytes for a in received)
        )
        gradients = []
        for g, k in zip(request.gradients, values_at, strict=True):
            indices = received[k - 1] if g.HasField("indices") else None
            finite = scan is not None and scan.finite(k)
            gradients.append(_gradient(g.variable, received[k], indices, finite))
        return self._apply(request, gradients)

    def _apply(self, request: pb.ApplyRequest, gradients: list) -> pb.ApplyResponse:
        result = self.service.apply(
            request.optimizer,
            gradients,
            _push_id(request),
            step=request.step if request.HasField("step") else None,
            aggregate=not request.aggregated,
            call_variables=list(request.call_variables) or None,
            clipped=request.clipped,
        )
        return pb.ApplyResponse(step=result.step, iterations=result.iterations)

    @_streaming_errors
    def Read(self, request, context):
        if request.weight:
            yield from _tensor_chunks(
                self.service.weight(request.optimizer, request.weight)
            )
            return
        rows = codec.decode(request.rows) if request.HasField("rows") else None
        with self.service.reading(
            request.variable,
            optimizer=request.optimizer or None,
            slot=request.slot or None,
            rows=rows,
        ) as value:
            yield from _tensor_chunks(value)

    def _open_stream(
        self,
        request_iterator: Iterator,
        held: ExitStack,
        what: str,
        declared: Callable[[Any], list[pb.Tensor]],
    ) -> tuple[Any, streams.StreamAssembler, Iterator]:
        """A streamed request's header (its view checked), an assembler for
        the tensors ``declared`` names in it (their bytes counted in the
        in-flight budget until ``held`` ends, the header's own data fed), and
        the chunks still to come."""
        chunks = _parsed(request_iterator)
        first = next(chunks, None)
        if first is None or not first.HasField("header"):
            raise codec.CodecError(f"a streamed {what} starts with its header")
        request = first.header
        self._check_view(request.view)
        assembler = streams.StreamAssembler(
            declared(request), self.max_request_bytes, self.buffers, self._holding(held)
        )
        if first.data:
            assembler.feed(first.data)
        return request, assembler, chunks

    def _holding(self, held: ExitStack) -> Callable[[int], None]:
        """Counts a stream's bytes in the in-flight budget until ``held`` ends."""

        def reserve(nbytes: int) -> None:
            held.enter_context(self.service.inflight.held(nbytes, "the stream"))

        return reserve

    @_domain_errors
    def Assign(self, request_iterator, context):
        with ExitStack() as held:
            return self._assign(request_iterator, held)

    def _assign(self, request_iterator, held: ExitStack) -> pb.AssignResponse:
        request, assembler, chunks = self._open_stream(
            request_iterator, held, "assignment", lambda r: [r.value]
        )
        for chunk in chunks:
            assembler.feed(chunk.data)
        (value,) = assembler.arrays()
        if request.weight:
            self.service.assign_weight(request.optimizer, request.weight, value)
        else:
            self.service.assign(
                request.variable,
                value,
                optimizer=request.optimizer or None,
                slot=request.slot or None,
            )
        return pb.AssignResponse()

    @_domain_errors
    def SetIterations(self, request, context):
        self._check_view(request.view)
        self.service.set_iterations(request.optimizer, request.iterations)
        return self._optimizer_state(request.optimizer)

    @_domain_errors
    def AddSlot(self, request, context):
        self._check_view(request.view)
        self.service.add_slot(
            request.optimizer,
            request.variable,
            request.slot,
            request.initializer or "zeros",
        )
        return self._optimizer_state(request.optimizer)

    @_domain_errors
    def AddWeight(self, request, context):
        self._check_view(request.view)
        value = self.service.add_weight(
            request.optimizer,
            request.name,
            tuple(request.shape),
            codec.numpy_dtype(request.dtype),
            request.initializer or "zeros",
        )
        return pb.AddWeightResponse(value=codec.encode(value))

    @_domain_errors
    def Checkpoint(self, request, context):
        info = self.service.checkpoint()
        return pb.CheckpointResponse(
            path=str(info.path),
            sequence=info.sequence,
            bytes=info.nbytes,
            seconds=info.seconds,
        )


def _tensor_chunks(value: np.ndarray) -> Iterator[pb.TensorChunk]:
    """A tensor as a server stream: its header, then its bytes in chunks."""
    yield pb.TensorChunk(header=codec.header(value))
    for piece in streams.chunks([value]):
        yield pb.TensorChunk(data=bytes(piece))


def _parsed(chunks):
    """Stream messages, a malformed one raising ``CodecError``."""
    for chunk in chunks:
        if isinstance(chunk, streams.Malformed):
            raise codec.CodecError(chunk.error)
        yield chunk


def _gradient(
    variable: str,
    values: np.ndarray,
    indices: np.ndarray | None,
    finite: bool = False,
):
    if indices is None:
        return Gradient.dense(variable, values, finite)
    return Gradient.sparse(variable, indices, values, finite)


def _push_id(request: Any) -> PushId | None:
    if not request.HasField("push_id"):
        return None
    push_id = request.push_id
    return PushId(push_id.client, push_id.sequence, push_id.attempt)


def _initializer(text: str) -> str | dict:
    if not text:
        return "zeros"
    if text.lstrip().startswith("{"):
        return _json_object(text, "initializer_json")
    return text


def _json_object(text: str, what: str) -> dict:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise codec.CodecError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise codec.CodecError(f"{what} must be a JSON object")
    return value


def _variable_info(record: VariableRecord, created: bool = False) -> pb.VariableInfo:
    return pb.VariableInfo(
        name=record.name,
        shape=record.shape,
        dtype=codec.dtype_code(record.dtype),
        global_shape=record.global_shape,
        row_offset=record.row_offset,
        created=created,
    )


@functools.cache
def server_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("adamax-ps")
    except PackageNotFoundError:
        return "unknown"


class GrpcServer:
    """A running gRPC server with our service, health and reflection."""

    def __init__(self, server: grpc.Server, port: int, servicer, health_servicer):
        self.server = server
        self.port = port
        self.servicer = servicer
        self.health = health_servicer

    def set_ready(self, ready: bool) -> None:
        """Serve SERVING (or NOT_SERVING) on the health service."""
        self.servicer.ready = ready
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def stop(self, grace: float | None) -> None:
        self.set_ready(False)
        self.server.stop(grace).wait()


class _ChunkParsing:
    """Registers the generated handlers with our deserializers: streamed
    chunks' bytes parsed without protobuf (``streams.chunk_parser``: one copy
    fewer per chunk), and a message that does not parse handed to the handler
    as ``streams.Malformed`` (answered INVALID_ARGUMENT, not INTERNAL)."""

    STREAMS: ClassVar[dict] = {
        "ApplyGradientsStream": pb.ApplyChunk,
        "Assign": pb.AssignChunk,
        "CreateVariablesStream": pb.CreateVariablesChunk,
    }

    def __init__(self, server: grpc.Server) -> None:
        self.server = server

    def add_generic_rpc_handlers(self, handlers) -> None:
        """Superseded by ``add_registered_method_handlers`` below."""

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        for name, handler in list(handlers.items()):
            options = {"response_serializer": handler.response_serializer}
            if name in self.STREAMS:
                handlers[name] = grpc.stream_unary_rpc_method_handler(
                    handler.stream_unary,
                    request_deserializer=streams.chunk_parser(self.STREAMS[name]),
                    **options,
                )
                continue
            options["request_deserializer"] = streams.safe_parser(
                handler.request_deserializer
            )
            if handler.response_streaming:
                handlers[name] = grpc.unary_stream_rpc_method_handler(
                    handler.unary_stream, **options
                )
            else:
                handlers[name] = grpc.unary_unary_rpc_method_handler(
                    handler.unary_unary, **options
                )
        generic = grpc.method_handlers_generic_handler(service, handlers)
        self.server.add_generic_rpc_handlers((generic,))
        self.server.add_registered_method_handlers(service, handlers)


def create_grpc_server(
    service: ParameterService,
    address: str,
    *,
    max_request_bytes: int = 1 << 31,
    workers: int = 32,
    interceptors: tuple = (),
    credentials: grpc.ServerCredentials | None = None,
    buffers: streams.BufferPool | None = None,
) -> GrpcServer:
    """Build and start a gRPC server on ``address`` ("host:0" picks a port).

    Unary messages are limited to 64 MB (larger pushes stream in chunks);
    streamed requests to ``max_request_bytes``, received into ``buffers``.
    """
    sync = service.settings.sync
    workers = max(workers, 2 * (sync.replicas if sync else 0) + 8)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", MESSAGE_LIMIT),
            ("grpc.max_send_message_length", MESSAGE_LIMIT),
            ("grpc.so_reuseport", 0),
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", READ_AHEAD),
        ],
    )
    servicer = ParameterServerServicer(service, max_request_bytes, buffers)
    pb_grpc.add_ParameterServerServicer_to_server(servicer, _ChunkParsing(server))
    health_servicer = health.HealthServicer(
        experimental_non_blocking=True,
        experimental_thread_pool=ThreadPoolExecutor(max_workers=2),
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {address} (port in use?)")
    server.start()
    result = GrpcServer(server, port, servicer, health_servicer)
    result.set_ready(False)
    return result
