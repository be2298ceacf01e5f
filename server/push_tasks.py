"""A push's gradients prepared before its critical section: clipped in
Keras's order, then their duplicate rows summed (pure work, no lock)."""

from __future__ import annotations

from adamax_ps.server.errors import InvalidArgumentError
from adamax_ps.server.gradients import Gradient
from adamax_ps.server.optimizer_state import OptimizerState


def prepare(
    state: OptimizerState, gradients: list[Gradient], clip: bool = True
) -> list[Gradient]:
    """Clip (Keras order, raw sparse values), then sum duplicate rows (step 3)."""
    if clip and state.config.clips:
        try:
            clipped = state.config.clip([g.values for g in gradients])
        except ValueError as e:
            raise InvalidArgumentError(str(e)) from None
        gradients = [g.with_values(c) for g, c in zip(gradients, clipped, strict=True)]
    return [g.deduplicated() for g in gradients]
