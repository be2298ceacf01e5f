"""Keras gradients checked against their variables and made ready to send.

``keras_pairs`` and ``checked`` raise Keras's errors (``TypeError`` for malformed
``grads_and_vars``, ``ValueError`` for shapes, dtypes and rows that do not
fit) before anything is sent: a call spanning servers is refused whole, never
applied on some of them. ``compact`` sums a sparse gradient's duplicate rows
as TensorFlow does, to send each row once (the server, which trusts no
client, sums again: one pass when rows are already unique).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from adamax_ps.client.tables import RemoteTable
from adamax_ps.client.transport import Gradient
from adamax_ps.client.variables import RemoteVariable
from adamax_ps.common import dedup


def keras_pairs(grads_and_vars: Iterable) -> list[tuple[Any, RemoteVariable]]:
    """``(gradient, variable)`` pairs, checked as Keras does."""
    pairs = []
    for item in grads_and_vars:
        try:
            g, v = item
        except TypeError:
            raise TypeError(
                "apply_gradients takes (gradient, variable) pairs. Received an item "
                f"of type {type(item).__name__}"
            ) from None
        if not isinstance(v, RemoteVariable | RemoteTable):
            raise TypeError(
                "apply_gradients takes (gradient, variable) pairs whose variable is "
                f"a RemoteVariable. Received: {type(v).__name__} as the variable"
            )
        pairs.append((g, v))
    return pairs


def checked(gradient: Any, var: RemoteVariable) -> Gradient:
    """What a Keras gradient is (dense, or anything with ``indices`` and
    ``values``), checked against the variable before anything is sent."""
    if isinstance(var, RemoteTable):
        return _keyed(gradient, var)
    if hasattr(gradient, "indices") and hasattr(gradient, "values"):
        values = _array(gradient.values)
        indices = _array(gradient.indices)
        if indices.ndim != 1 or indices.dtype.kind not in "iu":
            raise ValueError(
                f"IndexedSlices indices for {var.name!r} must be a 1-D integer array. "
                f"Received shape {indices.shape}, dtype {indices.dtype}"
            )
        if not var.shape:
            raise ValueError(f"{var.name!r} is a scalar: it takes dense gradients only")
        expected = (len(indices), *var.shape[1:])
        if values.shape != expected:
            raise ValueError(
                f"IndexedSlices values for {var.name!r} must have shape {expected}. "
                f"Received: {values.shape}"
            )
        bad = np.flatnonzero((indices < 0) | (indices >= var.shape[0]))
        if bad.size:
            raise ValueError(
                f"indices[{bad[0]}] = {indices[bad[0]]} is not in [0, {var.shape[0]}) "
                f"for variable {var.name!r}"
            )
        _check_dtype(values, var)
        return Gradient(
            var.name,
            np.ascontiguousarray(values),
            indices.astype(np.int64, copy=False),
        )
    values = _array(gradient)
    if values.shape != var.shape:
        raise ValueError(
            f"gradient for {var.name!r} must have shape {var.shape}. "
            f"Received: {values.shape}"
        )
    _check_dtype(values, var)
    return Gradient(var.name, np.asarray(values, order="C"))


def _keyed(gradient: Any, table: RemoteTable) -> Gradient:
    """A table's gradient: IndexedSlices of its keys, ``[n, dim]`` values."""
    if not (hasattr(gradient, "indices") and hasattr(gradient, "values")):
        raise ValueError(
            f"{table.name!r} is a hash-keyed table: its gradient is "
            "IndexedSlices(values, keys)"
        )
    values = _array(gradient.values)
    keys = _array(gradient.indices)
    if keys.ndim != 1 or keys.dtype.kind not in "iu":
        raise ValueError(
            f"keys of table {table.name!r} must be a 1-D integer array. "
            f"Received shape {keys.shape}, dtype {keys.dtype}"
        )
    if keys.dtype == np.uint64 and len(keys) and keys.max() >= 2**63:
        raise ValueError(f"keys of table {table.name!r} must fit in int64")
    if values.shape != (len(keys), table.dim):
        raise ValueError(
            f"IndexedSlices values for table {table.name!r} must have shape "
            f"{(len(keys), table.dim)}. Received: {values.shape}"
        )
    _check_dtype(values, table)
    return Gradient(
        table.name, np.ascontiguousarray(values), keys.astype(np.int64, copy=False)
    )


def compact(gradient: Gradient) -> Gradient:
    """A sparse gradient with its duplicate rows summed (dense ones as they are)."""
    indices, values = gradient.indices, gradient.values
    if indices is None or len(indices) == 0:
        return gradient
    rows, summed = dedup.deduplicate(indices, values.reshape(len(indices), -1))
    if len(rows) == len(indices):
        return gradient
    return Gradient(
        gradient.variable, summed.reshape(len(rows), *values.shape[1:]), rows
    )


def _array(value: Any) -> np.ndarray:
    """numpy, or anything np.asarray takes (torch CPU tensors, TF, JAX arrays)."""
    if hasattr(value, "detach"):  # torch tensors that require grad
        value = value.detach()
    if hasattr(value, "cpu") and not isinstance(value, np.ndarray):
        value = value.cpu()
    return np.asarray(value)


def _check_dtype(values: np.ndarray, var: RemoteVariable) -> None:
    if values.dtype != var.dtype:
        raise ValueError(
            f"gradient for {var.name!r} must have dtype {var.dtype.name}. "
            f"Received: {values.dtype}"
        )
