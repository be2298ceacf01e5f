"""Step reservations: server 0 of a cluster hands out each call's step.

A worker's first call in a cluster reserves its step here, in a round trip
of its own; later calls get theirs handed out with the answer to the call
before (``PushPipeline.apply_prepared``'s ``reserve_next``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from adamax_ps.server.errors import FailedPreconditionError
from adamax_ps.server.ledger import STEP, ApplyResult, PushId

if TYPE_CHECKING:
    from adamax_ps.server.pushes import PushPipeline


def reserve_step(
    pipeline: PushPipeline,
    optimizer: str,
    variables: Sequence[str],
    push_id: PushId | None,
    step: int | None,
) -> int:
    """The coordinator takes the step of one ``apply_gradients`` call (its
    servers then apply with it), counts the call and records its variables
    for Keras's ``weights`` order; exactly once per push id. ``step``: the
    step taken, when the write-ahead log replays the reservation."""
    if pipeline.server_index != 0:
        raise FailedPreconditionError(
            "steps are reserved at server 0 of the cluster; this is server "
            f"{pipeline.server_index}"
        )
    state = pipeline.optimizers.get(optimizer)
    if push_id is not None:
        answer = pipeline.ledger.begin(push_id, STEP)
        if answer is not None:
            pipeline.journal.wait(answer.record)
            return answer.step
    try:
        pipeline.journal.check()
    except BaseException:
        if push_id is not None:
            pipeline.ledger.abandon(push_id, STEP)
        raise
    with state.lock:
        # Counted here, once (the ledger and the log's position keep a
        # retry or a replay from counting it again).
        step = state.take_step() if step is None else step
        state.create_iterations()
        state.hypers_created = True
        state.record_call([v for v in variables if pipeline.tables.find(v) is None])
        state.iterations += 1
        state.next_step = max(state.next_step, step + 1)
        logged = pipeline.journal.write(
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
            pipeline.ledger.complete(push_id, result, STEP)
    pipeline.journal.wait(logged)
    return step
