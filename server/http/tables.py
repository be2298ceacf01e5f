"""The HTTP API's hash-keyed tables: create or attach, list, describe with
the top keys, read and assign rows by key (raw bytes in, ``.npy`` out), and
exports as ``.npz``.

Keys travel as raw int64 bytes in framed bodies, never as JSON lists. A
table's rows are also read by ``POST /variables/{name}/rows`` (its rows are
keys there) and pushed by ``POST /optimizers/{name}/apply`` (a gradient's
``indices`` are keys), as over gRPC. Each route decodes, calls one service
method (blocking ones on the thread pool), and encodes.
"""

from __future__ import annotations

import io
import re
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParameter
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from adamax_ps.proto import codec
from adamax_ps.server.http.api import Api, SlotOf
from adamax_ps.server.http.bodies import held_until_answered, npy
from adamax_ps.server.http.models import INT64_END
from adamax_ps.server.http.schema import (
    BODY,
    FIRST_NAMED,
    FRAMED_BODY,
    IN_PATH,
    NAMED,
    READ,
    SLOT_PARAMETER,
    WRITE,
    errors,
    links,
)
from adamax_ps.server.http.table_models import (
    TOP_KEYS_MAX,
    CreateTableRequest,
    TableResponse,
)
from adamax_ps.server.service import ParameterService
from adamax_ps.server.validation import MAX_NAME

NPZ = "application/zip"  # numpy's .npz: a zip of .npy files
TableName = Annotated[str, PathParameter(min_length=1, max_length=MAX_NAME)]
TABLE_LINKS = {  # from an answer naming a table to its routes
    op: NAMED for op in ("table", "export_table", "table_rows", "assign_table_rows")
}
INFO_FIELDS = (  # of ``ParameterService.table_info``, as TableResponse states them
    "name",
    "dim",
    "dtype",
    "initializer",
    "seed",
    "capacity",
    "admission",
    "eviction",
    "size",
    "allocated",
    "bytes",
    "bytes_per_row",
    "admitted",
    "evicted",
    "filtered",
    "latest_step",
)


def table_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``schema.errors``, a 404 meaning a missing table."""
    found = errors(*codes)
    if 404 in found:
        found[404] = {**found[404], "description": "no such table"}
    return found


def describe(
    service: ParameterService, name: str, created: bool = False, top_keys: int = 0
) -> dict[str, Any]:
    """A table as ``TableResponse`` states it (gRPC's ``TableInfo`` as a dict)."""
    info = service.table_info(name)
    answer = {field: info[field] for field in INFO_FIELDS}
    answer["config"] = service.table(name).config.to_json()
    answer["created"] = created
    if top_keys:
        answer["top_keys"] = service.top_keys(name, top_keys)
    return answer


def tables(api: Api) -> APIRouter:
    """Every table route; ``/tables/{name}`` comes last (a name may hold
    slashes, and it would shadow the routes below it)."""
    router = APIRouter(prefix="/api/v1")
    service, limit = api.service, api.max_request_bytes

    @router.post(
        "/tables",
        response_model=TableResponse,
        dependencies=api.writes,
        tags=["writes"],
        responses={**table_errors(*WRITE, 507), 200: links(**TABLE_LINKS)},
    )
    def create_table(request: CreateTableRequest) -> dict[str, Any]:
        """Create a hash-keyed table, or attach to the one of that name with
        the same settings (``created`` says which; other settings: 409)."""
        record, created = service.create_table(request.name, **request.config())
        return describe(service, record.name, created)

    @router.get(
        "/tables",
        response_model=list[TableResponse],
        dependencies=api.reads,
        tags=["inspection"],
        responses={
            **table_errors(401),
            200: links(**{op: FIRST_NAMED for op in TABLE_LINKS}),
        },
    )
    def list_tables() -> list[dict[str, Any]]:
        """Every table here: settings, rows, memory, admission and eviction counts."""
        return [describe(service, record.name) for record in service.tables()]

    @router.post(
        "/tables/{name:path}/rows",
        dependencies=api.reads,
        tags=["inspection"],
        openapi_extra={**FRAMED_BODY, **SLOT_PARAMETER},
        responses={
            **table_errors(*READ, *BODY, 404, 409),
            200: {"content": {codec.NPY: {}}, "description": ".npy bytes of the rows"},
        },
    )
    async def table_rows(name: TableName, request: Request, slot: SlotOf) -> Response:
        """Rows of keys (an unseen key's: its initial row), or of an
        optimizer's slot (zeros for keys without a row). Header: ``{"keys":
        {shape, dtype}}``; the int64 keys follow. Keys another server holds:
        409 (the sender's view of the cluster is stale)."""
        service.table(name)  # a missing table is a 404 before the body is read
        header, data = await api.bodies.framed(request)
        keys = _tensors(header, data, limit, "keys")[0]
        reading = service.reading_keys(name, keys, **slot)
        return npy(await run_in_threadpool(held_until_answered, request, reading))

    @router.put(
        "/tables/{name:path}/rows",
        status_code=204,
        dependencies=api.writes,
        tags=["writes"],
        openapi_extra=FRAMED_BODY,
        responses={
            **table_errors(*WRITE, *BODY, 404, 507),
            204: links(table=IN_PATH, table_rows=IN_PATH),
        },
    )
    async def assign_table_rows(name: TableName, request: Request) -> Response:
        """Set the rows of unique keys (new keys get rows and zero slots,
        without an admission test). Header: ``{"keys": {shape, dtype},
        "values": {shape, dtype}}``; the keys' bytes, then the values' follow."""
        service.table(name)
        header, data = await api.bodies.framed(request)
        keys, values = _tensors(header, data, limit, "keys", "values")
        await run_in_threadpool(service.assign_keys, name, keys, values)
        return Response(status_code=204)

    @router.get(
        "/tables/{name:path}/export",
        dependencies=api.reads,
        tags=["inspection"],
        response_class=Response,
        responses={
            **table_errors(*READ, 404, 409),
            200: {
                "content": {NPZ: {"schema": {"type": "string", "format": "binary"}}},
                "description": "an .npz of `keys` [n] int64, `values` [n, dim], "
                "`evicted` [k] int64 (a delta's deletions) and `through` (int64: "
                "the newest step the rows show)",
            },
        },
    )
    def export_table(
        name: TableName,
        since: Annotated[
            int | None,
            Query(
                ge=0,
                lt=INT64_END,
                description="only rows updated after this step, and the keys "
                "evicted after it (409 when those evictions are forgotten)",
            ),
        ] = None,
    ) -> Response:
        """The table's rows held here, for serving: whole, or a delta."""
        keys, values, evicted, through = service.export_table(name, since)
        buffer = io.BytesIO()
        np.savez(
            buffer, keys=keys, values=values, evicted=evicted, through=np.int64(through)
        )
        filename = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64] or "table"
        return Response(
            buffer.getbuffer(),
            media_type=NPZ,
            headers={"content-disposition": f'attachment; filename="{filename}.npz"'},
        )

    @router.get(
        "/tables/{name:path}",
        response_model=TableResponse,
        dependencies=api.reads,
        tags=["inspection"],
        responses=table_errors(*READ, 404),
    )
    def table(
        name: TableName,
        top_keys: Annotated[
            int,
            Query(ge=0, le=TOP_KEYS_MAX, description="also the N most updated keys"),
        ] = 0,
    ) -> dict[str, Any]:
        """One table, and its most updated keys when asked."""
        return describe(service, name, top_keys=top_keys)

    return router


def _tensors(
    header: dict, data: memoryview, limit: int, *keys: str
) -> list[np.ndarray]:
    """The tensors a framed header describes under ``keys``, in that order."""
    return codec.split_framed([header.get(key) for key in keys], data, limit)
