"""What every route of the HTTP API shares: the service it serves, its
limits, the access dependencies, and the path and query parameters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query
from fastapi import Path as PathParameter
from fastapi.exceptions import RequestValidationError

from adamax_ps.server.http.bodies import Bodies
from adamax_ps.server.inspection import Inspector
from adamax_ps.server.service import ParameterService
from adamax_ps.server.validation import MAX_NAME

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
    """The ``slot_of`` query object (``schema.SLOT_PARAMETER``): an
    optimizer's slot, both names or neither."""
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


@dataclass(frozen=True)
class Api:
    """One app's service, helpers, limits and access rules (``reads``,
    ``writes``: changes sent with their view, ``admin``: changes without)."""

    service: ParameterService
    inspector: Inspector
    bodies: Bodies
    ready: Callable[[], bool]
    version: str
    json_limit: int
    reads: list[Any]
    writes: list[Any]
    admin: list[Any]

    @property
    def max_request_bytes(self) -> int:
        return self.bodies.max_request_bytes

    @property
    def max_request_rows(self) -> int:
        return self.service.settings.max_request_rows
