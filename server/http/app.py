"""The HTTP face of a ParameterService (FastAPI, served by uvicorn).

REST inspection of what the server holds (``reads``), writes for workers
without gRPC (``writes``), ``/healthz``, ``/readyz``, ``/metrics``, and the
dashboard at ``/``. Routes only decode, call the service, and encode. Every
error is a JSON body ``{"error", "message"}`` with the status of its class,
mapped here once. The models and what the OpenAPI schema states of each
route are in ``models`` and ``schema``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from adamax_ps.proto import codec, streams
from adamax_ps.proto.wire import VIEW_HEADER
from adamax_ps.server.errors import (
    InvalidArgumentError,
    ParameterServerError,
    ServerBusyError,
)
from adamax_ps.server.http.api import Api
from adamax_ps.server.http.bodies import (
    Bodies,
    CountRequests,
    EndOfRequest,
    TooLargeError,
)
from adamax_ps.server.http.models import StatusResponse
from adamax_ps.server.http.reads import generic_reads, reads
from adamax_ps.server.http.schema import standard_bounds
from adamax_ps.server.http.tables import tables
from adamax_ps.server.http.writes import writes
from adamax_ps.server.inspection import Inspector
from adamax_ps.server.security import TokenCheck
from adamax_ps.server.service import ParameterService

STATIC = Path(__file__).resolve().parents[1] / "static"
DEFAULT_JSON_LIMIT = 100_000
# Answered while a rescale rebuilds this server's state (other reads are
# RescalingError, 503): where it stands, and its metrics.
WHILE_REBUILDING = frozenset({"/api/v1/server", "/metrics"})


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
    app.add_middleware(EndOfRequest)
    app.add_middleware(CountRequests, counter=service.metrics.requests)

    # Dependencies are async: they never block, and a sync one would cost a
    # thread-pool hop on every request.
    async def read_access(request: Request) -> None:
        tokens.check(request.headers.get("authorization"), mutating=False)
        if request.url.path not in WHILE_REBUILDING:
            service.rescale.check_reads()  # the state is half there
        view = _view(request.headers.get(VIEW_HEADER))
        if view is not None:  # rows of the slice the reader believes
            service.check_view(view)

    async def write_access(request: Request) -> None:
        tokens.check(request.headers.get("authorization"), mutating=True)
        service.check_view(_view(request.headers.get(VIEW_HEADER)))

    async def admin_access(request: Request) -> None:
        tokens.check(request.headers.get("authorization"), mutating=True)

    api = Api(
        service=service,
        inspector=inspector,
        bodies=Bodies(service.inflight, service.metrics, max_request_bytes, buffers),
        ready=ready,
        version=version,
        json_limit=json_limit,
        reads=[Depends(read_access)],
        writes=[Depends(write_access)],
        admin=[Depends(admin_access)],
    )
    _map_errors(app)
    _probes(app, api)
    app.include_router(reads(api))
    app.include_router(writes(api))
    app.include_router(tables(api))
    app.include_router(generic_reads(api))
    if STATIC.is_dir():
        _dashboard(app)
    return app


def _view(header: str | None) -> tuple[int, int] | None:
    """The sender's view from its header, ``index/servers`` (None: absent)."""
    if header is None:
        return None
    try:
        index, count = (int(x) for x in header.split("/"))
    except ValueError:
        raise InvalidArgumentError(
            f"{VIEW_HEADER} is 'index/servers'. Received: {header!r}"
        ) from None
    return index, count


def _map_errors(app: FastAPI) -> None:
    """Every error as ``{"error", "message"}`` with its status."""

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


def _probes(app: FastAPI, api: Api) -> None:
    """``/healthz``, ``/readyz`` and ``/metrics``."""
    service = api.service

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
        if api.ready():
            return StatusResponse(status="ready")
        return JSONResponse({"status": "starting"}, status_code=503)

    @app.get(
        "/metrics",
        tags=["probes"],
        response_class=Response,
        dependencies=api.reads,
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


def _dashboard(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


def _error(status: int, name: str, message: str) -> JSONResponse:
    return JSONResponse({"error": name, "message": message}, status_code=status)


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
