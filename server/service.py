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

import enum
import math
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adamax_ps.server import adamax, checkpoint, kernels
from adamax_ps.server.errors import (
    CheckpointError,
    FailedPreconditionError,
    InvalidArgumentError,
    OptimizerExistsError,
    OptimizerNotFoundError,
    SlotNotFoundError,
    VariableExistsError,
    VariableNotFoundError,
)
from adamax_ps.server.hyperparams import AdamaxConfig
from adamax_ps.server.initializers import Initializer, parse_initializer
from adamax_ps.server.optimizers import OptimizerState, WeightRef
from adamax_ps.server.pushes import ApplyResult, PushId, PushLedger
from adamax_ps.server.store import (
    DEFAULT_SPLIT_BYTES,
    ShardedStore,
    VariableRecord,
)
from adamax_ps.server.sync import SyncCoordinator, SyncSettings

MAX_NAME = 256


class NonFinitePolicy(enum.Enum):
    """What a push with NaN or Inf in a gradient gets.

    ``reject`` (default): refused with INVALID_ARGUMENT naming the variable,
    nothing applied; a server holding the only copy of a model keeps it finite.
    ``allow``: applied as TensorFlow would (NaN/Inf reach the weights).
    """

    REJECT = "reject"
    ALLOW = "allow"


@dataclass(frozen=True)
class DenseGradient:
    """A gradient for the whole variable."""

    variable: str
    values: np.ndarray


@dataclass(frozen=True)
class SparseGradient:
    """An IndexedSlices gradient: ``values[k]`` is the gradient of ``indices[k]``."""

    variable: str
    indices: np.ndarray
    values: np.ndarray


Gradient = DenseGradient | SparseGradient


@dataclass(frozen=True)
class _Pair:
    """A validated gradient; sparse ones become unique rows and summed values."""

    record: VariableRecord
    dense: np.ndarray | None = None
    indices: np.ndarray | None = None
    values: np.ndarray | None = None  # raw sparse values, [n, row_size]
    rows: np.ndarray | None = None  # unique rows after deduplication
    summed: np.ndarray | None = None

    @property
    def gradient(self) -> np.ndarray:
        return self.dense if self.dense is not None else self.values

    def with_gradient(self, gradient: np.ndarray) -> _Pair:
        if self.dense is not None:
            return _Pair(self.record, dense=gradient)
        return _Pair(self.record, indices=self.indices, values=gradient)

    def deduplicated(self) -> _Pair:
        if self.dense is not None:
            return self
        rows, summed = adamax.deduplicate(self.indices, self.values)
        return _Pair(self.record, rows=rows, summed=summed)

    def shards(self) -> set[int]:
        """Shards holding the rows this gradient touches."""
        if self.rows is None or len(self.record.parts) == 1:
            return set(self.record.shards)
        bounds = np.asarray([lo for _, lo, _ in self.record.parts[1:]])
        hit = np.unique(np.searchsorted(bounds, self.rows, side="right"))
        return {self.record.parts[i][0] for i in hit.tolist()}


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


class ParameterService:
    """The domain core of one server process. Thread-safe."""

    def __init__(self, settings: ServiceSettings | None = None) -> None:
        self.settings = settings or ServiceSettings()
        self.store = ShardedStore(self.settings.shards, self.settings.split_bytes)
        self.ledger = PushLedger(
            self.settings.ledger_per_client, self.settings.ledger_max_clients
        )
        self.sync = SyncCoordinator(self.settings.sync) if self.settings.sync else None
        self._optimizers: dict[str, OptimizerState] = {}
        self._optimizers_lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        self._checkpoint_sequence = 0
        self.last_checkpoint: CheckpointInfo | None = None
        self._stop_periodic: threading.Event | None = None
        self._periodic: threading.Thread | None = None

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
    ) -> tuple[VariableRecord, bool]:
        """Create the variable, or attach to it if it exists with the same shape
        and dtype. Returns ``(record, created)``."""
        _check_name("variable", name)
        shape, dtype, initial_value = _resolve_shape_dtype(shape, dtype, initial_value)
        existing = self.store.get(name)
        if existing is not None:
            return self._attach(existing, shape, dtype), False
        if initial_value is None:
            parse_initializer(initializer)
            seed = secrets.randbits(63) if seed is None else int(seed)
            fill = Initializer(initializer, shape, seed).fill
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
        )
        stored = self.store.add(record, fill)
        if stored is not record:
            return self._attach(stored, shape, dtype), False
        return record, True

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
        rows = _check_indices(record, np.asarray(rows), "rows")
        return self.store.gather(record, rows, self._slot_key(record, optimizer, slot))

    def assign(self, name: str, value: Any) -> None:
        """Replace a variable's value (shape must match; cast to its dtype)."""
        record = self.variable(name)
        value = _as_float_array(value, "value")
        if value.shape != record.shape:
            raise InvalidArgumentError(
                f"value for {name!r} must have shape {record.shape}. "
                f"Received: {value.shape}"
            )
        value = value.astype(record.dtype, copy=False)
        with self.store.locked(record.shards):
            for part in self.store.parts(record):
                part.value[...] = value[part.lo : part.hi] if record.shape else value

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
                state = self._optimizers[config.name] = OptimizerState(config)
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
        """The optimizer's counter (reading it creates it, as in Keras)."""
        state = self.optimizer(optimizer)
        with state.lock:
            state.create_iterations()
            return state.iterations

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
        """Keras ``set_weights()``: checks length, then shapes, then assigns all."""
        state = self.optimizer(optimizer)
        with state.lock:
            refs = list(state.weights)
        current = [self._weight_shape(state, ref) for ref in refs]
        if len(weights) != len(refs):
            raise InvalidArgumentError(
                f"You called `set_weights(weights)` on optimizer {state.name} "
                f"with a  weight list of length {len(weights)}, but the optimizer "
                f"was expecting {len(refs)} weights. Provided weights: "
                f"{str(list(weights))[:50]}..."
            )
        arrays = [np.asarray(w) for w in weights]
        for shape, array in zip(current, arrays, strict=True):
            if tuple(shape) != array.shape:
                raise InvalidArgumentError(
                    f"Optimizer weight shape {tuple(shape)} not compatible with "
                    f"provided weight shape {array.shape}."
                )
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

    def _weight_shape(self, state: OptimizerState, ref: WeightRef) -> tuple[int, ...]:
        if ref.kind == "iterations":
            return ()
        if ref.kind == "weight":
            return state.extra_weights[ref.name].shape
        return self.variable(ref.variable).shape

    def get_slot(self, optimizer: str, variable: str, slot: str) -> np.ndarray:
        return self.pull(variable, optimizer=optimizer, slot=slot)

    def add_slot(
        self, optimizer: str, variable: str, slot: str, initializer: str = "zeros"
    ) -> bool:
        """Keras ``add_slot``: create a slot of a variable if it does not exist."""
        _check_name("slot", slot)
        state = self.optimizer(optimizer)
        record = self.variable(variable)
        fill = Initializer(initializer, record.shape, 0).fill
        with self.store.locked(record.shards), state.lock:
            if slot in state.slotted.get(variable, ()):
                return False
            for part in self.store.parts(record):
                array = np.empty_like(part.value)
                fill(array, part.lo)
                part.slots[(state.name, slot)] = array
            state.slotted.setdefault(variable, set()).add(slot)
            state.weights.append(WeightRef("slot", variable, slot))
            if slot not in state.slot_names:
                state.slot_names.append(slot)
                state.slot_initializers[slot] = initializer
        return True

    def add_weight(
        self,
        optimizer: str,
        name: str,
        shape: Sequence[int] = (),
        dtype: Any = "float32",
        initializer: str = "zeros",
    ) -> np.ndarray:
        """Keras ``add_weight`` on an optimizer: an extra weight in ``weights``."""
        _check_name("weight", name)
        state = self.optimizer(optimizer)
        shape, dtype, _ = _resolve_shape_dtype(shape, dtype, None)
        value = np.empty(shape, dtype)
        Initializer(initializer, shape, 0).fill(value)
        with state.lock:
            if name not in state.extra_weights:
                state.extra_weights[name] = value
                state.weights.append(WeightRef("weight", name=name))
            return state.extra_weights[name].copy()

    # Pushes ---------------------------------------------------------------------

    def apply(
        self,
        optimizer: str,
        gradients: Sequence[Gradient],
        push_id: PushId | None = None,
        *,
        step: int | None = None,
        aggregate: bool = True,
    ) -> ApplyResult:
        """Apply one push (one ``apply_gradients`` call) to all of its variables
        or to none, exactly once per push id.

        In synchronous mode ``step`` is required (the iterations the gradients
        were computed at) and the push waits for the other replicas of that step;
        ``aggregate=False`` marks a push the workers already summed themselves,
        applied at once as the whole step.
        """
        state = self.optimizer(optimizer)
        if push_id is not None:
            answer = self.ledger.begin(push_id)
            if answer is not None:
                return answer
        try:
            pairs = self._validate(gradients)
            if not pairs:  # Keras: apply_gradients([]) is a no-op
                with state.lock:
                    return ApplyResult(state.name, state.iterations, state.iterations)
            if self.sync is None:
                return self._apply_pairs(
                    state, self._transform(state, pairs), [push_id]
                )
            return self._apply_sync(state, pairs, push_id, step, aggregate)
        except BaseException:
            if push_id is not None:
                self.ledger.abandon(push_id)
            raise

    def _apply_sync(self, state, pairs, push_id, step, aggregate) -> ApplyResult:
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
                return self._apply_pairs(
                    state, self._transform(state, pairs), [push_id], step
                )
            except BaseException:
                self.sync.reopen(state.name, step)
                raise

        def apply_round(
            step: int, contributions: dict[str, tuple[PushId, list[_Pair]]]
        ):
            replicas = sorted(contributions)
            summed = _aggregate(
                [contributions[r][1] for r in replicas], self.settings.sync.average
            )
            ids = [contributions[r][0] for r in replicas]
            return self._apply_pairs(state, self._transform(state, summed), ids, step)

        return self.sync.contribute(
            state.name, step, current, push_id.client, (push_id, pairs), apply_round
        )

    def _validate(self, gradients: Sequence[Gradient]) -> list[_Pair]:
        pairs = []
        for gradient in gradients:
            record = self.variable(gradient.variable)
            if isinstance(gradient, DenseGradient):
                pairs.append(_Pair(record, dense=self._check_dense(record, gradient)))
            elif isinstance(gradient, SparseGradient):
                indices, values = self._check_sparse(record, gradient)
                pairs.append(_Pair(record, indices=indices, values=values))
            else:
                raise InvalidArgumentError(f"not a gradient: {type(gradient).__name__}")
        return pairs

    def _check_dense(
        self, record: VariableRecord, gradient: DenseGradient
    ) -> np.ndarray:
        values = _check_values(record, gradient.values)
        if values.shape != record.shape:
            raise InvalidArgumentError(
                f"gradient for {record.name!r} must have shape {record.shape}. "
                f"Received: {values.shape}"
            )
        self._check_finite(record, values)
        return np.ascontiguousarray(values)

    def _check_sparse(self, record: VariableRecord, gradient: SparseGradient):
        if not record.shape:
            raise InvalidArgumentError(
                "a sparse gradient needs a variable of rank >= 1; "
                f"{record.name!r} is a scalar"
            )
        indices = _check_indices(record, gradient.indices, "indices")
        values = _check_values(record, gradient.values)
        expected = (len(indices), *record.shape[1:])
        if values.shape != expected:
            raise InvalidArgumentError(
                f"sparse gradient values for {record.name!r} must have shape "
                f"{expected} (one row per index). Received: {values.shape}"
            )
        self._check_finite(record, values)
        row_size = math.prod(record.shape[1:])
        return indices, np.ascontiguousarray(values).reshape(len(indices), row_size)

    def _check_finite(self, record: VariableRecord, values: np.ndarray) -> None:
        if self.settings.nonfinite is NonFinitePolicy.ALLOW:
            return
        where = kernels_first_nonfinite(values)
        if where >= 0:
            raise InvalidArgumentError(
                f"gradient for {record.name!r} has a non-finite value "
                f"({values.reshape(-1)[where]}) at flat index {where}; this server "
                "refuses NaN and Inf gradients"
            )

    def _transform(self, state: OptimizerState, pairs: list[_Pair]) -> list[_Pair]:
        """Clip (Keras order, raw sparse values), then sum duplicate rows."""
        if state.config.clips:
            try:
                clipped = state.config.clip([p.gradient for p in pairs])
            except ValueError as e:
                raise InvalidArgumentError(str(e)) from None
            pairs = [p.with_gradient(g) for p, g in zip(pairs, clipped, strict=True)]
        return [p.deduplicated() for p in pairs]

    def _apply_pairs(
        self,
        state: OptimizerState,
        pairs: list[_Pair],
        push_ids: Sequence[PushId | None],
        step: int | None = None,
    ) -> ApplyResult:
        shards = set().union(*(p.shards() for p in pairs))
        with self.store.locked(shards):
            with state.lock:
                if step is None:
                    step = state.iterations
                elif step != state.iterations:
                    raise FailedPreconditionError(
                        f"step {step} of optimizer {state.name!r} cannot be applied: "
                        f"the optimizer is at iterations {state.iterations}"
                    )
                state.create_iterations()
                state.hypers_created = True
                new = state.new_variables([p.record.name for p in pairs])
                state.record_slots(new)
                state.iterations = step + 1
                state.pushes += 1
            for name in new:
                for part in self.store.parts(self.variable(name)):
                    part.slots[(state.name, "m")] = np.zeros_like(part.value)
                    part.slots[(state.name, "v")] = np.zeros_like(part.value)
            scalars = {
                dtype: state.config.step_scalars(step, dtype)
                for dtype in {p.record.dtype for p in pairs}
            }
            tasks = [
                _ShardTask(self.store, state.name, shard, pairs, scalars)
                for shard in sorted(shards)
            ]
            self.store.run_parallel(tasks)
            result = ApplyResult(state.name, step, step + 1)
            for push_id in push_ids:
                if push_id is not None:
                    self.ledger.complete(push_id, result)
        return result

    # Statistics -------------------------------------------------------------------

    def stats(self, name: str) -> dict[str, dict[str, float]]:
        """Norm, min, max, mean and non-zero rows of the value and every slot,
        computed in place under the shard locks (no copy of the state)."""
        record = self.variable(name)
        sums: dict[str, np.ndarray] = {}
        with self.store.locked(record.shards):
            for part in self.store.parts(record):
                arrays = {"w": part.value}
                for (optimizer, slot), array in part.slots.items():
                    arrays[f"{optimizer}/{slot}"] = array
                for key, array in arrays.items():
                    partial = np.asarray(kernels_summary(part.rows(array)))
                    sums[key] = (
                        partial if key not in sums else _merge(sums[key], partial)
                    )
        count = math.prod(record.shape)
        return {key: _describe(s, count) for key, s in sums.items()}

    # Checkpoints ------------------------------------------------------------------

    def checkpoint(
        self,
        root: Path | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> CheckpointInfo:
        """Write a consistent checkpoint (see ``_write_checkpoint``).

        ``progress(shard)`` is called after each shard's bytes are on disk.
        """
        root = Path(root or self.settings.checkpoint_dir or "")
        if not str(root):
            raise FailedPreconditionError("no checkpoint folder is configured")
        with self._checkpoint_lock:
            started = time.perf_counter()
            existing = checkpoint.checkpoints(root)
            sequence = (
                max(self._checkpoint_sequence, existing[-1][0] if existing else 0) + 1
            )
            writer = checkpoint.CheckpointWriter(
                root, sequence, self.settings.keep_checkpoints
            )
            try:
                manifest, nbytes = self._write_checkpoint(writer, progress)
                path = writer.commit(manifest)
            except BaseException as e:
                writer.abort()
                if isinstance(e, OSError):
                    raise CheckpointError(f"checkpoint to {root} failed: {e}") from e
                raise
            self._checkpoint_sequence = sequence
            info = CheckpointInfo(
                path, sequence, nbytes, time.perf_counter() - started, time.time()
            )
            self.last_checkpoint = info
            return info

    def _write_checkpoint(self, writer: checkpoint.CheckpointWriter, progress=None):
        """Lock every shard (ascending), snapshot the metadata, then write shard by
        shard, releasing each as soon as its bytes are on disk: pushes to written
        shards flow again while the rest is taken, no push is half inside, and no
        state is copied."""
        entries: list[dict[str, Any]] = []
        nbytes = 0
        with self.store.all_locked() as release:
            records = self.store.records()
            optimizers = []
            for state in self.optimizers():
                with state.lock:
                    optimizers.append((state.to_json(), dict(state.extra_weights)))
            ledger = self.ledger.snapshot()
            extra = writer.open("extra.bin")
            for data, weights in optimizers:
                for weight_name, array in weights.items():
                    entry = extra.write(np.ascontiguousarray(array))
                    entries.append(
                        {
                            **entry,
                            "kind": "weight",
                            "optimizer": data["config"]["name"],
                            "name": weight_name,
                        }
                    )
            writer.closed(extra)
            for shard in self.store.shards:
                data_file = writer.open(f"shard-{shard.index}.bin")
                for part in shard.parts.values():
                    arrays = [("value", None, part.value)] + [
                        ("slot", key, array) for key, array in part.slots.items()
                    ]
                    for kind, key, array in arrays:
                        entry = data_file.write(array)
                        nbytes += entry["nbytes"]
                        entry.update(
                            kind=kind, variable=part.variable, lo=part.lo, hi=part.hi
                        )
                        if key is not None:
                            entry.update(optimizer=key[0], slot=key[1])
                        entries.append(entry)
                writer.closed(data_file)
                release(shard.index)
                if progress is not None:
                    progress(shard.index)
        manifest = {
            "created": time.time(),
            "num_shards": self.store.num_shards,
            "variables": [_record_json(r) for r in records],
            "optimizers": [data for data, _ in optimizers],
            "ledger": ledger,
            "arrays": entries,
        }
        return manifest, nbytes

    def restore(self, root: Path | None = None) -> CheckpointInfo | None:
        """Load the newest checkpoint under ``root`` into this (empty) service.

        Works with any shard count: saved row ranges are read straight into the
        new placement's arrays. Returns None when there is no checkpoint.
        """
        root = Path(root or self.settings.checkpoint_dir or "")
        path = checkpoint.latest(root) if str(root) else None
        if path is None:
            return None
        if self.store.records() or self.optimizers():
            raise FailedPreconditionError("restore needs an empty service")
        started = time.perf_counter()
        reader = checkpoint.CheckpointReader(path)
        manifest = reader.manifest
        try:
            nbytes = self._restore(reader, manifest)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path} is inconsistent: {e!r}") from e
        self._checkpoint_sequence = manifest["sequence"]
        info = CheckpointInfo(
            path,
            manifest["sequence"],
            nbytes,
            time.perf_counter() - started,
            manifest["created"],
        )
        self.last_checkpoint = info
        return info

    def _restore(self, reader: checkpoint.CheckpointReader, manifest: dict) -> int:
        records = {}
        for item in manifest["variables"]:
            shape = tuple(item["shape"])
            dtype = np.dtype(item["dtype"])
            record = VariableRecord(
                item["name"],
                shape,
                dtype,
                self.store.placement(item["name"], shape, dtype),
                item["initializer"],
                int(item["seed"]),
            )
            records[record.name] = self.store.add(record, lambda out, lo: None)
        weights: dict[str, dict[str, np.ndarray]] = {}
        nbytes = 0
        for entry in manifest["arrays"]:
            if entry["kind"] == "weight":
                weights.setdefault(entry["optimizer"], {})[entry["name"]] = reader.read(
                    entry
                )
                continue
            record = records[entry["variable"]]
            key = (
                None
                if entry["kind"] == "value"
                else (entry["optimizer"], entry["slot"])
            )
            reader.read_into(entry, self._restore_targets(record, key, entry))
            nbytes += entry["nbytes"]
        for data in manifest["optimizers"]:
            name = data["config"]["name"]
            self._optimizers[name] = OptimizerState.from_json(
                data, weights.get(name, {})
            )
        self.ledger.restore(manifest["ledger"])
        return nbytes

    def _restore_targets(self, record: VariableRecord, key, entry) -> list[memoryview]:
        """Byte views of the new parts' rows that a saved row range covers."""
        targets = []
        for part in self.store.parts(record):
            if key is not None and key not in part.slots:
                part.slots[key] = np.zeros_like(part.value)
            array = part.value if key is None else part.slots[key]
            lo, hi = max(part.lo, entry["lo"]), min(part.hi, entry["hi"])
            if hi > lo or not record.shape:
                rows = (
                    part.rows(array)[lo - part.lo : hi - part.lo]
                    if record.shape
                    else array
                )
                targets.append(memoryview(rows.reshape(-1)).cast("B"))
        return targets

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
        self.store.close()


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    sequence: int
    nbytes: int
    seconds: float
    created: float


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


# Helpers -----------------------------------------------------------------------------


def kernels_first_nonfinite(values: np.ndarray) -> int:
    """Flat index of the first NaN/Inf, or -1."""
    flat = values.reshape(-1)
    if values.dtype == np.float16:
        bad = np.flatnonzero(~np.isfinite(flat))
        return int(bad[0]) if bad.size else -1
    return int(kernels.first_nonfinite(flat))


def kernels_summary(rows: np.ndarray):
    return kernels.summary(rows) if rows.dtype != np.float16 else _summary_numpy(rows)


def _summary_numpy(rows: np.ndarray):
    wide = rows.astype(np.float64)
    if not wide.size:
        return (0.0, np.inf, -np.inf, 0.0, 0)
    return (
        float(np.sum(wide * wide)),
        float(wide.min()),
        float(wide.max()),
        float(wide.sum()),
        int(np.count_nonzero(np.any(wide != 0, axis=1))),
    )


def _merge(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(
        [a[0] + b[0], min(a[1], b[1]), max(a[2], b[2]), a[3] + b[3], a[4] + b[4]]
    )


def _describe(s: np.ndarray, count: int) -> dict[str, float]:
    return {
        "l2_norm": float(math.sqrt(s[0])),
        "min": float(s[1]) if count else 0.0,
        "max": float(s[2]) if count else 0.0,
        "mean": float(s[3] / count) if count else 0.0,
        "nonzero_rows": int(s[4]),
    }


def _aggregate(pushes: list[list[_Pair]], average: bool) -> list[_Pair]:
    """Sum replicas' pairs per variable (dense: add; sparse: concatenate rows)."""
    dense: dict[str, np.ndarray] = {}
    sparse: dict[str, list[_Pair]] = {}
    order: list[tuple[str, str]] = []
    records: dict[str, VariableRecord] = {}
    for pairs in pushes:
        for pair in pairs:
            name = pair.record.name
            records[name] = pair.record
            kind = "dense" if pair.dense is not None else "sparse"
            if (name, kind) not in order:
                order.append((name, kind))
            if kind == "dense":
                dense[name] = (
                    pair.dense.copy() if name not in dense else dense[name] + pair.dense
                )
            else:
                sparse.setdefault(name, []).append(pair)
    n = len(pushes)
    result = []
    for name, kind in order:
        record = records[name]
        if kind == "dense":
            total = dense[name]
            result.append(
                _Pair(record, dense=total / record.dtype.type(n) if average else total)
            )
        else:
            values = np.concatenate([p.values for p in sparse[name]])
            if average:
                values = values / record.dtype.type(n)
            indices = np.concatenate([p.indices.astype(np.int64) for p in sparse[name]])
            result.append(_Pair(record, indices=indices, values=values))
    return result


def _record_json(record: VariableRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "shape": list(record.shape),
        "dtype": record.dtype.str,
        "initializer": record.initializer,
        "seed": record.seed,
    }


def _check_name(what: str, name: Any) -> None:
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        raise InvalidArgumentError(
            f"a {what} name must be a string of 1 to {MAX_NAME} characters. "
            f"Received: {name!r}"
        )


def _float_dtype(dtype: Any) -> np.dtype:
    try:
        result = np.dtype(dtype)
    except TypeError:
        raise InvalidArgumentError(f"unknown dtype {dtype!r}") from None
    if result not in adamax.FLOAT_DTYPES:
        raise InvalidArgumentError(
            f"variables must be float16, float32 or float64. Received: {result}"
        )
    return result.newbyteorder("=")


def _as_float_array(value: Any, what: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except Exception as e:
        raise InvalidArgumentError(f"{what} is not an array: {e}") from None
    if array.dtype.kind not in "fiu":
        raise InvalidArgumentError(
            f"{what} must be numeric. Received dtype {array.dtype}"
        )
    return array


def _resolve_shape_dtype(shape, dtype, initial_value):
    if initial_value is not None:
        initial_value = _as_float_array(initial_value, "initial_value")
        if dtype is None:
            dtype = (
                initial_value.dtype if initial_value.dtype.kind == "f" else "float32"
            )
        dtype = _float_dtype(dtype)
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
    return shape, _float_dtype(dtype if dtype is not None else "float32"), None


def _check_values(record: VariableRecord, values: Any) -> np.ndarray:
    if not isinstance(values, np.ndarray):
        raise InvalidArgumentError(f"gradient for {record.name!r} is not an array")
    if values.dtype != record.dtype:
        raise InvalidArgumentError(
            f"gradient for {record.name!r} must have dtype {record.dtype}. "
            f"Received: {values.dtype}"
        )
    return values


def _check_indices(record: VariableRecord, indices: Any, what: str) -> np.ndarray:
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
