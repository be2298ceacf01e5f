"""Cluster: every operation across the servers a worker talks to.

Each variable lives where ``placement.place`` puts it, computed alike by
every worker given the same address list. Server 0
coordinates each optimizer: it hands out the step of every asynchronous
``apply_gradients`` call (so every server uses the same ``t`` and the counter
grows by exactly one per call) and keeps Keras's ``weights`` order. Calls to
several servers go out in parallel; one channel per server is reused by every
thread.
"""

from __future__ import annotations

import functools
import itertools
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from adamax_ps.client import errors
from adamax_ps.client.calls import CallAttempt, apply_call, assign_value, gather_rows
from adamax_ps.client.cluster_optimizers import OptimizerCalls
from adamax_ps.client.connection import open_transport, parse_addresses
from adamax_ps.client.discovery import (
    addresses_from_environment,
    replica_from_environment,
    token_from_environment,
    wire_from_environment,
)
from adamax_ps.client.placement import Placement, Slice, place
from adamax_ps.client.relayout import (
    FOLLOWING,
    RESCALE_WAIT,
    Follower,
    following,
    follows_rescale,
)
from adamax_ps.client.retry import RetryPolicy
from adamax_ps.client.tables import RemoteTable, create_table, discover_tables
from adamax_ps.client.transport import (
    Gradient,
    PushId,
    Read,
    ServerInfo,
    Transport,
    VariableSpec,
    new_client_id,
)
from adamax_ps.client.variables import RemoteVariable, new_variable
from adamax_ps.common.malloc import tune_malloc


class Cluster(OptimizerCalls):
    """The servers a worker talks to. Thread-safe; see the module docstring."""

    def __init__(
        self,
        addresses: str | Sequence[str],
        *,
        token: str | None = None,
        tls: Any = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        replica: int | None = None,
        wire_dtype: str | None = None,
    ) -> None:
        if wire_dtype not in (None, "float16", "bfloat16"):
            raise ValueError(
                f"wire_dtype is float16 or bfloat16 (or None: float32). "
                f"Received: {wire_dtype!r}"
            )
        self._open = functools.partial(
            open_transport, token=token, tls=tls, timeout=timeout, retry=retry
        )
        self.addresses = parse_addresses(addresses)
        self.transports: list[Transport] = [self._open(a) for a in self.addresses]
        self.size = len(self.transports)
        self.rescale_wait = RESCALE_WAIT  # seconds a call waits out a rescale
        self.client_id = new_client_id()
        # Synchronous mode: this worker's replica id (its rank), apart from
        # the exactly-once client id.
        self.replica = replica if replica is not None else replica_from_environment()
        # Rows and gradients of float32 variables travel so (gRPC); None: float32.
        self.wire_dtype = wire_dtype
        self._sequence = itertools.count()
        self._lock = threading.Lock()
        self._pool = _pool(self.size)
        self._placements: dict[str, Placement] = {}
        self._slotted: set[tuple[str, str]] = set()  # (optimizer, split variable)
        self._before_close: list[weakref.WeakMethod] = []
        self._retired: list[Transport] = []  # a rescale's old connections
        # Per optimizer: the step the coordinator handed out for the next call.
        self._ahead: dict[str, int] = {}
        tune_malloc()
        # Addresses from before a rescale: server 0 names the cluster's now.
        self.servers = following(self, self._check_view)

    # Cluster --------------------------------------------------------------------

    def _check_view(self) -> list[ServerInfo]:
        infos = self.map(lambda t: t.server_info(), self.transports)
        for index, info in enumerate(infos):
            if (info.server_index, info.num_servers) != (index, self.size):
                raise errors.ClusterViewError(
                    f"{info.address} says it is server {info.server_index} of "
                    f"{info.num_servers}, but was given as server {index} of "
                    f"{self.size}: every worker and server must share one cluster view"
                )
        return infos

    def relayout(self, addresses: Sequence[str]) -> None:
        """Take up a rescaled cluster's layout: connect to ``addresses`` and
        forget where variables were (found again on use)."""
        new = parse_addresses(addresses)
        transports = [self._open(a) for a in new]
        with self._lock:
            old, self.transports = self.transports, transports
            self.addresses, self.size = new, len(transports)
            self._placements.clear()
            self._slotted.clear()
            self._ahead.clear()
            pool, self._pool = self._pool, _pool(self.size)
        self.servers = self._check_view()
        pool.shutdown(wait=False)
        with self._lock:  # closed with the cluster: other threads may be
            self._retired += old  # in a call on them, which then follows

    def view(self, server: int) -> tuple[int, int]:
        return (server, self.size)

    @property
    def synchronous(self) -> bool:
        return self.servers[0].replicas > 0

    def map(self, fn, items) -> list:
        """``fn`` over ``items`` in parallel (in order), the first on this thread.

        Called from one of the pool's own threads (a nested fan-out), it runs
        the items on that thread: waiting on the pool from inside it could
        take every worker and deadlock. So it does at the interpreter's exit,
        when the pool takes no more work.
        """
        items = list(items)
        if len(items) <= 1 or getattr(_worker, "active", False):
            return [fn(item) for item in items]
        try:
            futures = [self._pool.submit(fn, item) for item in items[1:]]
        except RuntimeError:  # the interpreter is exiting: one by one, here
            return [fn(item) for item in items]
        first = fn(items[0])
        return [first] + [f.result() for f in futures]

    def next_push_id(self) -> PushId:
        with self._lock:
            return PushId(self.client_id, next(self._sequence))

    def before_close(self, method: Callable[[], None]) -> None:
        """Call the bound ``method`` first when this cluster closes, while its
        object lives (a framework optimizer sends the push it holds back)."""
        with self._lock:
            self._before_close.append(weakref.WeakMethod(method))

    def close(self) -> None:
        with self._lock:
            hooks, self._before_close = self._before_close, []
        for hook in hooks:
            method = hook()
            if method is not None:
                method()
        self._pool.shutdown(wait=True)
        for transport in self.transports + self._retired:
            transport.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Cluster({','.join(self.addresses)!r})"

    # Variables ------------------------------------------------------------------

    @follows_rescale
    def variable(
        self,
        name: str,
        initial_value: Any = None,
        *,
        shape: Sequence[int] | None = None,
        dtype: Any = None,
        initializer: str | dict = "zeros",
    ) -> RemoteVariable:
        """Create the variable, or attach to it if it exists with the same shape
        and dtype (otherwise a ``ValueError``).

        The dtype is ``dtype`` when given, else the initial value's (as
        ``tf.Variable``: a float64 array makes a float64 variable, Python
        numbers make float32), else float32. Initial values of any size work
        (large ones stream). Large variables are split by rows over the
        servers. Random initializers are seeded by the name (or the
        initializer config's ``seed``), so every run starts the same."""
        shape, dtype, initial_value, seed = new_variable(
            name, initial_value, shape, dtype, initializer
        )
        placement = self.create_variable(
            name, shape, dtype, initial_value, initializer, seed
        )
        return RemoteVariable(self, name, placement.shape, placement.dtype)

    def placement(self, name: str) -> Placement:
        """Where ``name`` lives (asking the servers about variables that other
        workers created)."""
        with self._lock:
            placement = self._placements.get(name)
        if placement is None:
            self._discover()
            with self._lock:
                placement = self._placements.get(name)
        if placement is None:
            raise errors.VariableNotFoundError(f"variable {name!r} does not exist")
        return placement

    @follows_rescale
    def embedding_table(
        self,
        name: str,
        dim: int,
        *,
        dtype: Any = "float32",
        initializer: str | dict = "zeros",
        admission: dict | None = None,
        eviction: dict | None = None,
        capacity: int | None = None,
    ) -> RemoteTable:
        """Create a hash-keyed table of ``dim``-wide rows (any int64 key), or
        attach to it with the same settings; see ``client.tables``."""
        return create_table(
            self,
            name,
            dim,
            dtype=dtype,
            initializer=initializer,
            admission=admission,
            eviction=eviction,
            capacity=capacity,
        )

    def add_placement(self, placement: Placement) -> None:
        with self._lock:
            self._placements.setdefault(placement.name, placement)

    def _discover(self) -> None:
        discover_tables(self)
        found: dict[str, Placement] = {}
        for infos in self.map(lambda t: t.list_variables(), self.transports):
            for info in infos:
                found[info.name] = place(
                    info.name, info.global_shape, info.dtype, self.size
                )
        with self._lock:
            for name, placement in found.items():
                self._placements.setdefault(name, placement)

    @follows_rescale
    def create_variable(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
        initial_value: np.ndarray | None,
        initializer: str | dict,
        seed: int,
    ) -> Placement:
        """Create (or attach to) the variable on the servers holding it."""
        placement = place(name, shape, dtype, self.size)

        def create(piece: Slice) -> None:
            value = None
            if initial_value is not None:
                value = initial_value[piece.lo : piece.hi] if shape else initial_value
            spec = VariableSpec(
                name,
                shape,
                placement.dtype,
                piece.lo,
                piece.hi - piece.lo,
                value,
                initializer,
                seed,
            )
            self.transports[piece.server].create_variables(
                self.view(piece.server), [spec]
            )

        self.map(create, placement.slices)
        with self._lock:
            self._placements[name] = placement
        return placement

    @follows_rescale
    def read(self, name: str, *, optimizer: str = "", slot: str = "") -> np.ndarray:
        """A variable's (or one slot's) whole value, assembled from its slices."""
        placement = self.placement(name)
        parts = self.map(
            lambda s: self.transports[s.server].read(
                name,
                optimizer=optimizer,
                slot=slot,
                expected_bytes=placement.nbytes(s.hi - s.lo),
                view=self.view(s.server),
            ),
            placement.slices,
        )
        if not placement.split:
            return parts[0]
        return np.concatenate(parts)

    @follows_rescale
    def gather(
        self, name: str, rows: np.ndarray, *, optimizer: str = "", slot: str = ""
    ) -> np.ndarray:
        """Selected rows, fetched only from the servers that hold them (a
        variable's in ``wire_dtype`` when set: a worker's batch rows)."""
        return gather_rows(self, name, rows, optimizer, slot)

    @follows_rescale
    def assign(
        self, name: str, value: np.ndarray, *, optimizer: str = "", slot: str = ""
    ) -> None:
        """Replace a variable's (or one slot's) value on every server of it."""
        assign_value(self, name, value, optimizer, slot)

    # Pushes ---------------------------------------------------------------------

    def push(
        self,
        optimizer: str,
        gradients: list[Gradient],
        *,
        step: int | None = None,
        aggregated: bool = False,
        clipped: bool = False,
        reads: Sequence[Read] = (),
    ) -> tuple[int, int, list[np.ndarray]]:
        """Apply one call's gradients, in call order, on every server
        concerned; returns (step, iterations, the values of ``reads``).

        ``reads`` are variables (``rows`` None) or rows of them, read once the
        push is applied (``push_reads``): each server the push goes to answers
        its parts with it (over gRPC, in the same round trip).

        Asynchronous with several servers: every server holding a gradient,
        and the coordinator, apply the call with one step, handed out by the
        coordinator with this client's previous call (its answer's
        ``next_step``; the coordinator counts the call when it gets it), or,
        for a first call, reserved first (a round trip of its own).
        Synchronous: every server gets a push for ``step`` (empty if none of the
        call's rows are its), so every server's round completes.
        """
        # Made again after a rescale it meets, as the same call: same push
        # id, same step (a call the cut left half applied is completed).
        attempt = CallAttempt(self.next_push_id())
        follower = Follower(self)
        while True:
            try:
                return apply_call(
                    self,
                    optimizer,
                    gradients,
                    step=step,
                    aggregated=aggregated,
                    clipped=clipped,
                    reads=reads,
                    attempt=attempt,
                )
            except FOLLOWING as met:
                follower.follow(met)
            except (IndexError, KeyError):
                # Another thread took up a rescaled layout during this call
                # (its servers counted by the old one): made again.
                if not follower.moved():
                    raise

    def slotted(self, optimizer: str, placements: list[Placement]) -> set[str]:
        """Of these split variables, those whose slots ``optimizer`` made."""
        with self._lock:
            return {p.name for p in placements if (optimizer, p.name) in self._slotted}

    def take_step_ahead(self, optimizer: str) -> int | None:
        """The step the coordinator handed out for this client's next call."""
        with self._lock:
            return self._ahead.pop(optimizer, None)

    def note_call(
        self, optimizer: str, slotted: list[str], next_step: int | None
    ) -> None:
        """After a call: the split variables it made slots for, and the step
        handed out for the next call."""
        with self._lock:
            self._slotted.update((optimizer, name) for name in slotted)
            if next_step is not None:
                self._ahead[optimizer] = next_step

    @follows_rescale
    def checkpoint(self) -> list[dict[str, Any]]:
        """Ask every server to write a checkpoint now."""
        return self.map(lambda t: t.checkpoint(), self.transports)


_worker = threading.local()


def _mark_worker() -> None:
    _worker.active = True


def _pool(servers: int) -> ThreadPoolExecutor:
    """The threads that call several servers at once."""
    return ThreadPoolExecutor(
        max(2, servers), thread_name_prefix="cluster", initializer=_mark_worker
    )


_default: Cluster | None = None
_default_lock = threading.Lock()


def default_cluster() -> Cluster:
    """The cluster the environment names (``discovery``), connected once per
    process and shared by every optimizer and layer given no cluster."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Cluster(
                addresses_from_environment(),
                token=token_from_environment(),
                wire_dtype=wire_from_environment(),
            )
        return _default
