"""The HTTP API's reads: what the server holds, as JSON or ``.npy``.

Optimizers, variables with statistics, values of variables and slots (whole
or selected rows), the top rows, the sampled history, extra weights. Each
route calls one service or inspector method; blocking ones run on the
thread pool.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from adamax_ps.proto import codec
from adamax_ps.server.http import framed
from adamax_ps.server.http.api import (
    Api,
    OptimizerPath,
    SlotOf,
    VariableName,
    WeightPath,
)
from adamax_ps.server.http.bodies import TooLargeError, held_until_answered, npy
from adamax_ps.server.http.models import (
    ROWS_PATTERN,
    TOP_K_MAX,
    HistoryResponse,
    OptimizerResponse,
    ServerResponse,
    TopResponse,
    ValueResponse,
    VariableResponse,
)
from adamax_ps.server.http.schema import (
    BODY,
    FIRST_NAMED,
    FRAMED_BODY,
    READ,
    SLOT_PARAMETER,
    VARIABLE_LINKS,
    errors,
    links,
)


def reads(api: Api) -> APIRouter:
    """The inspection routes; the generic ``/variables/{name}`` and
    ``/optimizers/{name}`` come last (``generic_reads``)."""
    router = APIRouter(prefix="/api/v1", dependencies=api.reads, tags=["inspection"])
    service, inspector = api.service, api.inspector

    @router.get("/server", response_model=ServerResponse, responses=errors(401))
    def server_info() -> dict:
        """The server: its place in the cluster, shards, memory, checkpoint status."""
        return {**inspector.server(), "version": api.version, "ready": api.ready()}

    @router.get(
        "/optimizers",
        response_model=list[OptimizerResponse],
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
    )
    def optimizers() -> list[dict]:
        """Every optimizer: Keras config, iterations, pushes, weights."""
        return inspector.optimizers()

    @router.get(
        "/variables",
        response_model=list[VariableResponse],
        responses={**errors(*READ), 200: links(**VARIABLE_LINKS)},
    )
    def variables(stats: bool = True) -> list[dict]:
        """Every variable: shape, dtype, placement, bytes, statistics of w and slots."""
        return inspector.variables(stats)

    @router.get(
        "/variables/{name:path}/value",
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
        picked = framed.row_numbers(rows) if rows is not None else None
        if format == "json":  # refused before anything is copied
            record = service.variable(name)
            count = record.size if picked is None else len(picked) * record.row_size
            if count > api.json_limit:
                raise TooLargeError(
                    f"the answer would hold {count} values of {name!r}; JSON "
                    f"answers are limited to {api.json_limit} (--json-limit): ask "
                    "format=npy, or select fewer rows"
                )
        reading = service.reading(name, **slot, rows=picked)
        array = held_until_answered(request, reading)
        if format == "npy":
            return npy(array)
        return {
            "name": name,
            "shape": list(array.shape),
            "dtype": array.dtype.name,
            "rows": None if picked is None else picked.tolist(),
            "values": array.tolist(),
        }

    @router.get(
        "/variables/{name:path}/top",
        response_model=TopResponse,
        responses=errors(*READ, 404),
    )
    def top(
        name: VariableName,
        optimizer: Annotated[str, Query(min_length=1)],
        # Query() as the default: k's bound depends on this server's settings.
        k: int = Query(10, ge=1, le=min(TOP_K_MAX, api.max_request_rows)),
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

    @router.post(
        "/variables/{name:path}/rows",
        openapi_extra={**FRAMED_BODY, **SLOT_PARAMETER},
        responses={
            **errors(*READ, *BODY, 404),
            200: {"content": {codec.NPY: {}}, "description": ".npy bytes of the rows"},
        },
    )
    async def rows(name: VariableName, request: Request, slot: SlotOf) -> Response:
        """Selected rows of a variable or slot, for lists too long for a URL.
        Header: ``{"rows": {shape, dtype}}``; the int32/int64 row numbers follow."""
        header, data = await api.bodies.framed(request)
        picked = framed.tensor(header, "rows", data, api.max_request_bytes)
        reading = service.reading(name, **slot, rows=picked)
        return npy(await run_in_threadpool(held_until_answered, request, reading))

    @router.get("/history", response_model=HistoryResponse, responses=errors(401))
    def history() -> dict:
        """Sampled counters and norms (sampling runs while this is being read)."""
        return {"interval_seconds": inspector.interval, "samples": inspector.history()}

    @router.get(
        "/optimizers/{name:path}/weights/{weight}",
        responses={
            **errors(*READ, 404),
            200: {"content": {codec.NPY: {}}, "description": ".npy bytes"},
        },
    )
    def read_weight(name: OptimizerPath, weight: WeightPath) -> Response:
        """An optimizer's extra weight (add_weight), as .npy."""
        return npy(service.weight(name, weight))

    return router


def generic_reads(api: Api) -> APIRouter:
    """``/variables/{name}`` and ``/optimizers/{name}``: last, since a name
    may hold slashes and these would shadow the routes above."""
    router = APIRouter(prefix="/api/v1", dependencies=api.reads, tags=["inspection"])

    @router.get(
        "/variables/{name:path}",
        response_model=VariableResponse,
        responses=errors(*READ, 404),
    )
    def variable(name: VariableName, stats: bool = True) -> dict:
        return api.inspector.variable(name, stats)

    @router.get(
        "/optimizers/{name:path}",
        response_model=OptimizerResponse,
        responses=errors(*READ, 404, 503),
    )
    def optimizer(name: OptimizerPath) -> dict:
        """One optimizer, as it is (a read never creates ``iterations``)."""
        return api.inspector.optimizer(name)

    return router
