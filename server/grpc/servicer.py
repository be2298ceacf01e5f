"""The ``adamax_ps.v1.ParameterServer`` RPCs: each decodes its request, calls
one service method, and encodes the answer.

Every handler's errors are mapped to a status once (``handlers``). Streamed
requests are received by ``receive.StreamReceiver``, and
a push's values are searched for NaN and Inf as they arrive (the service's
scan, so the search overlaps the transfer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np

from adamax_ps.proto import codec, streams
from adamax_ps.proto.v1 import parameter_server_pb2 as pb
from adamax_ps.proto.v1 import parameter_server_pb2_grpc as pb_grpc
from adamax_ps.proto.wire import INLINE_READ_BYTES, MESSAGE_LIMIT
from adamax_ps.server.errors import (
    InvalidArgumentError,
)
from adamax_ps.server.grpc import messages
from adamax_ps.server.grpc.handlers import inline, server_streaming, unary
from adamax_ps.server.grpc.receive import StreamReceiver
from adamax_ps.server.grpc.rescale import RescaleRpcs
from adamax_ps.server.grpc.tables import TableRpcs
from adamax_ps.server.service import ParameterService


class ParameterServerServicer(TableRpcs, RescaleRpcs, pb_grpc.ParameterServerServicer):
    """Translates the ``adamax_ps.v1.ParameterServer`` RPCs to the service."""

    def __init__(
        self,
        service: ParameterService,
        max_request_bytes: int,
        buffers: streams.BufferPool | None = None,
        version: str = "unknown",
    ) -> None:
        self.service = service
        self.version = version
        self.receiver = StreamReceiver(service.inflight, max_request_bytes, buffers)
        self.ready = False

    @unary
    def GetServerInfo(self, request, context):
        settings = self.service.settings
        sync = settings.sync
        return pb.ServerInfo(
            version=self.version,
            server_index=settings.server_index,
            num_servers=settings.num_servers,
            shards=self.service.store.num_shards,
            replicas=sync.replicas if sync else 0,
            replicas_to_aggregate=sync.needed if sync else 0,
            ready=self.ready,
            max_message_bytes=MESSAGE_LIMIT,
            max_request_rows=settings.max_request_rows,
            rescale_state=self.service.rescale.standing.state,
            addresses=self.service.rescale.standing.addresses,
            http_addresses=self.service.rescale.standing.http_addresses,
        )

    # Variables and optimizers -----------------------------------------------------

    @unary
    def CreateVariables(self, request, context):
        self.service.check_view(messages.view(request.view))
        initials = [
            codec.decode(spec.initial_value) if spec.HasField("initial_value") else None
            for spec in request.variables
        ]
        return self._create(request, initials)

    @unary
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

    def _create(self, request, initials: list) -> pb.CreateVariablesResponse:
        created = self.service.create_variables(
            messages.variable_specs(request, initials)
        )
        return pb.CreateVariablesResponse(
            variables=[messages.variable_info(*pair) for pair in created]
        )

    @unary
    def ListVariables(self, request, context):
        records = self.service.variables()
        return pb.ListVariablesResponse(
            variables=[messages.variable_info(r) for r in records]
        )

    @unary
    def CreateOptimizer(self, request, context):
        self.service.check_view(messages.view(request.view))
        config = messages.json_object(request.config_json, "config_json")
        state, created = self.service.create_optimizer(config)
        return self._optimizer_state(state.name, created)

    @unary
    def GetOptimizer(self, request, context):
        return self._optimizer_state(request.optimizer)

    @unary
    def CreateIterations(self, request, context):
        self.service.iterations(request.optimizer)
        return self._optimizer_state(request.optimizer)

    def _optimizer_state(self, name: str, created: bool = False) -> pb.OptimizerState:
        return messages.optimizer_state(self.service.describe_optimizer(name), created)

    @unary
    def SetIterations(self, request, context):
        self.service.check_view(messages.view(request.view))
        self.service.set_iterations(request.optimizer, request.iterations)
        return self._optimizer_state(request.optimizer)

    @unary
    def AddSlot(self, request, context):
        self.service.check_view(messages.view(request.view))
        self.service.add_slot(
            request.optimizer,
            request.variable,
            request.slot,
            request.initializer or "zeros",
        )
        return self._optimizer_state(request.optimizer)

    @unary
    def AddWeight(self, request, context):
        self.service.check_view(messages.view(request.view))
        value = self.service.add_weight(
            request.optimizer,
            request.name,
            tuple(request.shape),
            codec.numpy_dtype(request.dtype),
            request.initializer or "zeros",
        )
        return pb.AddWeightResponse(value=codec.encode(value))

    # Pushes -----------------------------------------------------------------------

    @unary
    def ReserveStep(self, request, context):
        self.service.check_view(messages.view(request.view))
        step = self.service.reserve_step(
            request.optimizer, list(request.variables), messages.push_id(request)
        )
        return pb.ReserveStepResponse(step=step)

    @unary
    def ApplyGradients(self, request, context):
        self.service.check_view(messages.view(request.view))
        gradients = []
        nbytes = 0
        for g in request.gradients:
            values = codec.decode(g.values)
            indices = codec.decode(g.indices) if g.HasField("indices") else None
            nbytes += values.nbytes + (indices.nbytes if indices is not None else 0)
            gradients.append(messages.gradient(g.variable, values, indices))
        self.service.metrics.received_bytes.labels("grpc").inc(nbytes)
        return self._apply(request, gradients)

    @unary
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
        scan = self.service.stream_scan(assembler.buffer, assembler.layout, values_at)
        scan.advance(assembler.filled)
        for chunk in chunks:
            assembler.feed(chunk.data)
            scan.advance(assembler.filled)
        received = assembler.arrays()
        self.service.metrics.received_bytes.labels("grpc").inc(
            sum(a.nbytes for a in received)
        )
        gradients = [
            messages.gradient(
                g.variable,
                received[k],
                received[k - 1] if g.HasField("indices") else None,
                scan.finite(k),
            )
            for g, k in zip(request.gradients, values_at, strict=True)
        ]
        return self._apply(request, gradients)

    def _apply(self, request: pb.ApplyRequest, gradients: list) -> pb.ApplyResponse:
        for read in request.reads:
            if read.optimizer or read.slot or read.weight:
                raise InvalidArgumentError(
                    "a push reads variables (or their rows), not slots or weights"
                )
            if read.wire_dtype:  # checked before the push applies
                wire_dtype(read.wire_dtype, self.service.variable(read.variable).dtype)
        with self.service.apply_and_read(
            request.optimizer,
            gradients,
            messages.push_id(request),
            reads=[
                (r.variable, codec.decode(r.rows) if r.HasField("rows") else None)
                for r in request.reads
            ],
            read_limit=INLINE_READ_BYTES,
            step=request.step if request.HasField("step") else None,
            aggregate=not request.aggregated,
            call_variables=list(request.call_variables) or None,
            clipped=request.clipped,
            replica=request.replica if request.HasField("replica") else None,
            reserve_next=request.reserve_next,
            step_reserved_ahead=request.step_reserved_ahead,
        ) as (result, values):
            return pb.ApplyResponse(
                step=result.step,
                iterations=result.iterations,
                values=[
                    codec.encode(on_the_wire(v, r.wire_dtype))
                    for v, r in zip(values, request.reads, strict=True)
                ],
                next_step=result.next_step,
            )

    # Values -----------------------------------------------------------------------

    @server_streaming
    def Read(self, request, context):
        with self._reading(request) as value:
            yield from messages.tensor_chunks(value)

    @unary
    def ReadInline(self, request, context):
        with self._reading(request) as value:
            return inline(value)

    @contextmanager
    def _reading(self, request: pb.ReadRequest) -> Iterator[np.ndarray]:
        """What a ``ReadRequest`` names: an optimizer's weight, or a variable,
        one of its slots, or their rows (held in the in-flight budget)."""
        if request.HasField("view"):  # rows of the slice the reader believes
            self.service.check_view(messages.view(request.view))
        if request.weight:
            yield self.service.weight(request.optimizer, request.weight)
            return
        rows = codec.decode(request.rows) if request.HasField("rows") else None
        with self.service.reading(
            request.variable,
            optimizer=request.optimizer or None,
            slot=request.slot or None,
            rows=rows,
        ) as value:
            yield on_the_wire(value, request.wire_dtype)

    @unary
    def Assign(self, request_iterator, context):
        with ExitStack() as held:
            request, assembler, chunks = self._open_stream(
                request_iterator,
                held,
                "assignment",
                lambda r: [r.value, r.keys] if r.HasField("keys") else [r.value],
            )
            for chunk in chunks:
                assembler.feed(chunk.data)
            (value, *keys) = assembler.arrays()
            if keys:
                self.service.assign_keys(request.variable, keys[0], value)
            elif request.weight:
                self.service.assign_weight(request.optimizer, request.weight, value)
            else:
                self.service.assign(
                    request.variable,
                    value,
                    optimizer=request.optimizer or None,
                    slot=request.slot or None,
                )
            return pb.AssignResponse()

    def _open_stream(
        self,
        request_iterator: Iterator,
        held: ExitStack,
        what: str,
        declared: Callable[[Any], list[pb.Tensor]],
    ) -> tuple[Any, streams.StreamAssembler, Iterator]:
        """A streamed request's header (its view checked first), an assembler
        for the tensors ``declared`` names in it, and the chunks to come."""
        request, first, chunks = self.receiver.header(request_iterator, what)
        self.service.check_view(messages.view(request.view))
        return request, self.receiver.assembler(declared(request), held, first), chunks

    @unary
    def CreateTable(self, request, context):
        return self._create_table(request)

    @unary
    def ListTables(self, request, context):
        return self._list_tables()

    @unary
    def DescribeTable(self, request, context):
        return self._describe_table(request)

    @server_streaming
    def ExportTable(self, request, context):
        yield from self._export_table(request)

    @unary
    def Checkpoint(self, request, context):
        info = self.service.checkpoint()
        return pb.CheckpointResponse(
            path=str(info.path),
            sequence=info.sequence,
            bytes=info.nbytes,
            seconds=info.seconds,
        )


def wire_dtype(code: int, dtype: np.dtype) -> np.dtype | None:
    """The dtype a read's values travel as (``ReadRequest.wire_dtype``:
    float16 or bfloat16, for a float32 variable), or None: as they are."""
    if code == pb.DTYPE_UNSPECIFIED:
        return None
    wanted = codec.numpy_dtype(code)
    if wanted.name not in codec.REDUCED or dtype != np.float32:
        raise InvalidArgumentError(
            "a read's wire dtype is float16 or bfloat16, of a float32 variable. "
            f"Received {wanted.name} for {dtype}"
        )
    return wanted


def on_the_wire(value: np.ndarray, code: int) -> np.ndarray:
    wanted = wire_dtype(code, value.dtype)
    return value if wanted is None else value.astype(wanted)
