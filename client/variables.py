"""RemoteVariable, remote slots and weights, and IndexedSlices.

A ``RemoteVariable`` names a variable held by the cluster; reading it
(``numpy()``, ``np.asarray(var)``, ``gather(rows)``) fetches the current value,
``assign`` replaces it. ``IndexedSlices`` is a sparse gradient: rows
``indices`` of a variable with values ``values`` (``tf.IndexedSlices`` and any
object with ``.values``, ``.indices`` and ``.dense_shape`` work the same way).
"""

from __future__ import annotations

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
