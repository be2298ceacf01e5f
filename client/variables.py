"""RemoteVariable, remote slots and weights, and IndexedSlices.

A ``RemoteVariable`` names a variable held by the cluster; reading it
(``numpy()``, ``np.asarray(var)``, ``gather(rows)``) fetches the current value,
``assign`` replaces it. ``IndexedSlices`` is a sparse gradient: rows
``indices`` of a variable with values ``values`` (``tf.IndexedSlices`` and any
object with ``.values``, ``.indices`` and ``.dense_shape`` work the same way).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class Cluster(Protocol):
    """What remote values ask of the cluster that holds them
    (``adamax_ps.client.cluster.Cluster``)."""

    def read(self, name: str, *, optimizer: str = "", slot: str = "") -> np.ndarray: ...
    def gather(self, name: str, rows: Any) -> np.ndarray: ...
    def assign(
        self, name: str, value: np.ndarray, *, optimizer: str = "", slot: str = ""
    ) -> None: ...
    def read_weight(self, optimizer: str, name: str) -> np.ndarray: ...
    def assign_weight(self, optimizer: str, name: str, value: np.ndarray) -> None: ...
    def optimizer(self, name: str, create_iterations: bool = False) -> Any: ...
    def set_iterations(self, optimizer: str, iterations: int) -> None: ...


class IndexedSlices:
    """A sparse gradient: ``values[k]`` is the gradient of row ``indices[k]``."""

    def __init__(self, values: Any, indices: Any, dense_shape: Any = None) -> None:
        self.values = values
        self.indices = indices
        self.dense_shape = dense_shape

    def __repr__(self) -> str:
        shape = getattr(self.values, "shape", None)
        return f"IndexedSlices(values shape {shape}, {len(self.indices)} indices)"


class _Readable:
    """Something with a value on the cluster: ``numpy()`` and ``np.asarray``."""

    def numpy(self) -> np.ndarray:
        raise NotImplementedError

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        value = self.numpy()
        return value if dtype is None else value.astype(dtype, copy=False)

    def value(self) -> np.ndarray:
        return self.numpy()


class RemoteVariable(_Readable):
    """A variable held by the cluster (``name``, ``shape``, ``dtype``)."""

    def __init__(
        self, cluster: Cluster, name: str, shape: tuple[int, ...], dtype: np.dtype
    ) -> None:
        self.cluster = cluster
        self.name = name
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)

    def numpy(self) -> np.ndarray:
        return self.cluster.read(self.name)

    def gather(self, rows: Any) -> np.ndarray:
        """Copies of selected rows, fetched from the servers holding them."""
        return self.cluster.gather(self.name, rows)

    def assign(self, value: Any) -> None:
        self.cluster.assign(self.name, np.asarray(value))

    def __repr__(self) -> str:
        return (
            f"<RemoteVariable {self.name!r} shape={self.shape} dtype={self.dtype.name}>"
        )


class RemoteSlot(_Readable):
    """One slot (``m``, ``v`` or added) of a variable, for one optimizer."""

    def __init__(
        self, cluster: Cluster, optimizer: str, variable: RemoteVariable, slot: str
    ) -> None:
        self.cluster = cluster
        self.optimizer = optimizer
        self.variable = variable
        self.slot = slot
        self.name = f"{optimizer}/{variable.name}/{slot}:0"
        self.shape = variable.shape
        self.dtype = variable.dtype

    def numpy(self) -> np.ndarray:
        return self.cluster.read(
            self.variable.name, optimizer=self.optimizer, slot=self.slot
        )

    def assign(self, value: Any) -> None:
        self.cluster.assign(
            self.variable.name,
            np.asarray(value),
            optimizer=self.optimizer,
            slot=self.slot,
        )

    def __repr__(self) -> str:
        return f"<RemoteSlot {self.name!r} shape={self.shape}>"


class RemoteWeight(_Readable):
    """An optimizer's extra weight (``add_weight``), held by server 0."""

    def __init__(
        self,
        cluster: Cluster,
        optimizer: str,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
    ) -> None:
        self.cluster = cluster
        self.optimizer = optimizer
        self.name = name
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)

    def numpy(self) -> np.ndarray:
        return self.cluster.read_weight(self.optimizer, self.name)

    def assign(self, value: Any) -> None:
        self.cluster.assign_weight(self.optimizer, self.name, value)

    def __repr__(self) -> str:
        return f"<RemoteWeight {self.optimizer}/{self.name} shape={self.shape}>"


class Iterations(_Readable):
    """``optimizer.iterations``: the cluster's step counter of one optimizer.

    Reading it creates it (as in Keras, it then heads ``weights``).
    """

    name = "iter:0"
    shape = ()
    dtype = np.dtype(np.int64)

    def __init__(self, cluster: Cluster, optimizer: str) -> None:
        self.cluster = cluster
        self.optimizer = optimizer

    def numpy(self) -> np.int64:
        return np.int64(self.cluster.optimizer(self.optimizer, True).iterations)

    def assign(self, value: Any) -> None:
        self.cluster.set_iterations(self.optimizer, int(value))

    def __int__(self) -> int:
        return int(self.numpy())

    def __index__(self) -> int:
        return int(self.numpy())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Iterations):
            return (self.cluster, self.optimizer) == (other.cluster, other.optimizer)
        return bool(self.numpy() == other)

    def __hash__(self) -> int:
        return hash((id(self.cluster), self.optimizer))

    def __repr__(self) -> str:
        return f"<Iterations of {self.optimizer!r}: {int(self)}>"


def new_variable(
    name: str,
    initial_value: Any,
    shape: Sequence[int] | None,
    dtype: Any,
    initializer: str | dict,
) -> tuple[tuple[int, ...], np.ndarray | Any, np.ndarray | None, int]:
    """A new variable's ``(shape, dtype, initial value, seed)`` from what
    ``Cluster.variable`` is given, as ``tf.Variable`` infers them; a random
    initializer is seeded by the name (or its config's ``seed``)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a variable name is a non-empty string. Received: {name!r}")
    typed = hasattr(initial_value, "dtype")  # an array or a tensor
    if initial_value is not None:
        initial_value = np.asarray(initial_value)
    if dtype is None:
        dtype = inferred_dtype(initial_value if typed else None)
    dtype = np.dtype(dtype)
    if initial_value is not None:
        initial_value = initial_value.astype(dtype, copy=False)
        if shape is not None and tuple(shape) != initial_value.shape:
            raise ValueError(
                f"shape {tuple(shape)} does not match the initial value's shape "
                f"{initial_value.shape}"
            )
        shape = initial_value.shape
    if shape is None:
        raise ValueError("a variable needs a shape or an initial value")
    seed = zlib.crc32(name.encode())
    if isinstance(initializer, dict):
        seed = int(initializer.get("config", {}).get("seed") or seed)
    return tuple(int(d) for d in shape), dtype, initial_value, seed


def inferred_dtype(initial_value: np.ndarray | None) -> np.dtype:
    """A new variable's dtype when none is given, as ``tf.Variable`` infers it:
    an array's (or tensor's) floating dtype is kept; Python numbers and lists,
    and integer arrays, make float32 (the servers hold floating variables)."""
    if initial_value is not None and initial_value.dtype.kind == "f":
        return initial_value.dtype
    return np.dtype("float32")
