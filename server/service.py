"""ParameterService: every domain rule of a server process, below any transport.

Creates and attaches variables and optimizers, applies pushes atomically and
exactly once (asynchronously, or per synchronous step), serves reads and
statistics, and writes and restores consistent checkpoints. The gRPC and HTTP
layers only translate to and from it; it never sees a proto message or an HTTP
request.

Push protocol (``apply``):

1. Exactly-once: a push id already answered returns that answer.
2. Validate every pair before anything changes: variable exists, dtype,
   shape, index dtype and range, finiteness (see ``NonFinitePolicy``).
3. Clip (Keras order) and sum duplicate sparse rows: pure work on the
   gradients, no lock held.
4. Take the locks of the shards the push touches (ascending), then take the
   step ``t`` from the optimizer: a push that shares a shard with another is
   applied entirely before or after it, in ``t`` order. Create slots for
   variables new to the optimizer, run the kernels on every shard in parallel,
   remember the answer, release.

A rejected push leaves every variable, slot and counter bit for bit as it was.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adamax_ps.common import keras
from adamax_ps.server import adamax, checkpoint, limits, persistence
from adamax_ps.server.errors import (
    CheckpointError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OptimizerExistsError,
    OptimizerNotFoundError,
    ParameterServerError,
    ResourceExhaustedError,
    SlotNotFoundError,
    StalePushError,
    VariableExistsError,
    VariableNotFoundError,
)
from adamax_ps.server.gradients import (
    DenseGradient,
    Gradient,
    PreparedGradient,
    SparseGradient,
)
from adamax_ps.server.gradients import (
    aggregate as aggregate_replicas,
)
from adamax_ps.server.hyperparams import AdamaxConfig
from adamax_ps.server.initializers import Initializer, parse_initializer
from adamax_ps.server.journal import Journal
from adamax_ps.server.metrics import Metrics
from adamax_ps.server.optimizers import OptimizerState, WeightRef
from adamax_ps.server.pushes import STEP, ApplyResult, PushId, PushLedger
from adamax_ps.server.stats import Stats, variable_stats
from adamax_ps.server.store import DEFAULT_SPLIT_BYTES, ShardedStore, VariableRecord
from adamax_ps.server.sync import SyncCoordinator, SyncSettings
from adamax_ps.server.validation import (
    NonFinitePolicy,
    check_gradient,
    check_indices,
    check_name,
    check_slice,
    numeric_array,
    shape_and_dtype,
)

log = logging.getLogger("adamax_ps.service")

__all__ = [
    "ApplyResult",
    "CheckpointInfo",
    "DenseGradient",
    "Gradient",
    "NonFinitePolicy",
    "ParameterService",
    "PushId",
    "ServiceSettings",
    "SparseGradient",
]


DEFAULT_MAX_REQUEST_ROWS = 1 << 20


@dataclass(frozen=True)
class ServiceSettings:
    """Settings of a parameter service (the CLI fills them from flags/env)."""

    shards: int | None = None
    split_bytes: int = DEFAULT_SPLIT_BYTES
    nonfinite: NonFinitePolicy = NonFinitePolicy.REJECT
    sync: SyncSettings | None = None
    checkpoint_dir: Path | None = None
    keep_checkpoints: int = 2
    ledger_per_client: int = 1024
    ledger_max_clients: int = 4096
    server_index: int = 0
    num_servers: int = 1
    durability: str = "checkpoint"  # or "wal": see journal.py
    memory_limit: int | None = None  # state bytes; default: limits.STATE_FRACTION
    max_inflight_bytes: int | None = None  # default: limits.INFLIGHT_FRACTION
    max_request_rows: int = DEFAULT_MAX_REQUEST_ROWS  # per gather or read


class ParameterService:
    """The domain core of one server process. Thread-safe."""

    def __init__(self, settings: ServiceSettings | None = None) -> None:
        self.settings = settings or ServiceSettings()
        self.store = ShardedStore(self.settings.shards, self.settings.split_bytes)
        memory = limits.available_memory()
        self.memory = limits.MemoryBudget(
            self.settings.memory_limit or int(memory * limits.STATE_FRACTION)
        )
        self.inflight = limits.InflightBudget(
            self.settings.max_inflight_bytes or int(memory * limits.INFLIGHT_FRACTION)
        )
        self.ledger = PushLedger(
            self.settings.ledger_per_client, self.settings.ledger_max_clients
        )
        self.sync = SyncCoordinator(self.settings.sync) if self.settings.sync else None
        self._optimizers: dict[str, OptimizerState] = {}
        self._optimizers_lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        self._checkpoint_sequence = 0
        self.last_checkpoint: CheckpointInfo | None = None
        self.replayed = 0  # write-ahead log records replayed at restore
        if self.settings.durability not in ("checkpoint", "wal"):
            raise ValueError(
                f"durability is 'checkpoint' or 'wal'. Received: "
                f"{self.settings.durability!r}"
            )
        wal_folder = None
        if self.settings.durability == "wal":
            if self.settings.checkpoint_dir is None:
                raise ValueError("durability 'wal' needs a checkpoint folder")
            wal_folder = Path(self.settings.checkpoint_dir) / "wal"
        self.journal = Journal(wal_folder)
        self._stop_periodic: threading.Event | None = None
        self._periodic: threading.Thread | None = None
        self.metrics = Metrics()
        self.metrics.watch(self)  # last: it reads the fields above
        self.journal.on_stop.append(lambda reason: self.metrics.writes_stopped.inc())

    @property
    def writes_stopped(self) -> str | None:
        """Why this server refuses every change (fail-stop), or None."""
        return self.journal.failure

    def check_view(self, server_index: int, num_servers: int) -> None:
        """Refuse a client whose idea of the cluster differs from this server's."""
        settings = self.settings
        if (server_index, num_servers) != (settings.server_index, settings.num_servers):
            raise FailedPreconditionError(
                f"cluster view mismatch: this server is {settings.server_index} of "
                f"{settings.num_servers}, the client addressed it as {server_index} "
                f"of {num_servers}"
            )

    # Variables --------------------------------------------------------------------

    def create_variable(
        self,
        name: str,
        *,
        shape: Sequence[int] | None = None,
        dtype: Any = None,
        initial_value: np.ndarray | None = None,
        initializer: str | Mapping[str, Any] = "zeros",
        seed: int | None = None,
        global_shape: Sequence[int] | None = None,
        row_offset: int = 0,
        reserved: bool = False,
    ) -> tuple[VariableRecord, bool]:
        """Create the variable, or attach to it if it exists with the same shape
        and dtype. Returns ``(record, created)``.

        In a cluster a server may hold rows ``[row_offset, row_offset + rows)``
        of a larger variable of ``global_shape``; initializers then draw those
        rows exactly as for the whole variable. Its bytes are counted in the
        memory budget before anything is allocated (``reserved``: they already
        are, by ``create_variables``; given back if it is not created).
        """
        self.journal.check()
        shape, dtype, initial_value, global_shape = self._check_variable(
            name, shape, dtype, initial_value, initializer, global_shape, row_offset
        )
        nbytes = math.prod(shape) * dtype.itemsize
        existing = self.store.get(name)
        if existing is not None:
            if reserved:
                self.memory.release(nbytes)
            return self._attach(existing, shape, dtype), False
        if not reserved:
            self.memory.reserve(nbytes, f"variable {name!r} of shape {shape} ({dtype})")
        try:
            record, logged = self._add_variable(
                name,
                shape,
                dtype,
                initial_value,
                initializer,
                seed,
                global_shape,
                row_offset,
            )
        except BaseException:
            self.memory.release(nbytes)
            raise
        if record.name != name or logged is None:  # made meanwhile by another call
            self.memory.release(nbytes)
            return self._attach(record, shape, dtype), False
        self.journal.wait(logged)
        return record, True

    def _add_variable(
        self,
        name,
        shape,
        dtype,
        initial_value,
        initializer,
        seed,
        global_shape,
        row_offset,
    ) -> tuple[VariableRecord, int | None]:
        """Allocate, fill and register a checked variable; its log record's
        number, or None when a variable of that name was registered first."""
        if initial_value is None:
            seed = secrets.randbits(63) if seed is None else int(seed)
            whole = Initializer(initializer, global_shape, seed)

            def fill(out: np.ndarray, lo: int) -> None:
                whole.fill(out, row_offset + lo)

            description: str | dict = (
                initializer if isinstance(initializer, str) else dict(initializer)
            )
        else:
            seed, description = 0, "initial_value"

            def fill(out: np.ndarray, lo: int) -> None:
                out[...] = (
                    initial_value[lo : lo + out.shape[0]] if shape else initial_value
                )

        record = VariableRecord(
            name,
            shape,
            dtype,
            self.store.placement(name, shape, dtype),
            description,
            seed,
            global_shape,
            row_offset,
        )
        logged = [0]

        def log() -> None:
            header = {
                "name": name,
                "shape": list(shape),
                "dtype": dtype.name,
                "initializer": description if initial_value is None else "zeros",
                "seed": seed,
                "global_shape": list(global_shape),
                "row_offset": row_offset,
            }
            initial = [initial_value] if initial_value is not None else []
            logged[0] = self.journal.write("variable", header, initial)

        try:
            stored = self.store.add(record, fill, log)
        except (MemoryError, ValueError) as e:
            raise InvalidArgumentError(
                f"variable {name!r} of shape {shape} ({dtype}) cannot be allocated: {e}"
            ) from None
        if stored is not record:
            return stored, None
        return record, logged[0]

    def _check_size(self, what: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        """Refuse at once what could never fit in the memory budget (the kernel
        overcommits: a huge array would be granted, then kill the server)."""
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > self.memory.limit:
            self.memory.reserve(nbytes, f"{what} of shape {shape} ({dtype})")

    def create_variables(
        self, specs: Sequence[Mapping[str, Any]]
    ) -> list[tuple[VariableRecord, bool]]:
        """``create_variable(**spec)`` for each spec, all or nothing: every spec
        is checked (names, shapes, dtypes, initializers, sizes, clashes with
        existing variables and with each other, the memory they need together)
        before any is created."""
        self.journal.check()
        wanted: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        for spec in specs:
            args = dict(spec)
            name = args.pop("name", None)
            args.pop("seed", None)
            shape, dtype, _, _ = self._check_variable(
                name,
                args.get("shape"),
                args.get("dtype"),
                args.get("initial_value"),
                args.get("initializer", "zeros"),
                args.get("global_shape"),
                args.get("row_offset", 0),
            )
            existing = self.store.get(name)
            if existing is not None:
                self._attach(existing, shape, dtype)
            if wanted.setdefault(name, (shape, dtype)) != (shape, dtype):
                raise VariableExistsError(
                    f"variable {name!r} is asked for twice with different shapes "
                    "or dtypes"
                )
        new = {
            name: math.prod(shape) * dtype.itemsize
            for name, (shape, dtype) in wanted.items()
            if self.store.get(name) is None
        }
        self.memory.reserve(
            sum(new.values()), f"{len(new)} new variable(s) {sorted(new)}"
        )
        results = []
        try:
            for spec in specs:
                reserved = new.pop(spec["name"], None) is not None
                results.append(self.create_variable(**spec, reserved=reserved))
        finally:
            self.memory.release(sum(new.values()))  # those never reached
        return results

    def _check_variable(
        self, name, shape, dtype, initial_value, initializer, global_shape, row_offset
    ):
        """The checked ``(shape, dtype, initial_value, global_shape)`` of a
        variable to create; ``InvalidArgumentError`` naming what is wrong."""
        check_name("variable", name)
        shape, dtype, initial_value = shape_and_dtype(shape, dtype, initial_value)
        global_shape = check_slice(shape, global_shape, row_offset)
        self._check_size(f"variable {name!r}", shape, dtype)
        if initial_value is None:
            parse_initializer(initializer)
        return shape, dtype, initial_value, global_shape

    @staticmethod
    def _attach(record: VariableRecord, shape: tuple[int, ...], dtype: np.dtype):
        if record.shape != shape or record.dtype != dtype:
            raise VariableExistsError(
                f"variable {record.name!r} exists with shape {record.shape} and dtype "
                f"{record.dtype}. Requested: shape {shape}, dtype {dtype}"
            )
        return record

    def variable(self, name: str) -> VariableRecord:
        record = self.store.get(name)
        if record is None:
            raise VariableNotFoundError(f"variable {name!r} does not exist")
        return record

    def variables(self) -> list[VariableRecord]:
        return self.store.records()

    def pull(self, name: str, *, optimizer: str | None = None, slot: str | None = None):
        """A copy of a variable's value, or of one of its slots."""
        record = self.variable(name)
        return self.store.read(record, self._slot_key(record, optimizer, slot))

    @contextmanager
    def reading(
        self,
        name: str,
        *,
        optimizer: str | None = None,
        slot: str | None = None,
        rows: Any = None,
    ) -> Iterator[np.ndarray]:
        """``pull`` (or ``gather`` of ``rows``) for a transport to send: the
        copy's bytes count in the in-flight budget until the block ends."""
        record = self.variable(name)
        if rows is None:
            nbytes = record.nbytes
        else:
            rows = self._request_rows(record, rows)
            nbytes = len(rows) * record.row_size * record.dtype.itemsize
        with self.inflight.held(nbytes, f"reading {name!r}"):
            if rows is None:
                yield self.pull(name, optimizer=optimizer, slot=slot)
            else:
                yield self.gather(name, rows, optimizer=optimizer, slot=slot)

    def _request_rows(self, record: VariableRecord, rows: Any) -> np.ndarray:
        """Row numbers of one read, checked against the variable and the
        per-request limit (``--max-request-rows``)."""
        rows = np.asarray(rows)
        limit = self.settings.max_request_rows
        if rows.size > limit:
            raise ResourceExhaustedError(
                f"a read asks for {rows.size} rows of {record.name!r}; one request "
                f"may ask for at most {limit} (--max-request-rows): split it"
            )
        return check_indices(record, rows, "rows")

    def gather(
        self,
        name: str,
        rows: Any,
        *,
        optimizer: str | None = None,
        slot: str | None = None,
    ) -> np.ndarray:
        """Copies of selected rows of a variable or slot."""
        record = self.variable(name)
        rows = self._request_rows(record, rows)
        return self.store.gather(record, rows, self._slot_key(record, optimizer, slot))

    def assign(
        self,
        name: str,
        value: Any,
        *,
        optimizer: str | None = None,
        slot: str | None = None,
    ) -> None:
        """Replace a variable's value, or one of its slots (shape must match;
        values are cast to the variable's dtype)."""
        self.journal.check()
        record = self.variable(name)
        key = self._slot_key(record, optimizer, slot)
        value = numeric_array(value, "value")
        if value.shape != record.shape:
            raise InvalidArgumentError(
                f"value for {name!r} must have shape {record.shape}. "
                f"Received: {value.shape}"
            )
        value = value.astype(record.dtype, copy=False)
        with self.store.locked(record.shards):
            for part in self.store.parts(record):
                target = part.value if key is None else part.slots[key]
                target[...] = value[part.lo : part.hi] if record.shape else value
            logged = self.journal.write(
                "assign",
                {"variable": name, "optimizer": optimizer, "slot": slot},
                [value],
            )
        self.journal.wait(logged)

    def weight(self, optimizer: str, name: str) -> np.ndarray:
        """A copy of an optimizer's extra weight (``add_weight``)."""
        state = self.optimizer(optimizer)
        with state.lock:
            if name not in state.extra_weights:
                raise NotFoundError(f"optimizer {optimizer!r} has no weight {name!r}")
            return state.extra_weights[name].copy()

    def assign_weight(self, optimizer: str, name: str, value: Any) -> None:
        self.journal.check()
        state = self.optimizer(optimizer)
        value = numeric_array(value, "value")
        with state.lock:
            if name not in state.extra_weights:
                raise NotFoundError(f"optimizer {optimizer!r} has no weight {name!r}")
            target = state.extra_weights[name]
            if value.shape != target.shape:
                raise InvalidArgumentError(
                    f"value for weight {name!r} must have shape {target.shape}. "
                    f"Received: {value.shape}"
                )
            target[...] = value
            logged = self.journal.write(
                "assign_weight", {"optimizer": optimizer, "name": name}, [target]
            )
        self.journal.wait(logged)

    def _slot_key(self, record, optimizer, slot) -> tuple[str, str] | None:
        if optimizer is None and slot is None:
            return None
        if optimizer is None or slot is None:
            raise InvalidArgumentError(
                "a slot read needs both optimizer and slot names"
            )
        state = self.optimizer(optimizer)
        with state.lock:
            has = slot in state.slotted.get(record.name, ())
        if not has:
            raise SlotNotFoundError(
                f"optimizer {optimizer!r} has no slot {slot!r} for variable "
                f"{record.name!r}"
            )
        return (optimizer, slot)

    # Optimizers ---------------------------------------------------------------------

    def create_optimizer(
        self, config: AdamaxConfig | Mapping[str, Any]
    ) -> tuple[OptimizerState, bool]:
        """Create the optimizer, or attach to one of that name with the same config."""
        if not isinstance(config, AdamaxConfig):
            try:
                config = AdamaxConfig.from_config(config)
            except (TypeError, ValueError) as e:
                raise InvalidArgumentError(f"bad optimizer config: {e}") from None
        with self._optimizers_lock:
            state = self._optimizers.get(config.name)
            if state is None:
                self.journal.check()
                state = self._optimizers[config.name] = OptimizerState(config)
                logged = self.journal.write(
                    "optimizer", {"config": config.get_config()}
                )
            else:
                logged = None
        if logged is not None:
            self.journal.wait(logged)
            return state, True
        if state.config.get_config() != config.get_config():
            raise OptimizerExistsError(
                f"optimizer {config.name!r} exists with another config: "
                f"{state.config.get_config()}. Requested: {config.get_config()}"
            )
        return state, False

    def optimizer(self, name: str) -> OptimizerState:
        with self._optimizers_lock:
            state = self._optimizers.get(name)
        if state is None:
            raise OptimizerNotFoundError(f"optimizer {name!r} does not exist")
        return state

    def optimizers(self) -> list[OptimizerState]:
        with self._optimizers_lock:
            return list(self._optimizers.values())

    def get_config(self, optimizer: str) -> dict[str, Any]:
        state = self.optimizer(optimizer)
        with state.lock:
            return state.config.get_config(hypers_created=state.hypers_created)

    def iterations(self, optimizer: str) -> int:
        """The optimizer's counter (reading it creates it, as in Keras: it then
        heads ``weights``, a change that is logged like any other)."""
        state = self.optimizer(optimizer)
        logged = 0
        with state.lock:
            if not state.iterations_created:
                self.journal.check()
                state.create_iterations()
                logged = self.journal.write(
                    "iterations",
                    {"optimizer": optimizer, "iterations": state.iterations},
                )
            iterations = state.iterations
        self.journal.wait(logged)
        return iterations

    def slot_names(self, optimizer: str) -> list[str]:
        state = self.optimizer(optimizer)
        with state.lock:
            return list(state.slot_names)

    def weight_refs(self, optimizer: str) -> list[WeightRef]:
        state = self.optimizer(optimizer)
        with state.lock:
            return list(state.weights)

    def get_weights(self, optimizer: str) -> list[np.ndarray]:
        """Keras ``get_weights()``: iterations, then slots in creation order."""
        state = self.optimizer(optimizer)
        with state.lock:
            refs = list(state.weights)
            iterations = state.iterations
        return [self._read_weight(state, ref, iterations) for ref in refs]

    def _read_weight(self, state: OptimizerState, ref: WeightRef, iterations: int):
        if ref.kind == "iterations":
            return np.asarray(iterations, np.int64)
        if ref.kind == "weight":
            with state.lock:
                return state.extra_weights[ref.name].copy()
        return self.store.read(self.variable(ref.variable), (state.name, ref.name))

    def set_weights(self, optimizer: str, weights: Sequence[Any]) -> None:
        """Keras ``set_weights()``: checks length, then shapes, then assigns all
        (one log record holds them all)."""
        self.journal.check()
        state = self.optimizer(optimizer)
        with state.lock:
            refs = list(state.weights)
        current = [self._weight_shape(state, ref) for ref in refs]
        try:
            arrays = keras.set_weights_arrays(state.name, current, weights)
        except ValueError as e:
            raise InvalidArgumentError(str(e)) from None
        records = {
            r.variable: self.variable(r.variable) for r in refs if r.kind == "slot"
        }
        shards = {s for record in records.values() for s in record.shards}
        with self.store.locked(shards), state.lock:
            for ref, array in zip(refs, arrays, strict=True):
                if ref.kind == "iterations":
                    state.iterations = int(array)
                elif ref.kind == "weight":
                    target = state.extra_weights[ref.name]
                    target[...] = array.astype(target.dtype)
                else:
                    record = records[ref.variable]
                    for part in self.store.parts(record):
                        value = array[part.lo : part.hi] if record.shape else array
                        part.slots[(state.name, ref.name)][...] = value
            logged = self.journal.write("weights", {"optimizer": optimizer}, arrays)
        self.journal.wait(logged)

    def _weight_shape(self, state: OptimizerState, ref: WeightRef) -> tuple[int, ...]:
        if ref.kind == "iterations":
            return ()
        if ref.kind == "weight":
            return state.extra_weights[ref.name].shape
        return self.variable(ref.variable).shape

    def get_slot(self, optimizer: str, variable: str, slot: str) -> np.ndarray:
        return self.pull(variable, optimizer=optimizer, slot=slot)

    def add_slot(
        self,
        optimizer: str,
        variable: str,
        slot: str,
        initializer: str = "zeros",
    ) -> bool:
        """Keras ``add_slot``: a slot of a variable, if it does not exist yet.

        A server holding (rows of) the variable makes the slot's arrays; the
        coordinator of a cluster (server 0) appends it to ``weights`` and the
        slot names, whether it holds the variable or not. A single server does
        both. Returns whether anything was added.
        """
        check_name("slot", slot)
        self.journal.check()
        state = self.optimizer(optimizer)
        create = self.store.get(variable) is not None
        record = self.settings.server_index == 0
        if not create and self.settings.num_servers == 1:
            self.variable(variable)  # raises VariableNotFoundError
        added = False
        logged = 0
        header = {
            "optimizer": optimizer,
            "variable": variable,
            "slot": slot,
            "initializer": initializer,
        }
        if create:
            variable_record = self.variable(variable)
            fill = Initializer(initializer, variable_record.global_shape, 0).fill
            with self.store.locked(variable_record.shards), state.lock:
                if slot not in state.slotted.get(variable, ()):
                    self.memory.reserve(
                        variable_record.nbytes, f"slot {slot!r} of {variable!r}"
                    )
                    for part in self.store.parts(variable_record):
                        array = np.empty_like(part.value)
                        fill(array, variable_record.row_offset + part.lo)
                        part.slots[(state.name, slot)] = array
                    state.slotted.setdefault(variable, set()).add(slot)
                    added = True
                    if not record:
                        logged = self.journal.write("slot", header)
        if record:
            ref = WeightRef("slot", variable, slot)
            with state.lock:
                if ref not in state.weights:
                    state.weights.append(ref)
                    added = True
                if slot not in state.slot_names:
                    state.slot_names.append(slot)
                    state.slot_initializers[slot] = initializer
                if added:  # replaying add_slot is idempotent: one record covers both
                    logged = self.journal.write("slot", header)
        self.journal.wait(logged)
        return added

    def add_weight(
        self,
        optimizer: str,
        name: str,
        shape: Sequence[int] = (),
        dtype: Any = "float32",
        initializer: str = "zeros",
    ) -> np.ndarray:
        """Keras ``add_weight`` on an optimizer: an extra weight in ``weights``."""
        check_name("weight", name)
        self.journal.check()
        state = self.optimizer(optimizer)
        shape, dtype, _ = shape_and_dtype(shape, dtype, None)
        with state.lock:
            if name in state.extra_weights:
                return state.extra_weights[name].copy()
        nbytes = math.prod(shape) * dtype.itemsize
        self.memory.reserve(nbytes, f"weight {name!r} of shape {shape} ({dtype})")
        try:
            value = np.empty(shape, dtype)
        except (MemoryError, ValueError) as e:
            self.memory.release(nbytes)
            raise InvalidArgumentError(
                f"weight {name!r} of shape {shape} cannot be allocated: {e}"
            ) from None
        Initializer(initializer, shape, 0).fill(value)
        logged = 0
        with state.lock:
            if name in state.extra_weights:
                self.memory.release(nbytes)  # added meanwhile
            else:
                state.extra_weights[name] = value
                state.weights.append(WeightRef("weight", name=name))
                logged = self.journal.write(
                    "weight",
                    {
                        "optimizer": optimizer,
                        "name": name,
                        "shape": list(shape),
                        "dtype": dtype.name,
                        "initializer": initializer,
                    },
                )
            current = state.extra_weights[name].copy()
        self.journal.wait(logged)
        return current

    # Pushes ---------------------------------------------------------------------

    def apply(
        self,
        optimizer: str,
        gradients: Sequence[Gradient],
        push_id: PushId | None = None,
        *,
        step: int | None = None,
        aggregate: bool = True,
        call_variables: Sequence[str] | None = None,
        clipped: bool = False,
    ) -> ApplyResult:
        """Apply one push (one ``apply_gradients`` call) to all of its variables
        or to none, exactly once per push id.

        Asynchronous mode: the server takes the step itself, unless ``step`` is
        given (in a cluster, the step the coordinator reserved for the call;
        the counter here then only moves forward to ``step + 1``).
        Synchronous mode: ``step`` is required (the iterations the gradients
        were computed at) and the push waits for the other replicas of that
        step, empty pushes included; ``aggregate=False`` marks a push the
        workers already summed themselves, applied at once as the whole step.
        ``call_variables`` names every variable of the call, on every server,
        for the ``weights`` order (default: this push's variables).
        ``clipped``: the sender already clipped the whole call (Keras order), so
        the optimizer's clipping is not applied again.
        """
        started = time.perf_counter()
        if step is not None and (not isinstance(step, int) or step < 0):
            raise InvalidArgumentError(
                f"a step is a non-negative integer. Received: {step}"
            )
        try:
            result = self._apply(
                optimizer, gradients, push_id, step, aggregate, call_variables, clipped
            )
        except ParameterServerError as e:
            self.metrics.rejected.labels(type(e).__name__).inc()
            if isinstance(e, StalePushError):
                self.metrics.stale.inc()
            raise
        mode = "sync" if self.sync is not None else "async"
        self.metrics.apply_seconds.labels(mode).observe(time.perf_counter() - started)
        self.metrics.pushes.labels(optimizer).inc()
        return result

    def _apply(
        self, optimizer, gradients, push_id, step, aggregate, call_variables, clipped
    ) -> ApplyResult:
        state = self.optimizer(optimizer)
        if push_id is not None:
            answer = self.ledger.begin(push_id)
            if answer is not None:
                self.journal.wait(answer.record)  # never repeat one not on disk
                return answer
        try:
            self.journal.check()
            pairs = self._validate(gradients)
            names = list(call_variables or [p.record.name for p in pairs])
            if self.sync is not None:
                return self._apply_sync(state, pairs, push_id, step, aggregate, names)
            if not pairs and not names:  # Keras: apply_gradients([]) is a no-op
                with state.lock:
                    return ApplyResult(state.name, state.iterations, state.iterations)
            transformed = self._transform(state, pairs, clip=not clipped)
            return self._apply_pairs(state, transformed, [push_id], step, False, names)
        except BaseException:
            if push_id is not None:
                self.ledger.abandon(push_id)
            raise

    def reserve_step(
        self,
        optimizer: str,
        variables: Sequence[str],
        push_id: PushId | None = None,
        *,
        step: int | None = None,
    ) -> int:
        """Coordinator of a cluster: take the step of one ``apply_gradients``
        call (its servers then apply with it) and record its variables'
        ``weights`` order. Exactly once per push id, like a push. (``step``:
        the step taken, when the write-ahead log replays this call.)"""
        if self.settings.server_index != 0:
            raise FailedPreconditionError(
                "steps are reserved at server 0 of the cluster; this is server "
                f"{self.settings.server_index}"
            )
        state = self.optimizer(optimizer)
        if push_id is not None:
            answer = self.ledger.begin(push_id, STEP)
            if answer is not None:
                self.journal.wait(answer.record)
                return answer.step
        try:
            self.journal.check()
        except BaseException:
            if push_id is not None:
                self.ledger.abandon(push_id, STEP)
            raise
        with state.lock:
            step = state.iterations if step is None else step
            state.create_iterations()
            state.hypers_created = True
            state.record_call(list(variables))
            state.iterations = max(state.iterations, step + 1)
            logged = self.journal.write(
                "reserve",
                {
                    "optimizer": state.name,
                    "variables": list(variables),
                    "step": step,
                    "push_id": [push_id.client, push_id.sequence] if push_id else None,
                },
            )
            if push_id is not None:
                result = ApplyResult(state.name, step, step + 1, logged)
                self.ledger.complete(push_id, result, STEP)
        self.journal.wait(logged)
        return step

    def set_iterations(self, optimizer: str, iterations: int) -> None:
        """Set the counter (``set_weights`` on every server of a cluster)."""
        if not isinstance(iterations, int) or not 0 <= iterations < 1 << 63:
            raise InvalidArgumentError(
                "iterations must be a non-negative 64-bit integer. "
                f"Received: {iterations!r}"
            )
        self.journal.check()
        state = self.optimizer(optimizer)
        with state.lock:
            state.create_iterations()
            state.iterations = iterations
            logged = self.journal.write(
                "iterations", {"optimizer": optimizer, "iterations": iterations}
            )
        self.journal.wait(logged)

    def _apply_sync(self, state, pairs, push_id, step, aggregate, names) -> ApplyResult:
        if step is None:
            raise InvalidArgumentError(
                "this server runs synchronous training: a push must carry the step "
                "(iterations) its gradients were computed at"
            )
        if push_id is None:
            raise InvalidArgumentError(
                "synchronous pushes need a push id: its client id names the replica"
            )
        with state.lock:
            current = state.iterations
        if not aggregate:
            self.sync.close_step(state.name, step, current)
            try:
                transformed = self._transform(state, pairs)
                return self._apply_pairs(
                    state, transformed, [push_id], step, True, names
                )
            except BaseException:
                self.sync.reopen(state.name, step)
                raise

        def apply_round(step: int, contributions: dict[str, tuple]) -> ApplyResult:
            replicas = sorted(contributions)
            summed = aggregate_replicas(
                [contributions[r][1] for r in replicas], self.settings.sync.average
            )
            ids = [contributions[r][0] for r in replicas]
            every = [n for r in replicas for n in contributions[r][2]]
            transformed = self._transform(state, summed)
            return self._apply_pairs(state, transformed, ids, step, True, every)

        self.metrics.sync_waits.inc()
        return self.sync.contribute(
            state.name,
            step,
            current,
            push_id.client,
            (push_id, pairs, names),
            apply_round,
        )

    def _validate(self, gradients: Sequence[Gradient]) -> list[PreparedGradient]:
        policy = self.settings.nonfinite
        return [check_gradient(self.variable(g.variable), g, policy) for g in gradients]

    def _transform(
        self, state: OptimizerState, pairs: list[PreparedGradient], clip: bool = True
    ) -> list[PreparedGradient]:
        """Clip (Keras order, raw sparse values), then sum duplicate rows."""
        if clip and state.config.clips:
            try:
                clipped = state.config.clip([p.gradient for p in pairs])
            except ValueError as e:
                raise InvalidArgumentError(str(e)) from None
            pairs = [p.with_gradient(g) for p, g in zip(pairs, clipped, strict=True)]
        return [p.deduplicated() for p in pairs]

    def _apply_pairs(
        self,
        state: OptimizerState,
        pairs: list[PreparedGradient],
        push_ids: Sequence[PushId | None],
        step: int | None,
        exact: bool,
        call_variables: list[str],
    ) -> ApplyResult:
        """Take the push's shards, its step, then update every shard in parallel.

        ``step`` None: take the optimizer's next step. ``exact``: the step must
        be the optimizer's next (synchronous mode). Otherwise a given step is
        used as is and the counter only moves forward.
        """
        shards = set().union(*(p.shards() for p in pairs))
        with self.store.locked(shards):
            with state.lock:
                if step is None:
                    step = state.iterations
                elif exact and step != state.iterations:
                    raise FailedPreconditionError(
                        f"step {step} of optimizer {state.name!r} cannot be applied: "
                        f"the optimizer is at iterations {state.iterations}"
                    )
                new = state.without_slots([p.record.name for p in pairs])
                missing = {name: state.missing_slots(name) for name in new}
                if new:  # counted before anything changes: refused, it is a no-op
                    records = {p.record.name: p.record for p in pairs}
                    self.memory.reserve(
                        sum(len(missing[n]) * records[n].nbytes for n in new),
                        f"the m and v slots of {new} for optimizer {state.name!r}",
                    )
                state.create_iterations()
                state.hypers_created = True
                state.record_call(call_variables)
                state.created_slots(new)
                state.iterations = max(state.iterations, step + 1)
                state.pushes += 1
            for name in new:
                for part in self.store.parts(self.variable(name)):
                    for slot in missing[name]:  # an add_slot "m" is kept, as in Keras
                        part.slots[(state.name, slot)] = np.zeros_like(part.value)
            logged = self.journal.write_push(
                state.name, pairs, push_ids, step, call_variables
            )
            scalars = {
                dtype: state.config.step_scalars(step, dtype)
                for dtype in {p.record.dtype for p in pairs}
            }
            tasks = [
                _ShardTask(self.store, state.name, shard, pairs, scalars)
                for shard in sorted(shards)
            ]
            self.store.run_parallel(tasks)
            result = ApplyResult(state.name, step, step + 1, logged)
            for push_id in push_ids:
                if push_id is not None:
                    self.ledger.complete(push_id, result)
        self.journal.wait(logged)  # acknowledged only once on disk (wal mode)
        return result

    # Statistics -------------------------------------------------------------------

    def stats(self, name: str) -> dict[str, Stats]:
        """Norm, min, max, mean and non-zero rows of the value and every slot,
        computed in place under the shard locks (no copy of the state)."""
        return variable_stats(self.store, self.variable(name))

    # Checkpoints ------------------------------------------------------------------

    def checkpoint(
        self,
        root: Path | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> CheckpointInfo:
        """Write a consistent checkpoint (see ``persistence.write_cut``).

        ``progress(shard)`` is called after each shard's bytes are on disk.
        """
        root = root or self.settings.checkpoint_dir
        if root is None:
            raise FailedPreconditionError(
                "no checkpoint folder is configured (start the server with "
                "--checkpoint-dir)"
            )
        root = Path(root)
        if self.journal.enabled and root != Path(self.settings.checkpoint_dir):
            raise FailedPreconditionError(
                "with --durability wal, checkpoints go to the server's own folder"
            )
        self.journal.check()  # fail-stop: the disk is not to be trusted
        with self._checkpoint_lock:
            started = time.perf_counter()
            existing = checkpoint.checkpoints(root)
            sequence = (
                max(self._checkpoint_sequence, existing[-1][0] if existing else 0) + 1
            )
            writer = checkpoint.CheckpointWriter(
                root, sequence, self.settings.keep_checkpoints
            )
            segment = [0]

            def snapshot() -> persistence.Metadata:
                metadata = self._snapshot_metadata()
                if self.journal.log is not None:
                    with self.journal.log.lock:
                        segment[0] = self.journal.rotate()
                return metadata

            try:
                manifest, nbytes = persistence.write_cut(
                    self.store, snapshot, writer, progress
                )
                manifest["wal_segment"] = segment[0]
                manifest["server_index"] = self.settings.server_index
                manifest["num_servers"] = self.settings.num_servers
                path = writer.commit(manifest)
            except BaseException as e:
                writer.abort()
                if isinstance(e, OSError):
                    raise CheckpointError(f"checkpoint to {root} failed: {e}") from e
                raise
            self._checkpoint_sequence = sequence
            info = CheckpointInfo(
                path,
                sequence,
                nbytes,
                time.perf_counter() - started,
                time.time(),
                segment[0],
            )
            writer.prune()
            # Keep the log segments of every kept checkpoint: if the newest is
            # found damaged at restore, the one before it plus them stand in.
            kept = [
                checkpoint.wal_segment(path) for _, path in checkpoint.checkpoints(root)
            ]
            self.journal.prune(before=min(kept, default=segment[0]))
            self.metrics.checkpoint_seconds.observe(info.seconds)
            self.last_checkpoint = info
            return info

    def _snapshot_metadata(self) -> persistence.Metadata:
        """Optimizers and remembered pushes at a cut: every optimizer's lock is
        held at once (after the shard locks, before the log's) so no change to
        one lands between the snapshot and the log's rotation."""
        with self._optimizers_lock:
            states = sorted(self._optimizers.values(), key=lambda state: state.name)
            for state in states:
                state.lock.acquire()
            try:
                saved = [
                    (
                        state.to_json(),
                        {k: v.copy() for k, v in state.extra_weights.items()},
                    )
                    for state in states
                ]
                return saved, self.ledger.snapshot()
            finally:
                for state in reversed(states):
                    state.lock.release()

    def restore(self, root: Path | None = None) -> CheckpointInfo | None:
        """Load the newest checkpoint under ``root`` into this (empty) service,
        then (``--durability wal``) replay the write-ahead log after it.

        Works with any shard count: saved row ranges are read straight into the
        new placement's arrays. Returns None when there is no checkpoint.
        """
        if self.store.records() or self.optimizers():
            raise FailedPreconditionError("restore needs an empty service")
        info = self._load_checkpoint(root)
        if self.journal.enabled:
            settings = self.settings
            owner = self.journal.claim(settings.server_index, settings.num_servers)
            self._check_writer(f"write-ahead log {self.journal.folder}", owner)
            since = info.wal_segment if info is not None else 0
            self.replayed = self.journal.replay(self, since)
        return info

    def _check_writer(self, what: str, saved_as: tuple[int, int]) -> None:
        """Refuse state written by another server of the cluster (or another
        cluster size): it holds other rows."""
        settings = self.settings
        if tuple(saved_as) != (settings.server_index, settings.num_servers):
            raise CheckpointError(
                f"{what} was written by server {saved_as[0]} of {saved_as[1]}; "
                f"this server is {settings.server_index} of {settings.num_servers}, "
                f"and would hold other rows. Start it with --server-index "
                f"{saved_as[0]} --num-servers {saved_as[1]}, or a resized cluster "
                "from empty folders"
            )

    def _load_checkpoint(self, root: Path | None) -> CheckpointInfo | None:
        """Load the newest intact checkpoint. One found damaged (a checksum, a
        short file) is passed over for the one before it only when nothing
        is lost by it: the write-ahead log still holds every change since
        that one. Otherwise a ``CheckpointError`` names both."""
        root = root or self.settings.checkpoint_dir
        found = checkpoint.checkpoints(Path(root)) if root is not None else []
        damaged: list[tuple[Path, str]] = []
        for _, path in reversed(found):
            try:
                info = self._load_from(path)
            except _DamagedCheckpointError as e:
                damaged.append((path, str(e)))
                continue
            if damaged:
                self._stand_in(info, damaged)
            return info
        if damaged:
            names = "; ".join(f"{path}: {why}" for path, why in damaged)
            raise CheckpointError(f"every checkpoint under {root} is damaged: {names}")
        return None

    def _stand_in(self, info: CheckpointInfo, damaged: list[tuple[Path, str]]) -> None:
        """Accept ``info`` in place of the damaged newer checkpoints, or refuse."""
        newest, why = damaged[0]
        problem = None
        if not self.journal.enabled:
            problem = "without --durability wal no log holds the changes made after it"
        else:
            try:
                self.journal.check_replayable(
                    info.wal_segment, f"checkpoint {info.path}"
                )
            except CheckpointError as e:
                problem = str(e)
        if problem is not None:
            self._reset()
            raise CheckpointError(
                f"the newest checkpoint {newest} is damaged ({why}), and the one "
                f"before it, {info.path}, cannot stand in for it: {problem}. Move "
                f"{newest} aside to start from {info.path} (losing the changes "
                "made between them), or put back an intact copy of it"
            )
        log.warning(
            "checkpoint %s is damaged (%s): starting from %s and its log",
            newest,
            why,
            info.path,
        )

    def _load_from(self, path: Path) -> CheckpointInfo:
        """Load one checkpoint into this empty service; ``_DamagedCheckpointError``
        (with the service emptied again) when its bytes fail their checks."""
        started = time.perf_counter()
        try:
            reader = checkpoint.CheckpointReader(path)
        except CheckpointError as e:
            raise _DamagedCheckpointError(str(e)) from None
        manifest = reader.manifest
        self._check_writer(
            f"checkpoint {path}",
            (manifest.get("server_index", 0), manifest.get("num_servers", 1)),
        )
        needed = sum(
            int(entry.get("nbytes", 0)) for entry in manifest.get("arrays", [])
        )
        try:
            self.memory.reserve(needed, f"checkpoint {path}")
        except ResourceExhaustedError as e:
            raise CheckpointError(str(e)) from None
        try:
            optimizers, ledger, nbytes = persistence.load(self.store, reader)
        except (CheckpointError, KeyError, TypeError, ValueError) as e:
            self._reset()
            raise _DamagedCheckpointError(
                str(e) if isinstance(e, CheckpointError) else f"inconsistent: {e!r}"
            ) from None
        with self._optimizers_lock:
            self._optimizers.update(optimizers)
        self.ledger.restore(ledger)
        self._checkpoint_sequence = manifest["sequence"]
        info = CheckpointInfo(
            path,
            manifest["sequence"],
            nbytes,
            time.perf_counter() - started,
            manifest["created"],
            manifest.get("wal_segment", 0),
        )
        self.last_checkpoint = info
        return info

    def _reset(self) -> None:
        """Empty the service again after a restore that failed part way."""
        self.store.close()
        self.store = ShardedStore(self.settings.shards, self.settings.split_bytes)
        with self._optimizers_lock:
            self._optimizers.clear()
        self.ledger.restore({"clients": {}, "forgotten": 0})
        self.memory.release(self.memory.used)

    def start_periodic_checkpoints(
        self,
        every: float,
        on_done: Callable[[CheckpointInfo | Exception], None] | None = None,
    ) -> None:
        """Checkpoint every ``every`` seconds on a background thread until ``close``.

        A failed checkpoint is reported to ``on_done`` and retried next period.
        """
        if every <= 0:
            raise ValueError(
                f"The checkpoint period must be positive. Received: {every}"
            )
        stop = self._stop_periodic = threading.Event()

        def loop() -> None:
            while not stop.wait(every):
                try:
                    outcome: CheckpointInfo | Exception = self.checkpoint()
                except Exception as e:  # reported, then tried again next period
                    outcome = e
                if on_done is not None:
                    on_done(outcome)

        self._periodic = threading.Thread(target=loop, name="checkpointer", daemon=True)
        self._periodic.start()

    def close(self) -> None:
        """Stop periodic checkpoints and the shard threads."""
        if self._stop_periodic is not None:
            self._stop_periodic.set()
            self._periodic.join()
        self.journal.close()
        self.store.close()


class _DamagedCheckpointError(Exception):
    """A checkpoint whose bytes fail their checks (the message says where)."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    sequence: int
    nbytes: int
    seconds: float
    created: float
    wal_segment: int = 0  # the first log segment after this checkpoint


class _ShardTask:
    """Runs one push's kernel calls for the parts held by one shard, in pair order
    (a variable named twice in a push is updated twice, as in Keras)."""

    def __init__(self, store: ShardedStore, optimizer: str, shard: int, pairs, scalars):
        self.parts = [
            (pair, store.shards[shard].parts[pair.record.name])
            for pair in pairs
            if pair.record.name in store.shards[shard].parts
        ]
        self.optimizer = optimizer
        self.scalars = scalars

    def __call__(self) -> None:
        for pair, part in self.parts:
            m = part.slots[(self.optimizer, "m")]
            v = part.slots[(self.optimizer, "v")]
            step = self.scalars[pair.record.dtype]
            if pair.dense is not None:
                g = pair.dense
                if len(pair.record.parts) > 1:
                    g = g.reshape(pair.record.rows, -1)[part.lo : part.hi]
                adamax.dense_update(part.value, m, v, g, step)
            else:
                adamax.sparse_rows_update(
                    part.rows(part.value),
                    part.rows(m),
                    part.rows(v),
                    pair.rows,
                    pair.summed,
                    step,
                    lo=part.lo,
                )
