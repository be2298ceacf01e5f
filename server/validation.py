"""Checks of everything a client sends, each failing with a message that names
the thing and the problem (rule first, then the value received)."""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from adamax_ps.server import adamax, kernels
from adamax_ps.server.errors import InvalidArgumentError
from adamax_ps.server.gradients import Gradient
from adamax_ps.server.store import VariableRecord

MAX_NAME = 256


class NonFinitePolicy(enum.Enum):
    """What a push with NaN or Inf in a gradient gets.

    ``reject`` (default): refused with INVALID_ARGUMENT naming the variable,
    nothing applied; a server holding the only copy of a model keeps it finite.
    ``allow``: applied as TensorFlow would (NaN/Inf reach the weights).
    """

    REJECT = "reject"
    ALLOW = "allow"


def check_name(what: str, name: Any) -> None:
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        raise InvalidArgumentError(
            f"a {what} name must be a string of 1 to {MAX_NAME} characters. "
            f"Received: {name!r}"
        )


def float_dtype(dtype: Any) -> np.dtype:
    try:
        result = np.dtype(dtype)
    except TypeError:
        raise InvalidArgumentError(f"unknown dtype {dtype!r}") from None
    if result not in adamax.FLOAT_DTYPES:
        raise InvalidArgumentError(
            f"variables must be float16, float32 or float64. Received: {result}"
        )
    return result.newbyteorder("=")


def numeric_array(value: Any, what: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except Exception as e:
        raise InvalidArgumentError(f"{what} is not an array: {e}") from None
    if array.dtype.kind not in "fiu":
        raise InvalidArgumentError(
            f"{what} must be numeric. Received dtype {array.dtype}"
        )
    return array


def shape_and_dtype(
    shape: Sequence[int] | None, dtype: Any, initial_value: Any
) -> tuple[tuple[int, ...], np.dtype, np.ndarray | None]:
    """A new variable's shape and dtype, from explicit values or its initial value
    (whose float dtype is kept unless ``dtype`` says otherwise)."""
    if initial_value is not None:
        initial_value = numeric_array(initial_value, "initial_value")
        if dtype is None:
            dtype = (
                initial_value.dtype if initial_value.dtype.kind == "f" else "float32"
            )
        dtype = float_dtype(dtype)
        if shape is not None and tuple(shape) != initial_value.shape:
            raise InvalidArgumentError(
                f"shape {tuple(shape)} does not match the initial value's shape "
                f"{initial_value.shape}"
            )
        return initial_value.shape, dtype, initial_value.astype(dtype, copy=False)
    if shape is None:
        raise InvalidArgumentError("a variable needs a shape or an initial value")
    try:
        shape = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"a shape is a list of integers. Received: {shape!r}"
        ) from None
    if any(d < 0 for d in shape):
        raise InvalidArgumentError(f"shape dimensions must be >= 0. Received: {shape}")
    return shape, float_dtype(dtype if dtype is not None else "float32"), None


def check_slice(
    shape: tuple[int, ...], global_shape: Sequence[int] | None, row_offset: int
) -> tuple[int, ...]:
    """The whole variable's shape, checking that ``shape`` is its rows
    ``[row_offset, row_offset + shape[0])``."""
    if global_shape is None:
        if row_offset:
            raise InvalidArgumentError("a row offset needs the variable's global shape")
        return shape
    try:
        whole = tuple(int(d) for d in global_shape)
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"a global shape is a list of integers. Received: {global_shape!r}"
        ) from None
    if whole == shape and not row_offset:
        return whole
    if (
        not shape
        or len(whole) != len(shape)
        or whole[1:] != shape[1:]
        or row_offset < 0
        or row_offset + shape[0] > whole[0]
    ):
        raise InvalidArgumentError(
            f"rows [{row_offset}, {row_offset + (shape[0] if shape else 0)}) of shape "
            f"{shape} are not a slice of a variable of shape {whole}"
        )
    return whole


def check_indices(record: VariableRecord, indices: Any, what: str) -> np.ndarray:
    """A 1-D int32/int64 array of row numbers in ``[0, rows)``, contiguous."""
    if not isinstance(indices, np.ndarray) or indices.dtype not in adamax.INDEX_DTYPES:
        dtype = getattr(indices, "dtype", type(indices).__name__)
        raise InvalidArgumentError(
            f"{what} for {record.name!r} must be an int32 or int64 array. "
            f"Received: {dtype}"
        )
    if indices.ndim != 1:
        raise InvalidArgumentError(
            f"{what} for {record.name!r} must be 1-D. Received shape {indices.shape}"
        )
    indices = np.ascontiguousarray(indices)
    if indices.size:
        where = kernels.first_out_of_range(indices, record.rows)
        if where >= 0:
            raise InvalidArgumentError(
                f"{what}[{where}] = {indices[where]} is not in [0, {record.rows}) "
                f"for variable {record.name!r}"
            )
    return indices


def check_gradient(
    record: VariableRecord, gradient: Gradient, policy: NonFinitePolicy
) -> Gradient:
    """Validate one gradient of ``record``; nothing is changed by a refusal."""
    if not isinstance(gradient, Gradient):
        raise InvalidArgumentError(f"not a gradient: {type(gradient).__name__}")
    if gradient.is_dense:
        values = _values(record, gradient.values)
        if values.shape != record.shape:
            raise InvalidArgumentError(
                f"gradient for {record.name!r} must have shape {record.shape}. "
                f"Received: {values.shape}"
            )
        if not gradient.finite:
            _finite(record, values, policy)
        return gradient.bound(record, np.asarray(values, order="C"))
    if not record.shape:
        raise InvalidArgumentError(
            f"a sparse gradient needs a variable of rank >= 1; {record.name!r} is a "
            "scalar"
        )
    indices = check_indices(record, gradient.indices, "indices")
    values = _values(record, gradient.values)
    expected = (len(indices), *record.shape[1:])
    if values.shape != expected:
        raise InvalidArgumentError(
            f"sparse gradient values for {record.name!r} must have shape {expected} "
            f"(one row per index). Received: {values.shape}"
        )
    if not gradient.finite:
        _finite(record, values, policy)
    row_size = math.prod(record.shape[1:])
    values = np.ascontiguousarray(values).reshape(len(indices), row_size)
    return gradient.bound(record, values, indices)


def checked_values(
    record: Any, values: Any, policy: NonFinitePolicy, finite: bool
) -> np.ndarray:
    """A gradient's values in the record's dtype (a reduced-precision wire's
    upcast), searched for NaN and Inf unless the transport did (``finite``)."""
    values = _values(record, values)
    if not finite:
        _finite(record, values, policy)
    return values


def _values(record: VariableRecord, values: Any) -> np.ndarray:
    if not isinstance(values, np.ndarray):
        raise InvalidArgumentError(f"gradient for {record.name!r} is not an array")
    if record.dtype == np.float32 and values.dtype.name in ("float16", "bfloat16"):
        return values.astype(np.float32)  # a worker's reduced-precision wire
    if values.dtype != record.dtype:
        raise InvalidArgumentError(
            f"gradient for {record.name!r} must have dtype {record.dtype}. "
            f"Received: {values.dtype}"
        )
    return values


def _finite(
    record: VariableRecord, values: np.ndarray, policy: NonFinitePolicy
) -> None:
    if policy is NonFinitePolicy.ALLOW:
        return
    flat = values.reshape(-1)
    where = kernels.first_nonfinite(flat)
    if where >= 0:
        raise InvalidArgumentError(
            f"gradient for {record.name!r} has a non-finite value ({flat[where]}) at "
            f"flat index {where}; this server refuses NaN and Inf gradients"
        )


class StreamFiniteScan:
    """Searches a streamed push's float tensors for NaN and Inf as their bytes
    arrive, so the search of a large push overlaps its transfer instead of
    following it (gRPC keeps receiving while the handler scans).

    ``layout`` is ``StreamAssembler.layout``; ``which`` the positions of the
    gradient values to scan. After the stream, ``finite(k)`` is True only for a
    tensor scanned whole and found finite; anything else is left to
    ``check_gradient``, which names the variable and the value.
    """

    def __init__(self, buffer: np.ndarray, layout, which: Sequence[int]) -> None:
        self.buffer = buffer
        self.pending = {}  # position -> [start, end, dtype, next byte to scan]
        for k in which:
            start, size, dtype = layout[k]
            if dtype.kind == "f" and start % dtype.itemsize == 0:
                self.pending[k] = [start, start + size, dtype, start]
        self.clean: set[int] = set()

    def advance(self, filled: int) -> None:
        """Scan every whole element of the first ``filled`` bytes not yet seen."""
        for k, target in list(self.pending.items()):
            start, end, dtype, scanned = target
            upto = min(filled, end)
            upto -= (upto - start) % dtype.itemsize
            if upto > scanned:
                values = self.buffer[scanned:upto].view(dtype)
                if kernels.first_nonfinite(values) >= 0:
                    del self.pending[k]  # check_gradient will report it
                    continue
                target[3] = upto
            if target[3] == end:
                del self.pending[k]
                self.clean.add(k)
            if filled < end:
                break  # later tensors have not started arriving

    def finite(self, k: int) -> bool:
        return k in self.clean
