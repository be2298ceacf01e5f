"""Optimizers: the named Adamax optimizers of one server, their counters,
slots and weights, as Keras's optimizer API reads and writes them.

Creating an optimizer attaches to one of that name with the same config.
Reading ``iterations`` creates it (as in Keras: it then heads ``weights``).
``add_slot`` makes slot arrays where the variable's rows are and records the
slot in ``weights`` at the coordinator (server 0); ``add_weight`` adds an
extra weight. Every change is logged; the bytes of new arrays are counted in
the memory budget before they are allocated.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from adamax_ps.common import keras
from adamax_ps.server.errors import (
    InvalidArgumentError,
    NotFoundError,
    OptimizerExistsError,
    OptimizerNotFoundError,
    SlotNotFoundError,
)
from adamax_ps.server.hyperparams import AdamaxConfig
from adamax_ps.server.initializers import Initializer
from adamax_ps.server.journal import Journal
from adamax_ps.server.limits import MemoryBudget
from adamax_ps.server.optimizer_state import (
    OptimizerState,
    OptimizerSummary,
    WeightRef,
)
from adamax_ps.server.store import ShardedStore, VariableRecord
from adamax_ps.server.validation import check_name, numeric_array, shape_and_dtype
from adamax_ps.server.variables import SlotKey, Variables

T = TypeVar("T")


class Optimizers:
    """The optimizer registry of one server. Thread-safe: the registry lock
    guards the mapping, each optimizer's ``lock`` its state."""

    def __init__(
        self,
        store: ShardedStore,
        variables: Variables,
        journal: Journal,
        memory: MemoryBudget,
        coordinator: bool,
        alone: bool,
    ) -> None:
        self.store = store
        self.variables = variables
        self.journal = journal
        self.memory = memory
        self.coordinator = coordinator  # server 0: keeps the weights order
        self.alone = alone  # the only server: every variable is here
        self._states: dict[str, OptimizerState] = {}
        self._lock = threading.Lock()

    # Registry ---------------------------------------------------------------------

    def create(
        self, config: AdamaxConfig | Mapping[str, Any]
    ) -> tuple[OptimizerState, bool]:
        """Create the optimizer, or attach to one of that name with the same config."""
        if not isinstance(config, AdamaxConfig):
            try:
                config = AdamaxConfig.from_config(config)
            except (TypeError, ValueError) as e:
                raise InvalidArgumentError(f"bad optimizer config: {e}") from None
        with self._lock:
            state = self._states.get(config.name)
            if state is None:
                self.journal.check()
                state = self._states[config.name] = OptimizerState(config)
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

    def find(self, name: str) -> OptimizerState | None:
        """The optimizer of that name, or None."""
        with self._lock:
            return self._states.get(name)

    def get(self, name: str) -> OptimizerState:
        state = self.find(name)
        if state is None:
            raise OptimizerNotFoundError(f"optimizer {name!r} does not exist")
        return state

    def summary(self, name: str) -> OptimizerSummary:
        """What the optimizer is now, copied under its lock."""
        state = self.get(name)
        with state.lock:
            return state.summary()

    def all(self) -> list[OptimizerState]:
        with self._lock:
            return list(self._states.values())

    def snapshot(
        self, while_held: Callable[[], T]
    ) -> tuple[list[tuple[dict[str, Any], dict[str, np.ndarray]]], T]:
        """Every optimizer's JSON and extra weights, and ``while_held()``'s
        result, taken with the registry and every optimizer's lock held at
        once (a checkpoint's cut takes them after the shard locks and rotates
        the log in ``while_held``: no change lands between the two)."""
        with self._lock:
            states = sorted(self._states.values(), key=lambda state: state.name)
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
                return saved, while_held()
            finally:
                for state in reversed(states):
                    state.lock.release()

    def restore(self, states: Mapping[str, OptimizerState]) -> None:
        """Replace the registry (a checkpoint's optimizers)."""
        with self._lock:
            self._states = dict(states)

    def slot_key(
        self, record: VariableRecord, optimizer: str | None, slot: str | None
    ) -> SlotKey:
        """What a read or assignment names: the value (neither given) or an
        existing slot (both given)."""
        if optimizer is None and slot is None:
            return None
        if optimizer is None or slot is None:
            raise InvalidArgumentError(
                "a slot read needs both optimizer and slot names"
            )
        state = self.get(optimizer)
        with state.lock:
            has = slot in state.slotted.get(record.name, ())
        if not has:
            raise SlotNotFoundError(
                f"optimizer {optimizer!r} has no slot {slot!r} for variable "
                f"{record.name!r}"
            )
        return (optimizer, slot)

    # Counter and config -------------------------------------------------------------

    def get_config(self, optimizer: str) -> dict[str, Any]:
        state = self.get(optimizer)
        with state.lock:
            return state.config.get_config(hypers_created=state.hypers_created)

    def iterations(self, optimizer: str) -> int:
        """The optimizer's counter (reading it creates it, as in Keras: it then
        heads ``weights``, a change that is logged like any other)."""
        state = self.get(optimizer)
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

    def set_iterations(self, optimizer: str, iterations: int) -> None:
        """Set the counter (``set_weights`` on every server of a cluster)."""
        if not isinstance(iterations, int) or not 0 <= iterations < 1 << 63:
            raise InvalidArgumentError(
                "iterations must be a non-negative 64-bit integer. "
                f"Received: {iterations!r}"
            )
        self.journal.check()
        state = self.get(optimizer)
        with state.lock:
            state.create_iterations()
            state.iterations = iterations
            state.next_step = iterations
            logged = self.journal.write(
                "iterations", {"optimizer": optimizer, "iterations": iterations}
            )
        self.journal.wait(logged)

    # Weights ------------------------------------------------------------------------

    def weight_refs(self, optimizer: str) -> list[WeightRef]:
        state = self.get(optimizer)
        with state.lock:
            return list(state.weights)

    def slot_names(self, optimizer: str) -> list[str]:
        state = self.get(optimizer)
        with state.lock:
            return list(state.slot_names)

    def get_weights(self, optimizer: str) -> list[np.ndarray]:
        """Keras ``get_weights()``: iterations, then slots in creation order."""
        state = self.get(optimizer)
        with state.lock:
            refs = list(state.weights)
            iterations = state.iterations
        return [self._read(state, ref, iterations) for ref in refs]

    def _read(self, state: OptimizerState, ref: WeightRef, iterations: int):
        if ref.kind == "iterations":
            return np.asarray(iterations, np.int64)
        if ref.kind == "weight":
            with state.lock:
                return state.extra_weights[ref.name].copy()
        record = self.variables.get(ref.variable)
        return self.store.read(record, (state.name, ref.name))

    def set_weights(self, optimizer: str, weights: Sequence[Any]) -> None:
        """Keras ``set_weights()``: checks length, then shapes, then assigns all
        (one log record holds them all)."""
        self.journal.check()
        state = self.get(optimizer)
        with state.lock:
            refs = list(state.weights)
        current = [self._shape(state, ref) for ref in refs]
        try:
            arrays = keras.set_weights_arrays(state.name, current, weights)
        except ValueError as e:
            raise InvalidArgumentError(str(e)) from None
        records = {
            r.variable: self.variables.get(r.variable) for r in refs if r.kind == "slot"
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

    def _shape(self, state: OptimizerState, ref: WeightRef) -> tuple[int, ...]:
        if ref.kind == "iterations":
            return ()
        if ref.kind == "weight":
            return state.extra_weights[ref.name].shape
        return self.variables.get(ref.variable).shape

    def weight(self, optimizer: str, name: str) -> np.ndarray:
        """A copy of an optimizer's extra weight (``add_weight``)."""
        state = self.get(optimizer)
        with state.lock:
            if name not in state.extra_weights:
                raise NotFoundError(f"optimizer {optimizer!r} has no weight {name!r}")
            return state.extra_weights[name].copy()

    def assign_weight(self, optimizer: str, name: str, value: Any) -> None:
        self.journal.check()
        state = self.get(optimizer)
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
        state = self.get(optimizer)
        record = self.store.get(variable)
        if record is None and self.alone:
            self.variables.get(variable)  # raises VariableNotFoundError
        header = {
            "optimizer": optimizer,
            "variable": variable,
            "slot": slot,
            "initializer": initializer,
        }
        added, logged = False, 0
        if record is not None:
            fill = Initializer(initializer, record.global_shape, 0).fill
            with self.store.locked(record.shards), state.lock:
                if slot not in state.slotted.get(variable, ()):
                    self.memory.reserve(record.nbytes, f"slot {slot!r} of {variable!r}")
                    for part in self.store.parts(record):
                        array = np.empty_like(part.value)
                        fill(array, record.row_offset + part.lo)
                        part.slots[(state.name, slot)] = array
                    state.slotted.setdefault(variable, set()).add(slot)
                    added = True
                    if not self.coordinator:
                        logged = self.journal.write("slot", header)
        if self.coordinator:
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
        state = self.get(optimizer)
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
