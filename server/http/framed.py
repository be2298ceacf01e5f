"""Framed request bodies decoded into what the service takes.

A framed body is a JSON header and raw tensor bytes (``codec.frame``). The
header's shape is checked here only as far as decoding needs (lists, strings,
flags); every domain rule is the service's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from adamax_ps.proto import codec
from adamax_ps.server.errors import InvalidArgumentError
from adamax_ps.server.gradients import Gradient
from adamax_ps.server.ledger import PushId


def gradients(header: dict, data: memoryview, limit: int) -> list[Gradient]:
    """A push's gradients: ``{"gradients": [{variable, values, indices?}]}``,
    each gradient's indices' bytes (if sparse) then its values' bytes."""
    items = _list(header, "gradients")
    described = []
    for g in items:
        if not isinstance(g, dict):
            raise InvalidArgumentError("each gradient is a JSON object")
        if g.get("indices") is not None:
            described.append(g["indices"])
        described.append(g.get("values"))
    arrays = iter(codec.split_framed(described, data, limit))
    found = []
    for g in items:
        indices = next(arrays) if g.get("indices") is not None else None
        values = next(arrays)
        variable = _string(g.get("variable"), "variable")
        found.append(Gradient(variable, values, indices))
    return found


def push_options(header: dict) -> dict[str, Any]:
    """A push's keyword arguments for ``ParameterService.apply``."""
    return {
        "step": _optional_int(header.get("step"), "step"),
        "aggregate": not _flag(header, "aggregated"),
        "call_variables": _strings(header.get("call_variables")) or None,
        "clipped": _flag(header, "clipped"),
        "replica": _optional_int(header.get("replica"), "replica"),
        "reserve_next": _flag(header, "reserve_next"),
        "step_reserved_ahead": _flag(header, "step_reserved_ahead"),
    }


def push_id(value: Any) -> PushId | None:
    """``{client, sequence, attempt?}``, or None."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidArgumentError("push_id is {client, sequence, attempt?}")
    return PushId(value.get("client"), value.get("sequence"), value.get("attempt", 0))


def variable_specs(header: dict, data: memoryview, limit: int) -> list[dict]:
    """``{"variables": [{name, global_shape, dtype, row_offset, rows,
    initializer, seed, initial_value?}]}`` as ``create_variables`` specs."""
    specs = _list(header, "variables")
    if not all(isinstance(spec, dict) for spec in specs):
        raise InvalidArgumentError("each variable spec is a JSON object")
    described = [s["initial_value"] for s in specs if s.get("initial_value")]
    arrays = iter(codec.split_framed(described, data, limit))
    return [
        _variable_args(s, next(arrays) if s.get("initial_value") else None)
        for s in specs
    ]


def tensor(header: dict, key: str, data: memoryview, limit: int) -> np.ndarray:
    """The one tensor a header describes under ``key``."""
    (array,) = codec.split_framed([header.get(key)], data, limit)
    return array


def row_numbers(text: str) -> np.ndarray:
    """``"3,17"`` (the value route's pattern) as row numbers; the service
    checks them against the variable."""
    return np.asarray([int(r) for r in text.split(",")], np.int64)


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
