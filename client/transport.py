"""Transport: what the cluster layer needs from one server, whatever the
scheme, and the types its operations take and return.

A transport talks to one server (``grpc_transport.GrpcTransport``,
``http_transport.HttpTransport``). It sends tensors as raw bytes, retries what
is safe to retry (``retry.py``), and turns failures into
``adamax_ps.client.errors``. ``Gradient`` is the client's one gradient type,
from ``Adamax.apply_gradients`` to the wire.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

View = tuple[int, int]  # (server index, number of servers)


@dataclass(frozen=True)
class ServerInfo:
    address: str
    version: str
    server_index: int
    num_servers: int
    shards: int
    replicas: int
    replicas_to_aggregate: int
    ready: bool
    max_request_rows: int = 0  # 0: the server states no limit
    rescale_state: str = "serving"  # see server/rescale.py
    addresses: tuple[str, ...] = ()  # the cluster's, once a rescale placed it
    http_addresses: tuple[str, ...] = ()  # the same servers' HTTP addresses


@dataclass(frozen=True)
class VariableSpec:
    """A variable (or this server's rows of it) to create or attach to."""

    name: str
    global_shape: tuple[int, ...]
    dtype: np.dtype
    row_offset: int
    rows: int
    initial_value: np.ndarray | None = None
    initializer: str | dict = "zeros"
    seed: int = 0


@dataclass(frozen=True)
class VariableInfo:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    global_shape: tuple[int, ...]
    row_offset: int
    created: bool


@dataclass(frozen=True)
class OptimizerInfo:
    name: str
    config: dict[str, Any]
    iterations: int
    weights: list[tuple[str, str, str]]  # (kind, variable, name)
    slot_names: list[str]
    created: bool
    pushes: int


@dataclass(frozen=True)
class Gradient:
    """A gradient of one variable, or one server's share of it: dense when
    ``indices`` is None, else rows ``indices`` (of the variable, or local to
    the server's slice) with their ``values``."""

    variable: str
    values: np.ndarray
    indices: np.ndarray | None = None


@dataclass(frozen=True)
class PushId:
    client: str
    sequence: int


@dataclass(frozen=True)
class Read:
    """A read answered with a push: a variable's value (this server's slice
    of it), or the rows ``rows`` of it (local to the slice on the wire)."""

    variable: str
    rows: np.ndarray | None = None
    # "float16" or "bfloat16": a float32 variable's values travel so (rows).
    wire_dtype: str | None = None


@dataclass
class ApplyOptions:
    step: int | None = None
    aggregated: bool = False
    call_variables: Sequence[str] = field(default_factory=tuple)
    clipped: bool = False
    # Variables or rows (of this server's slices) read after the push is
    # applied, and answered with it: a worker's refresh in the same round trip.
    reads: Sequence[Read] = field(default_factory=tuple)
    # Synchronous mode: the worker's rank, its replica id on the servers.
    replica: int | None = None
    # Async cluster mode, to the coordinator: hand out the next call's step
    # (``Applied.next_step``); ``step`` was handed out so (count the call).
    reserve_next: bool = False
    step_reserved_ahead: bool = False


@dataclass(frozen=True)
class Applied:
    """A server's answer to a push: the step it used, its iterations after
    it, and the values of the push's ``reads``."""

    step: int
    iterations: int
    values: list[np.ndarray] = field(default_factory=list)
    next_step: int | None = None


class Transport(Protocol):
    """What the cluster layer needs from one server, whatever the scheme."""

    address: str

    def server_info(self) -> ServerInfo: ...
    def create_variables(
        self, view: View, specs: list[VariableSpec]
    ) -> list[VariableInfo]: ...
    def list_variables(self) -> list[VariableInfo]: ...
    def create_optimizer(self, view: View, config: dict) -> OptimizerInfo: ...
    def get_optimizer(
        self, name: str, create_iterations: bool = False
    ) -> OptimizerInfo: ...
    def reserve_step(
        self, view: View, optimizer: str, variables: Sequence[str], push_id: PushId
    ) -> int: ...
    def apply(
        self,
        view: View,
        optimizer: str,
        gradients: list[Gradient],
        push_id: PushId,
        options: ApplyOptions,
    ) -> Applied: ...
    def read(
        self,
        variable: str = "",
        *,
        optimizer: str = "",
        slot: str = "",
        rows: np.ndarray | None = None,
        weight: str = "",
        expected_bytes: int | None = None,
        wire_dtype: str | None = None,
        view: View | None = None,
    ) -> np.ndarray: ...
    def assign(
        self,
        view: View,
        value: np.ndarray,
        *,
        variable: str = "",
        optimizer: str = "",
        slot: str = "",
        weight: str = "",
    ) -> None: ...
    def set_iterations(self, view: View, optimizer: str, iterations: int) -> None: ...
    def add_slot(
        self, view: View, optimizer: str, variable: str, slot: str, initializer: str
    ) -> None: ...
    def add_weight(
        self,
        view: View,
        optimizer: str,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
        initializer: str,
    ) -> np.ndarray: ...
    def checkpoint(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


def new_client_id() -> str:
    """A fresh client id: pushes of different clients never share ids."""
    return uuid.uuid4().hex
