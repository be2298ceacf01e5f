"""Synchronous pushes: a replica's push joins its step's round, and the
round applies the replicas' summed gradients once (``SyncCoordinator``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from adamax_ps.server.errors import InvalidArgumentError
from adamax_ps.server.gradients import Gradient, aggregate
from adamax_ps.server.ledger import ApplyResult, PushId
from adamax_ps.server.optimizer_state import OptimizerState
from adamax_ps.server.push_tasks import prepare
from adamax_ps.server.sync import replica_key, replica_order

if TYPE_CHECKING:
    from adamax_ps.server.pushes import PushPipeline


def apply_sync(
    pipeline: PushPipeline,
    state: OptimizerState,
    checked: list[Gradient],
    push_id: PushId | None,
    step: int | None,
    aggregate_: bool,
    names: list[str],
    replica: int | None,
) -> ApplyResult:
    """A validated synchronous push: applied at once as the whole step when
    the workers summed it themselves (``aggregate_`` False), else added to its
    step's round, which sums the replicas in rank order and applies once."""
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
    if not aggregate_:
        pipeline.sync.close_step(state.name, step, current)
        try:
            prepared = prepare(state, checked)
            return pipeline.apply_prepared(
                state, prepared, [push_id], step, True, names
            )
        except BaseException:
            pipeline.sync.reopen(state.name, step)
            raise

    def apply_round(step: int, contributions: dict[str, tuple]) -> ApplyResult:
        replicas = sorted(contributions, key=replica_order)
        summed = aggregate(
            [contributions[r][1] for r in replicas], pipeline.sync.settings.average
        )
        ids = [contributions[r][0] for r in replicas]
        every = [n for r in replicas for n in contributions[r][2]]
        prepared = prepare(state, summed)
        return pipeline.apply_prepared(state, prepared, ids, step, True, every)

    pipeline.metrics.sync_waits.inc()
    return pipeline.sync.contribute(
        state.name,
        step,
        current,
        replica_key(push_id, replica, pipeline.sync.settings.replicas),
        (push_id, checked, names),
        apply_round,
    )
