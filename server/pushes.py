"""Pushes: one ``apply_gradients`` call applied to all of its variables or
none, exactly once per push id.

The pipeline (``apply``):

1. Exactly once: a push id already answered returns that answer (once its
   record is on disk).
2. Validate every gradient before anything changes: variable exists, dtype,
   shape, index dtype and range, finiteness (see ``NonFinitePolicy``).
3. Clip (Keras order) and sum duplicate sparse rows: pure work on the
   gradients, no lock held.
4. Take the locks of the shards the push touches (ascending), then take the
   step ``t`` from the optimizer: a push that shares a shard with another is
   applied entirely before or after it, in ``t`` order. Create slots for
   variables new to the optimizer, run the kernels on every shard in
   parallel, log the push, remember the answer, release.

Synchronous mode hands step 2's gradients to the ``SyncCoordinator``, whose
round sums the replicas' and runs steps 3 and 4 once. A rejected push leaves
every variable, slot and counter bit for bit as it was.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np

from adamax_ps.server import adamax, inherited, steps
from adamax_ps.server.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ParameterServerError,
    ResourceExhaustedError,
    StalePushError,
)
from adamax_ps.server.gate import ChangeGate
from adamax_ps.server.gradients import Gradient
from adamax_ps.server.journal import Journal
from adamax_ps.server.ledger import ApplyResult, PushId, PushLedger
from adamax_ps.server.limits import MemoryBudget
from adamax_ps.server.metrics import Metrics
from adamax_ps.server.optimizer_state import OptimizerState
from adamax_ps.server.optimizers import Optimizers
from adamax_ps.server.push_tasks import prepare
from adamax_ps.server.store import ShardedStore
from adamax_ps.server.sync import SyncCoordinator
from adamax_ps.server.sync_apply import apply_sync
from adamax_ps.server.table_part import PartPlan
from adamax_ps.server.tables import Tables
from adamax_ps.server.validation import NonFinitePolicy, check_gradient
from adamax_ps.server.variables import Variables


class PushPipeline:
    """Applies pushes and reserves steps for one server. Thread-safe."""

    def __init__(
        self,
        *,
        store: ShardedStore,
        variables: Variables,
        optimizers: Optimizers,
        ledger: PushLedger,
        journal: Journal,
        memory: MemoryBudget,
        metrics: Metrics,
        nonfinite: NonFinitePolicy,
        sync: SyncCoordinator | None,
        server_index: int,
        tables: Tables,
        gate: ChangeGate,
    ) -> None:
        self.gate = gate  # closed by a rescale: no push starts
        self.store = store
        self.variables = variables
        self.optimizers = optimizers
        self.ledger = ledger
        self.journal = journal
        self.memory = memory
        self.metrics = metrics
        self.nonfinite = nonfinite
        self.sync = sync
        self.server_index = server_index  # server 0 reserves the steps
        self.tables = tables

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
        replica: int | None = None,
        reserve_next: bool = False,
        step_reserved_ahead: bool = False,
    ) -> ApplyResult:
        """Apply one push (one ``apply_gradients`` call) to all of its variables
        or to none, exactly once per push id (see the module docstring).

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
        the optimizer's clipping is not applied again. ``replica``
        (synchronous mode): the worker's rank, which orders the step's sum and
        may push once per step (default: the push id's client).
        ``reserve_next`` (the coordinator): hand out the client's next step
        with the answer; ``step_reserved_ahead``: ``step`` was handed out so,
        and this push counts the call.
        """
        started = time.perf_counter()
        if step is not None and (not isinstance(step, int) or step < 0):
            raise InvalidArgumentError(
                f"a step is a non-negative integer. Received: {step}"
            )
        # A push completing a synchronous round others wait in passes a
        # closing gate: a freeze drains the round rather than timing it out.
        joins = None
        if self.sync is not None and step is not None:
            joins = functools.partial(self.sync.waiting, optimizer, step)
        try:
            with self.gate.change(joins):
                result = self._apply(
                    optimizer,
                    gradients,
                    push_id,
                    step,
                    aggregate,
                    call_variables,
                    clipped,
                    replica,
                    reserve_next,
                    step_reserved_ahead,
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

    @contextmanager
    def apply_and_read(
        self,
        optimizer: str,
        gradients: Sequence[Gradient],
        push_id: PushId | None = None,
        *,
        reads: Sequence[tuple[str, Any]] = (),
        read_limit: int,
        **options: Any,
    ) -> Iterator[tuple[ApplyResult, list[np.ndarray]]]:
        """``apply``, then copies of ``reads`` (``(variable, rows or None)``):
        a worker's push and its refresh in one round trip. The reads are
        checked, their size against ``read_limit``, and their bytes taken from
        the in-flight budget before anything is applied, so a bad read refuses
        the push whole; the bytes are held until the block ends (the answer
        sent), as ``Variables.reading`` holds a read's. A retried push reads
        again (reads change nothing)."""
        planned = []
        for name, rows in reads:
            table = self.tables.find(name)
            if table is not None:
                planned.append((table, *self.tables.planned_read(table, rows)))
                continue
            record = self.variables.get(name)
            planned.append((record, *self.variables.planned_read(record, rows)))
        total = sum(nbytes for _, _, nbytes in planned)
        if total > read_limit:
            raise ResourceExhaustedError(
                f"a push's reads come to {total} bytes, over the {read_limit} "
                "bytes answered with a push: read them apart"
            )
        held = self.variables.inflight.held(total, "a push's reads")
        with held if total else nullcontext():
            result = self.apply(optimizer, gradients, push_id, **options)
            values = [
                self.tables.read_planned(record, rows, None)
                if getattr(record, "keyed", False)
                else self.variables.read_planned(record, rows)
                for record, rows, _ in planned
            ]
            yield result, values

    def _apply(
        self,
        optimizer,
        gradients,
        push_id,
        step,
        aggregate,
        call_variables,
        clipped,
        replica,
        reserve_next,
        counted,
    ) -> ApplyResult:
        state = self.optimizers.get(optimizer)
        if push_id is not None:
            answer = self.ledger.begin(push_id)
            if answer is not None:
                self.journal.wait(answer.record)  # never repeat one not on disk
                return answer
        try:
            self.journal.check()
            checked = [self._checked(g) for g in gradients]
            given = list(call_variables or [g.variable for g in checked])
            # Tables' slots are not in Keras's weights.
            names = [n for n in given if self.tables.find(n) is None]
            if self.sync is not None:
                return apply_sync(
                    self, state, checked, push_id, step, aggregate, names, replica
                )
            if not checked and not given:  # Keras: apply_gradients([]) is a no-op
                with state.lock:
                    return ApplyResult(state.name, state.iterations, state.iterations)
            if (reserve_next or counted) and (self.server_index != 0 or step is None):
                raise InvalidArgumentError(
                    "steps are handed out ahead by server 0 of a cluster, for a "
                    "push carrying its step"
                )
            prepared = prepare(state, checked, clip=not clipped)
            heir = self.ledger.inherited(push_id) if push_id is not None else None
            if heir is not None:  # cut by a resize: apply what was not
                options = {"step": step, "names": names, "counted": counted}
                options["reserve_next"] = reserve_next
                return inherited.finish(self, state, prepared, push_id, heir, options)
            return self.apply_prepared(
                state,
                prepared,
                [push_id],
                step,
                False,
                names,
                counted=counted,
                reserve_next=reserve_next,
            )
        except BaseException:
            if push_id is not None:
                self.ledger.abandon(push_id)
            raise

    def _checked(self, g: Gradient) -> Gradient:
        """A gradient validated against its variable or table."""
        table = self.tables.find(g.variable)
        if table is None:
            return check_gradient(self.variables.get(g.variable), g, self.nonfinite)
        return self.tables.check_gradient(table, g, self.nonfinite)

    def reserve_step(
        self,
        optimizer: str,
        variables: Sequence[str],
        push_id: PushId | None = None,
        *,
        step: int | None = None,
    ) -> int:
        """See ``ParameterService.reserve_step`` (``steps.reserve_step``)."""
        return steps.reserve_step(self, optimizer, variables, push_id, step)

    def apply_prepared(
        self,
        state: OptimizerState,
        gradients: list[Gradient],
        push_ids: Sequence[PushId | None],
        step: int | None,
        exact: bool,
        call_variables: list[str],
        *,
        counted: bool = False,
        reserve_next: bool = False,
    ) -> ApplyResult:
        """Take the push's shards, its step, then update every shard in parallel
        (step 4). ``gradients`` are validated, clipped and deduplicated; so is
        a logged push, which the log's replay applies here.

        ``step`` None: take the optimizer's next step. ``exact``: the step must
        be the optimizer's next (synchronous mode). Otherwise a given step is
        used as is: ``counted`` (handed out ahead) counts the call; a step this
        coordinator handed out leaves the counter as its reservation did;
        else the counter only moves forward, to ``step + 1``.
        ``reserve_next``: also hand out the client's next step (the answer's
        ``next_step``).
        """
        shards = set().union(*(g.shards() for g in gradients))
        with self.store.locked(shards):
            with state.lock:
                if step is None:
                    step = state.iterations
                elif exact and step != state.iterations:
                    raise FailedPreconditionError(
                        f"step {step} of optimizer {state.name!r} cannot be applied: "
                        f"the optimizer is at iterations {state.iterations}"
                    )
                new = state.without_slots(
                    [g.variable for g in gradients if not g.keyed]
                )
                missing = {name: state.missing_slots(name) for name in new}
                if new:  # counted before anything changes: refused, it is a no-op
                    records = {g.variable: g.record for g in gradients}
                    self.memory.reserve(
                        sum(len(missing[n]) * records[n].nbytes for n in new),
                        f"the m and v slots of {new} for optimizer {state.name!r}",
                    )
                try:  # a table's growth refused: the push is refused whole
                    gradients, plans = self.tables.plan_push(gradients, step, state)
                except ResourceExhaustedError:
                    if new:
                        self.memory.release(
                            sum(len(missing[n]) * records[n].nbytes for n in new)
                        )
                    raise
                state.create_iterations()
                state.hypers_created = True
                state.record_call(call_variables)
                state.created_slots(new)
                if counted:
                    state.iterations += 1
                elif exact or self.server_index != 0 or step >= state.next_step:
                    state.iterations = max(state.iterations, step + 1)
                state.next_step = max(state.next_step, step + 1)
                next_step = state.take_step() if reserve_next else None
                state.pushes += 1
            for name in new:
                for part in self.store.parts(self.variables.get(name)):
                    for slot in missing[name]:  # an add_slot "m" is kept, as in Keras
                        part.slots[(state.name, slot)] = np.zeros_like(part.value)
            logged = self.journal.write_push(
                state.name, gradients, push_ids, step, call_variables, counted
            )
            scalars = {
                dtype: state.config.step_scalars(step, dtype)
                for dtype in {g.record.dtype for g in gradients}
            }
            tasks = [
                ShardTask(
                    self.store, state.name, shard, gradients, scalars, plans, step
                )
                for shard in sorted(shards)
            ]
            self.store.run_parallel(tasks)
            iterations = state.iterations if counted else step + 1
            result = ApplyResult(state.name, step, iterations, logged, next_step)
            for push_id in push_ids:
                if push_id is not None:
                    self.ledger.complete(push_id, result)
        self.journal.wait(logged)  # acknowledged only once on disk (wal mode)
        return result


class ShardTask:
    """Runs one push's kernel calls for the parts held by one shard, in order
    (a variable named twice in a push is updated twice, as in Keras). A
    table's part commits its plan (``TablePart.commit``)."""

    def __init__(
        self,
        store: ShardedStore,
        optimizer: str,
        shard: int,
        gradients: list[Gradient],
        scalars: dict,
        plans: dict[tuple[int, int], PartPlan],
        step: int,
    ):
        held = store.shards[shard]
        self.work = []
        for position, g in enumerate(gradients):
            if g.keyed:
                plan = plans.get((position, shard))
                if plan is not None:
                    self.work.append((g, held.tables[g.variable], plan))
            elif g.variable in held.parts:
                self.work.append((g, held.parts[g.variable], None))
        self.optimizer = optimizer
        self.scalars = scalars
        self.step = step

    def __call__(self) -> None:
        for g, part, plan in self.work:
            record = g.record
            step = self.scalars[record.dtype]
            if plan is not None:
                part.commit(plan, g.indices, g.values, self.optimizer, step, self.step)
                continue
            m = part.slots[(self.optimizer, "m")]
            v = part.slots[(self.optimizer, "v")]
            if g.is_dense and g.ranges is not None:
                _dense_ranges(part, m, v, g, step)
            elif g.is_dense:
                values = g.values
                if len(record.parts) > 1:
                    values = values.reshape(record.rows, -1)[part.lo : part.hi]
                adamax.dense_update(part.value, m, v, values, step)
            else:
                adamax.sparse_rows_update(
                    part.rows(part.value),
                    part.rows(m),
                    part.rows(v),
                    g.indices,
                    g.values,
                    step,
                    lo=part.lo,
                )


def _dense_ranges(part, m, v, g: Gradient, step) -> None:
    """A dense update of some row ranges of a part (elementwise, so the same
    bits as the whole update gives those rows)."""
    values = g.values.reshape(g.record.rows, -1)
    for lo, hi in g.ranges:
        a, b = max(lo, part.lo), min(hi, part.hi)
        if b > a:
            rows = slice(a - part.lo, b - part.lo)
            adamax.dense_update(
                part.rows(part.value)[rows],
                part.rows(m)[rows],
                part.rows(v)[rows],
                values[a:b],
                step,
            )
