"""What the OpenAPI schema says of each route beyond its models: the errors
it answers, its raw request body, the slot parameter, links between routes,
and integer bounds printed as JSON Schema spells them."""

from __future__ import annotations

from typing import Any

from adamax_ps.proto import codec
from adamax_ps.server.http.models import ErrorResponse
from adamax_ps.server.validation import MAX_NAME

_MEANINGS = {
    400: "bad input (shape, dtype, rows, framing, the view header)",
    401: "a token is required",
    404: "no such variable, optimizer, slot or weight",
    409: "exists otherwise, or refused by state (stale push, another view)",
    413: "too large (request, answer, rows per read)",
    422: "not what the schema allows",
    500: "the checkpoint could not be written",
    503: "busy (retry after a second), or no longer accepting changes",
    504: "the other replicas of a synchronous step did not arrive in time",
    507: "over the server's state budget (--memory-limit)",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error answers a route can give, each an ``ErrorResponse``."""
    return {
        code: {"model": ErrorResponse, "description": _MEANINGS[code]} for code in codes
    }


READ = (401, 422)  # every read: a token (with --auth-reads), its parameters
WRITE = (400, 401, 409, 422, 503)  # and the view header, fail-stop
BODY = (400, 413, 503)  # a raw body: framing, size, the in-flight budget

FRAMED_BODY = {
    "requestBody": {
        "required": True,
        "content": {codec.FRAMED: {"schema": {"type": "string", "format": "binary"}}},
        "description": "a 4-byte little-endian header length, a JSON header, then "
        "the tensors' raw little-endian bytes in the header's order",
    }
}

SLOT_PARAMETER = {
    "parameters": [
        {
            "name": "slot_of",
            "in": "query",
            "required": False,
            "style": "form",
            "explode": True,
            "description": "an optimizer's slot instead of the variable's value: "
            "`optimizer=NAME&slot=NAME`, both or neither",
            "schema": {
                "type": "object",
                "properties": {
                    "optimizer": {"type": "string", "minLength": 1},
                    "slot": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
                },
                "required": ["optimizer", "slot"],
                "additionalProperties": False,
            },
        }
    ]
}


def links(**targets: dict[str, str]) -> dict[str, Any]:
    """OpenAPI links from an answer to the operations it names (by function
    name, which is each route's operationId). A link's target answers 404
    only when the linked thing is gone (add_slot and apply, which also name
    variables in their bodies, are not link targets of a new optimizer)."""
    return {
        "links": {
            name: {"operationId": name, "parameters": parameters}
            for name, parameters in targets.items()
        }
    }


_PYTHON_BOUNDS = {
    "gt": "exclusiveMinimum",
    "ge": "minimum",
    "lt": "exclusiveMaximum",
    "le": "maximum",
}


def standard_bounds(node: Any) -> Any:
    """``node`` (a JSON schema) with its bounds as JSON Schema spells them.

    FastAPI's OpenAPI model holds every bound as a float, so an integer
    schema's ``2**63`` would print as ``9.223372036854776e+18``: integral
    bounds of integer schemas become integers again (exact: every bound here
    is a float exactly). Pydantic writes a union's bounds beside its
    ``anyOf`` under their Python names (``gt``, ``ge``): they move into the
    numeric branches under their JSON Schema names.
    """
    if isinstance(node, list):
        return [standard_bounds(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "anyOf" in node:
        loose = {
            new: node.pop(old) for old, new in _PYTHON_BOUNDS.items() if old in node
        }
        node["anyOf"] = [
            {**branch, **loose}
            if branch.get("type") in ("integer", "number")
            else branch
            for branch in node["anyOf"]
        ]
    if node.get("type") == "integer":
        for key in _PYTHON_BOUNDS.values():
            if isinstance(node.get(key), float) and node[key].is_integer():
                node[key] = int(node[key])
    return {key: standard_bounds(value) for key, value in node.items()}


# Link parameters: where the linked operation finds its path's names.
NAMED = {"name": "$response.body#/name"}
FIRST_NAMED = {"name": "$response.body#/0/name"}
IN_PATH = {"name": "$request.path.name"}
WEIGHT_ADDED = {"name": "$response.body#/name", "weight": "$request.body#/name"}
WEIGHT_IN_PATH = {"name": "$request.path.name", "weight": "$request.path.weight"}
VARIABLE_LINKS = {  # from a list of variables to the first one
    op: FIRST_NAMED for op in ("variable", "value", "rows", "top", "assign")
}
