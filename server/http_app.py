"""The HTTP face of a ParameterService (FastAPI, served by uvicorn).

REST inspection of what the server holds (optimizers, variables, statistics,
values as JSON or ``.npy``, top rows, history), writes for workers without gRPC
(tensors as raw bytes in ``application/x-adamax-ps`` framed bodies, never
number lists), ``/healthz``, ``/readyz``, ``/metrics``, and the dashboard at
``/``. Endpoints only decode, call the service, and encode. Every error is a
JSON body ``{"error", "message"}`` with the status of its class. The models,
and what the OpenAPI schema states of each route, are in ``http_models``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParameter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from adamax_ps.proto import codec, streams
from adamax_ps.proto.wire import VIEW_HEADER
from adamax_ps.server.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ParameterServerError,
    ServerBusyError,
)
from adamax_ps.server.gradients import Gradient
from adamax_ps.server.http_models import (
    BODY,
    FRAMED_BODY,
    READ,
    ROWS_PATTERN,
    SLOT_PARAMETER,
    TOP_K_MAX,
    WRITE,
    AddSlotRequest,
    AddWeightRequest,
    ApplyResponse,
    CheckpointResponse,
    CreateOptimizerRequest,
    HistoryResponse,
    IterationsRequest,
    OptimizerResponse,
    ReserveStepRequest,
    ServerResponse,
    StatusResponse,
    StepResponse,
    TopResponse,
    ValueResponse,
    VariableResponse,
    errors,
    links,
    standard_bounds,
)
from adamax_ps.server.inspection import Inspector
from adamax_ps.server.ledger import PushId
from adamax_ps.server.security import TokenCheck
from adamax_ps.server.service import ParameterService
from adamax_ps.server.validation import MAX_NAME

STATIC = Path(__file__).resolve().parent / "static"

DEFAULT_JSON_LIMIT = 100_000
INLINE_BYTES = 64 << 10  # pushes this small are applied on the event loop
WAITING_BODIES = 64  # requests that may wait at once for room in the budget

VariableName = Annotated[str, PathParameter(min_length=1, max_length=MAX_NAME)]
OptimizerPath = Annotated[str, PathParameter(min_length=1)]
WeightPath = Annotated[str, PathParameter(min_length=1, max_length=MAX_NAME)]


async def slot_of(
    optimizer: Annotated[
        str | None, Query(include_in_schema=False, min_length=1)
    ] = None,
    slot: Annotated[
        str | None, Query(include_in_schema=False, min_length=1, max_length=MAX_NAME)
    ] = None,
) -> dict[str, str | None]:
    """The ``slot_of`` query object (``SLOT_PARAMETER``): an optimizer's slot,
    both names or neither."""
    if (optimizer is None) != (slot is None):
        missing = "slot" if slot is None else "optimizer"
        raise RequestValidationError(
            [
                {
                    "loc": ("query", missing),
                    "msg": "optimizer and slot come together (a slot of an optimizer)",
                    "type": "missing",
                }
            ]
        )
    return {"optimizer": optimizer, "slot": slot}


SlotOf = Annotated[dict[str, str | None], Depends(slot_of)]

# Link parameters: where the linked operation finds its path's names.
NAMED = {"name": "$response.body#/name"}
FIRST_NAMED = {"name": "$response.body#/0/name"}
IN_PATH = {"name": "$request.path.name"}
WEIGHT_ADDED = {"name": "$response.body#/name", "weight": "$request.body#/name"}
WEIGHT_IN_PATH = {"name": "$request.path.name", "weight": "$request.path.weight"}
VARIABLE_LINKS = {  # from a list of variables to the first one
    op: FIRST_NAMED for op in ("variable", "value", "rows", "top", "assign")
}


def create_app(
    service: ParameterService,
    ready: Callable[[], bool],
    *,
    tokens: TokenCheck | None = None,
    inspector: Inspector | None = None,
    max_request_bytes: int = 1 << 31,
    json_limit: int = DEFAULT_JSON_LIMIT,
    version: str = "unknown",
    buffers: streams.BufferPool | None = None,
) -> FastAPI:
    """The app; ``ready()`` says whether the server restored its checkpoint and
    warmed its kernels. Large bodies are received into ``buffers``."""
    tokens = tokens or TokenCheck(None)
    inspector = inspector or Inspector(service)
    app = FastAPI(
        title="adamax-ps",
        version=version,
        docs_url="/docs",
        redoc_url=None,
        description="Inspection and pushes of an Adamax parameter server.",
        generate_unique_id_function=lambda route: route.name,  # operationIds
    )
    app.state.service = service
    app.state.inspector = inspector
    app.openapi = _exact_openapi(app)
    app.add_middleware(_EndOfRequest)
    settings = service.settings

    # Dependencies are async: they never block, and a sync one would cost a
    # thread-pool hop on every request.
    async def read_access(request: Request) -> None:
        tokens.check(request.headers.get("authorization"), mutating=False)

    async def write_access(request: Request) -> None:
        tokens.check(request.headers.get("authorization"), mutating=True)
        view = request.headers.get(VIEW_HEADER)
        if view is None:
            if settings.num_servers == 1:
                return
            raise FailedPreconditionError(
                f"this server is {settings.server_index} of {settings.num_servers}: "
                f"send the {VIEW_HEADER} header (index/servers)"
            )
        try:
            index, count = (int(x) for x in view.split("/"))
        except ValueError:
            raise InvalidArgumentError(
                f"{VIEW_HEADER} is 'index/servers'. Received: {view!r}"
            ) from None
        service.check_view(index, count)

    async def admin_access(request: Request) -> None:
        tokens.check(request.headers.get("authorization"), mutating=True)

    reads = [Depends(read_access)]
    writes = [Depends(write_access)]
    admin = [Depends(admin_access)]

    buffers = buffers or streams.BufferPool()

    inflight = service.inflight
    waits = anyio.CapacityLimiter(WAITING_BODIES)

    async def hold(request: Request, nbytes: int, wait: bool) -> None:
        """Count ``nbytes`` more of this request in the in-flight budget (given
        back when the request ends, by ``_ReleaseInflight``). ``wait``: for
        room, on a thread of its own (never one a handler needs)."""
        if not inflight.try_acquire(nbytes):
            if not wait:
                raise ServerBusyError(
                    "this server is busy: the requests in flight hold its budget "
                    "(--max-inflight-bytes); retry"
                )
            await anyio.to_thread.run_sync(
                inflight.acquire, nbytes, "the request's body", limiter=waits
            )
        request.state.inflight_bytes = _held(request) + nbytes
        _at_end(request, lambda: inflight.release(nbytes))

    def reading(request: Request, name: str, **what: Any) -> np.ndarray:
        """``service.reading``, held until the answer is sent (the copy's
        bytes count in the in-flight budget until then)."""
        stack = ExitStack()
        array = stack.enter_context(service.reading(name, **what))
        _at_end(request, stack.close)
        return array

    async def body(request: Request) -> memoryview:
        """The request body, refused beyond the size limit before it is read.

        Its bytes count in the server's in-flight budget first (the declared
        length, or a growing share as a body without one arrives). With a
        declared length it is read into one buffer of that length, from
        ``buffers`` when large: a fresh buffer above glibc's mmap threshold is
        a fresh mapping whose pages every push would fault in again.
        """
        length = request.headers.get("content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        if declared is not None and declared > max_request_bytes:
            raise TooLargeError(
                f"the request has {length} bytes, over this server's limit of "
                f"{max_request_bytes} (--max-request-bytes)"
            )
        if declared:
            await hold(request, declared, wait=True)
        data: np.ndarray | bytearray = (
            buffers.take(declared) if declared else bytearray()
        )
        filled = 0
        async for chunk in request.stream():
            end = filled + len(chunk)
            if end > max_request_bytes:
                raise TooLargeError(
                    f"the request exceeds this server's limit of {max_request_bytes} "
                    "bytes (--max-request-bytes)"
                )
            if end > _held(request):  # no length declared (or more than it)
                await hold(request, max(end, _held(request)), wait=False)
            if isinstance(data, np.ndarray) and end <= len(data):
                data[filled:end] = np.frombuffer(chunk, np.uint8)
            else:  # no length declared (or more than it): a growing bytearray
                if isinstance(data, np.ndarray):
                    data = bytearray(data[:filled])
                data += chunk
            filled = end
        service.metrics.received_bytes.labels("http").inc(filled)
        return memoryview(data)[:filled]

    # Errors ------------------------------------------------------------------------

    @app.exception_handler(ParameterServerError)
    def domain_error(request: Request, e: ParameterServerError) -> JSONResponse:
        response = _error(e.http_status, type(e).__name__, str(e))
        if isinstance(e, ServerBusyError):
            response.headers["retry-after"] = "1"
        return response

    @app.exception_handler(codec.CodecError)
    def codec_error(request: Request, e: codec.CodecError) -> JSONResponse:
        return _error(400, "InvalidArgumentError", str(e))

    @app.exception_handler(TooLargeError)
    def too_large(request: Request, e: TooLargeError) -> JSONResponse:
        return _error(413, "RequestTooLarge", str(e))

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in item['loc'])}: {item['msg']}"
            for item in e.errors()
        )
        return _error(422, "InvalidRequest", problems)

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        response = _error(e.status_code, "HTTPError", str(e.detail))
        response.headers.update(e.headers or {})
        if e.status_code == 405:
            response.headers["allow"] = _allowed(app, request)
        return response

    # Probes and metrics ------------------------------------------------------------

    @app.get("/healthz", response_model=StatusResponse, tags=["probes"])
    def healthz() -> StatusResponse:
        """The process is up."""
        return StatusResponse(status="ok")

    @app.get(
        "/readyz",
        response_model=StatusResponse,
        response_model_exclude_none=True,
        tags=["probes"],
        responses={
            503: {
                "model": StatusResponse,
                "description": "not ready yet, or no longer accepting changes",
            }
        },
    )
    def readyz():
        """Ready once restored from the checkpoint and the kernels are warm, and
        while it accepts changes (not after its write-ahead log failed)."""
        stopped = service.writes_stopped
        if stopped is not None:
            return JSONResponse(
                {"status": "writes-stopped", "reason": stopped}, status_code=503
            )
        if ready():
            return StatusResponse(status="ready")
        return JSONResponse({"status": "starting"}, status_code=503)

    @app.get(
        "/metrics",
        tags=["probes"],
        response_class=Response,
        dependencies=reads,  # with --auth-reads, scrapers send the token
        responses={
            200: {
                "content": {CONTENT_TYPE_LATEST: {}},
                "description": "Prometheus text format",
            }
        },
    )
    def metrics() -> Response:
        """Prometheus metrics."""
        return Response(
            generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    # Inspection ------------------------------------------------------------------

    most_rows = settings.max_request_rows

    @app.get(
        "/api/v1/server",
        response_model=ServerResponse,
        dependencies=reads,
        responses=errors(401),
        tags=["inspection"],
    )
    def server_info() -> dict:
        """The server: its place in the cluster, shards, memory, checkpoint status."""
        return {**inspector.server(), "version": version, "ready": ready()}

    @app.get(
        "/api/v1/optimizers",
        response_model=list[OptimizerResponse],
        dependencies=reads,
        responses={
            **errors(401),
            200: links(
                optimizer=FIRST_NAMED,
                apply=FIRST_NAMED,
                add_slot=FIRST_NAMED,
                add_weight=FIRST_NAMED,
                set_iterations=FIRST_NAMED,
                reserve_step=FIRST_NAMED,
            ),
        },
        tags=["inspection"],
    )
    def optimizers() -> list[dict]:
        """Every optimizer: Keras config, iterations, pushes, weights."""
        return inspector.optimizers()

    @app.get(
        "/api/v1/variables",
        response_model=list[VariableResponse],
        dependencies=reads,
        responses={**errors(*READ), 200: links(**VARIABLE_LINKS)},
        tags=["inspection"],
    )
    def variables(stats: bool = True) -> list[dict]:
        """Every variable: shape, dtype, placement, bytes, statistics of w and slots."""
        return inspector.variables(stats)

    @app.get(
        "/api/v1/variables/{name:path}/value",
        dependencies=reads,
        tags=["inspection"],
        response_model=ValueResponse,
        responses={
            **errors(*READ, 400, 404, 413, 503),
            200: {
                "content": {"application/json": {}, codec.NPY: {}},
                "description": "JSON (format=json, limited size) or .npy bytes",
            },
        },
        openapi_extra=SLOT_PARAMETER,
    )
    def value(
        name: VariableName,
        request: Request,
        slot: SlotOf,
        rows: Annotated[
            str | None,
            Query(pattern=ROWS_PATTERN, description="row numbers, e.g. 3,17"),
        ] = None,
        format: Literal["json", "npy"] = "json",
    ):
        """A variable's value, or a slot's, or selected rows (``rows=3,17``)."""
        picked = _row_numbers(rows) if rows is not None else None
        if format == "json":  # refused before anything is copied
            record = service.variable(name)
            count = record.size if picked is None else len(picked) * record.row_size
            if count > json_limit:
                raise TooLargeError(
                    f"the answer would hold {count} values of {name!r}; JSON "
                    f"answers are limited to {json_limit} (--json-limit): ask "
                    "format=npy, or select fewer rows"
                )
        array = reading(request, name, **slot, rows=picked)
        if format == "npy":
            return _npy(array)
        return {
            "name": name,
            "shape": list(array.shape),
            "dtype": array.dtype.name,
            "rows": None if picked is None else picked.tolist(),
            "values": array.tolist(),
        }

    @app.get(
        "/api/v1/variables/{name:path}/top",
        response_model=TopResponse,
        dependencies=reads,
        responses=errors(*READ, 404),
        tags=["inspection"],
    )
    def top(
        name: VariableName,
        optimizer: Annotated[str, Query(min_length=1)],
        # Query() as the default: k's bound depends on this server's settings.
        k: int = Query(10, ge=1, le=min(TOP_K_MAX, most_rows)),
        by: Literal["update", "m"] = "update",
    ) -> dict:
        """The k rows with the largest ``||m / (v + eps)||`` (by=update) or ||m||."""
        found = inspector.top_rows(name, optimizer, k, by)
        return {
            "variable": name,
            "optimizer": optimizer,
            "by": by,
            "rows": [
                {
                    "row": r.row,
                    "score": r.score,
                    "values": None
                    if r.values is None
                    else r.values.reshape(-1).tolist(),
                }
                for r in found
            ],
        }

    @app.post(
        "/api/v1/variables/{name:path}/rows",
        dependencies=reads,
        tags=["inspection"],
        openapi_extra={**FRAMED_BODY, **SLOT_PARAMETER},
        responses={
            **errors(*READ, *BODY, 404),
            200: {"content": {codec.NPY: {}}, "description": ".npy bytes of the rows"},
        },
    )
    async def rows(
        name: VariableName,
        request: Request,
        slot: SlotOf,
    ) -> Response:
        """Selected rows of a variable or slot, for lists too long for a URL.
        Header: ``{"rows": {shape, dtype}}``; the int32/int64 row numbers follow."""
        header, data = codec.unframe(await body(request))
        (picked,) = codec.split_framed([header.get("rows")], data, max_request_bytes)
        array = await run_in_threadpool(
            lambda: reading(request, name, **slot, rows=picked)
        )
        return _npy(array)

    @app.get(
        "/api/v1/history",
        response_model=HistoryResponse,
        dependencies=reads,
        responses=errors(401),
        tags=["inspection"],
    )
    def history() -> dict:
        """Sampled counters and norms (sampling runs while this is being read)."""
        return {"interval_seconds": inspector.interval, "samples": inspector.history()}

    @app.get(
        "/api/v1/optimizers/{name:path}/weights/{weight}",
        dependencies=reads,
        tags=["inspection"],
        responses={
            **errors(*READ, 404),
            200: {"content": {codec.NPY: {}}, "description": ".npy bytes"},
        },
    )
    def read_weight(name: OptimizerPath, weight: WeightPath) -> Response:
        """An optimizer's extra weight (add_weight), as .npy."""
        return _npy(service.weight(name, weight))

    # Writes ---------------------------------------------------------------------

    @app.post(
        "/api/v1/optimizers",
        response_model=OptimizerResponse,
        dependencies=writes,
        responses={
            **errors(*WRITE),
            200: links(
                optimizer=NAMED,
                set_iterations=NAMED,
                add_weight=NAMED,
                reserve_step=NAMED,
            ),
        },
        tags=["writes"],
    )
    def create_optimizer(request: CreateOptimizerRequest) -> dict:
        """Create an optimizer from its Keras config, or attach to the same one."""
        state, created = service.create_optimizer(request.config.to_keras())
        return {**inspector.optimizer(state.name), "created": created}

    @app.post(
        "/api/v1/variables",
        response_model=list[VariableResponse],
        dependencies=writes,
        responses={
            **errors(*WRITE, *BODY, 507),
            200: links(**VARIABLE_LINKS),
        },
        tags=["writes"],
        openapi_extra=FRAMED_BODY,
    )
    async def create_variables(request: Request) -> list[dict]:
        """Create or attach to variables. Header: ``{"variables": [{name,
        global_shape, dtype, row_offset, rows, initializer, seed, initial_value?:
        {shape, dtype}}]}``; initial values' bytes follow."""
        header, data = codec.unframe(await body(request))
        specs = _list(header, "variables")
        if not all(isinstance(spec, dict) for spec in specs):
            raise InvalidArgumentError("each variable spec is a JSON object")
        described = [s["initial_value"] for s in specs if s.get("initial_value")]
        arrays = iter(codec.split_framed(described, data, max_request_bytes))
        args = [
            _variable_args(s, next(arrays) if s.get("initial_value") else None)
            for s in specs
        ]

        def create() -> list[dict]:
            return [
                {**inspector.variable(record.name, stats=False), "created": created}
                for record, created in service.create_variables(args)
            ]

        return await run_in_threadpool(create)

    @app.post(
        "/api/v1/optimizers/{name:path}/apply",
        response_model=ApplyResponse,
        dependencies=writes,
        responses={
            **errors(*WRITE, *BODY, 404, 504, 507),
            200: links(optimizer=IN_PATH),
        },
        tags=["writes"],
        openapi_extra=FRAMED_BODY,
    )
    async def apply(name: OptimizerPath, request: Request) -> dict:
        """Apply a push. Header: ``{"gradients": [{variable, values: {shape,
        dtype}, indices?: {shape, dtype}}], push_id?, step?, aggregated?,
        call_variables?, clipped?}``; for each gradient its indices' bytes (if
        sparse) then its values' bytes follow."""
        header, data = codec.unframe(await body(request))
        items = _list(header, "gradients")
        described = []
        for g in items:
            if not isinstance(g, dict):
                raise InvalidArgumentError("each gradient is a JSON object")
            if g.get("indices") is not None:
                described.append(g["indices"])
            described.append(g.get("values"))
        arrays = iter(codec.split_framed(described, data, max_request_bytes))
        gradients = []
        for g in items:
            indices = next(arrays) if g.get("indices") is not None else None
            values = next(arrays)
            variable = _string(g.get("variable"), "variable")
            gradients.append(
                Gradient.dense(variable, values)
                if indices is None
                else Gradient.sparse(variable, indices, values)
            )
        apply = functools.partial(
            service.apply,
            name,
            gradients,
            _push_id(header.get("push_id")),
            step=_optional_int(header.get("step"), "step"),
            aggregate=not _flag(header, "aggregated"),
            call_variables=_strings(header.get("call_variables")) or None,
            clipped=_flag(header, "clipped"),
        )
        if service.sync is None and len(data) <= INLINE_BYTES:
            result = apply()  # short and never waits: spare the thread-pool hop
        else:
            result = await run_in_threadpool(apply)
        return {"step": result.step, "iterations": result.iterations}

    @app.post(
        "/api/v1/optimizers/{name:path}/reserve-step",
        response_model=StepResponse,
        dependencies=writes,
        responses={**errors(*WRITE, 404), 200: links(optimizer=IN_PATH)},
        tags=["writes"],
    )
    def reserve_step(name: OptimizerPath, request: ReserveStepRequest) -> dict:
        """Coordinator (server 0): take the step of one apply_gradients call."""
        push_id = None
        if request.push_id is not None:
            push_id = PushId(
                request.push_id.client,
                request.push_id.sequence,
                request.push_id.attempt,
            )
        return {"step": service.reserve_step(name, request.variables, push_id)}

    @app.put(
        "/api/v1/optimizers/{name:path}/iterations",
        response_model=OptimizerResponse,
        dependencies=writes,
        responses={**errors(*WRITE, 404), 200: links(optimizer=NAMED)},
        tags=["writes"],
    )
    def set_iterations(name: OptimizerPath, request: IterationsRequest) -> dict:
        service.set_iterations(name, request.iterations)
        return inspector.optimizer(name)

    @app.post(
        "/api/v1/optimizers/{name:path}/iterations",
        response_model=OptimizerResponse,
        dependencies=admin,
        responses={**errors(*WRITE, 404), 200: links(optimizer=NAMED)},
        tags=["writes"],
    )
    def create_iterations(name: OptimizerPath) -> dict:
        """Read ``iterations`` as Keras does, which creates it (it then heads
        ``weights``): a change, logged like any other. Idempotent."""
        service.iterations(name)
        return inspector.optimizer(name)

    @app.post(
        "/api/v1/optimizers/{name:path}/slots",
        response_model=OptimizerResponse,
        dependencies=writes,
        responses={
            **errors(*WRITE, 404, 507),
            200: links(optimizer=NAMED, variable={"name": "$request.body#/variable"}),
        },
        tags=["writes"],
    )
    def add_slot(name: OptimizerPath, request: AddSlotRequest) -> dict:
        """Keras add_slot: arrays where the variable lives, order at server 0."""
        service.add_slot(name, request.variable, request.slot, request.initializer)
        return inspector.optimizer(name)

    @app.post(
        "/api/v1/optimizers/{name:path}/weights",
        response_model=OptimizerResponse,
        dependencies=writes,
        responses={
            **errors(*WRITE, 404, 507),
            200: links(
                optimizer=NAMED, read_weight=WEIGHT_ADDED, assign_weight=WEIGHT_ADDED
            ),
        },
        tags=["writes"],
    )
    def add_weight(name: OptimizerPath, request: AddWeightRequest) -> dict:
        """Keras add_weight on the optimizer."""
        service.add_weight(
            name, request.name, tuple(request.shape), request.dtype, request.initializer
        )
        return inspector.optimizer(name)

    @app.put(
        "/api/v1/variables/{name:path}/value",
        status_code=204,
        dependencies=writes,
        responses={
            **errors(*WRITE, *BODY, 404),
            204: links(value=IN_PATH, variable=IN_PATH),
        },
        tags=["writes"],
        openapi_extra={**FRAMED_BODY, **SLOT_PARAMETER},
    )
    async def assign(
        name: VariableName,
        request: Request,
        slot: SlotOf,
    ) -> Response:
        """Replace a variable's value or a slot's. Header: {"value": {shape, dtype}}."""
        header, data = codec.unframe(await body(request))
        (array,) = codec.split_framed([header.get("value")], data, max_request_bytes)
        await run_in_threadpool(lambda: service.assign(name, array, **slot))
        return Response(status_code=204)

    @app.put(
        "/api/v1/optimizers/{name:path}/weights/{weight}",
        status_code=204,
        dependencies=writes,
        responses={
            **errors(*WRITE, *BODY, 404),
            204: links(read_weight=WEIGHT_IN_PATH),
        },
        tags=["writes"],
        openapi_extra=FRAMED_BODY,
    )
    async def assign_weight(
        name: OptimizerPath, weight: WeightPath, request: Request
    ) -> Response:
        header, data = codec.unframe(await body(request))
        (array,) = codec.split_framed([header.get("value")], data, max_request_bytes)
        service.assign_weight(name, weight, array)
        return Response(status_code=204)

    @app.post(
        "/api/v1/checkpoint",
        response_model=CheckpointResponse,
        dependencies=admin,
        responses=errors(401, 409, 500, 503),
        tags=["writes"],
    )
    def checkpoint() -> dict:
        """Write a checkpoint now."""
        info = service.checkpoint()
        return {
            "path": str(info.path),
            "sequence": info.sequence,
            "bytes": info.nbytes,
            "seconds": info.seconds,
        }

    # Generic routes last: a name may hold slashes, so these must not shadow
    # the routes above (/value, /apply, ...) when methods are matched.

    @app.get(
        "/api/v1/variables/{name:path}",
        response_model=VariableResponse,
        dependencies=reads,
        responses=errors(*READ, 404),
        tags=["inspection"],
    )
    def variable(name: VariableName, stats: bool = True) -> dict:
        return inspector.variable(name, stats)

    @app.get(
        "/api/v1/optimizers/{name:path}",
        response_model=OptimizerResponse,
        dependencies=reads,
        responses=errors(*READ, 404, 503),
        tags=["inspection"],
    )
    def optimizer(name: OptimizerPath) -> dict:
        """One optimizer, as it is (a read never creates ``iterations``)."""
        return inspector.optimizer(name)

    # Dashboard ------------------------------------------------------------------

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/", include_in_schema=False)
        def dashboard() -> FileResponse:
            return FileResponse(STATIC / "index.html")

        @app.get("/favicon.ico", include_in_schema=False)
        def favicon() -> FileResponse:
            return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    return app


class TooLargeError(Exception):
    """A request or answer over its size limit (413)."""


def _held(request: Request) -> int:
    """Bytes of the in-flight budget this request's body holds."""
    return getattr(request.state, "inflight_bytes", 0)


def _at_end(request: Request, cleanup: Callable[[], Any]) -> None:
    """Run ``cleanup`` once the request is answered (``_EndOfRequest``)."""
    state = request.scope.setdefault("state", {})
    state.setdefault(_CLEANUPS, []).append(cleanup)


_CLEANUPS = "adamax_ps_cleanups"


class _EndOfRequest:
    """Runs each request's cleanups once the app has answered it, the whole
    body of the answer sent: what it held of the in-flight budget (its body's
    buffer, its read copy) is given back then."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            for cleanup in scope.get("state", {}).pop(_CLEANUPS, ()):
                cleanup()


def _error(status: int, name: str, message: str) -> JSONResponse:
    return JSONResponse({"error": name, "message": message}, status_code=status)


def _npy(array: np.ndarray) -> StreamingResponse:
    array = np.asarray(array, order="C")

    def pieces() -> Iterator[bytes | memoryview]:
        yield codec.npy_header(array)
        view = memoryview(array.reshape(-1)).cast("B")
        for start in range(0, len(view), streams.CHUNK_BYTES):
            yield bytes(view[start : start + streams.CHUNK_BYTES])

    return StreamingResponse(pieces(), media_type=codec.NPY)


def _allowed(app: FastAPI, request: Request) -> str:
    """Every method of the path that matched (Starlette names only the first
    route's, and GET and POST of one path are separate routes here)."""
    path = None
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(request.scope)
        if match is Match.NONE or not getattr(route, "methods", None):
            continue
        path = path or route.path
        if route.path == path:
            methods |= route.methods
    return ", ".join(sorted(methods))


def _exact_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` with bounds as JSON Schema spells them (``standard_bounds``)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = standard_bounds(build())
        return app.openapi_schema

    return openapi


def _row_numbers(text: str) -> np.ndarray:
    """``"3,17"`` (the route's pattern) as row numbers; the service checks them
    against the variable."""
    return np.asarray([int(r) for r in text.split(",")], np.int64)


def _list(header: dict, key: str) -> list:
    value = header.get(key)
    if not isinstance(value, list):
        raise InvalidArgumentError(f"the header's {key!r} must be a list")
    return value


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a string. Received: {value!r}")
    return value


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgumentError("call_variables must be a list of strings")
    return value


def _optional_int(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgumentError(f"{what} must be a non-negative integer")
    return value


def _flag(header: dict, key: str) -> bool:
    value = header.get(key, False)
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{key} must be true or false")
    return value


def _push_id(value: Any) -> PushId | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidArgumentError("push_id is {client, sequence, attempt?}")
    return PushId(value.get("client"), value.get("sequence"), value.get("attempt", 0))


def _variable_args(spec: dict, initial: np.ndarray | None) -> dict[str, Any]:
    global_shape = spec.get("global_shape")
    rows = spec.get("rows")
    shape = None
    if initial is None and isinstance(global_shape, list):
        shape = [rows, *global_shape[1:]] if global_shape else []
    return {
        "name": spec.get("name"),
        "shape": shape,
        "dtype": spec.get("dtype", "float32"),
        "initial_value": initial,
        "initializer": spec.get("initializer", "zeros"),
        "seed": _optional_int(spec.get("seed"), "seed"),
        "global_shape": global_shape,
        "row_offset": _optional_int(spec.get("row_offset"), "row_offset") or 0,
    }
