"""A push's gradients prepared before its critical section: clipped in
Keras's order, a table named more than once made one gradient, then their
duplicate rows summed (pure work, no lock)."""

from __future__ import annotations

import dataclasses

import numpy as np

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
    return [g.deduplicated() for g in _one_per_table(gradients)]


def _one_per_table(gradients: list[Gradient]) -> list[Gradient]:
    """A table named several times in one push (two modules sharing it) is
    one gradient of all their keys, at its first place: its keys then get one
    update with their rows summed, as a framework's shared embedding
    accumulates them. (A variable named twice is updated twice, as in Keras.)"""
    seen: dict[str, list[Gradient]] = {}
    for g in gradients:
        if g.keyed:
            seen.setdefault(g.variable, []).append(g)
    if all(len(group) == 1 for group in seen.values()):
        return gradients
    out = []
    for g in gradients:
        group = seen.get(g.variable) if g.keyed else None
        if group is None:
            out.append(g)
        elif group[0] is g:
            out.append(
                dataclasses.replace(
                    g,
                    indices=np.concatenate([x.indices for x in group]),
                    values=np.concatenate([x.values for x in group]),
                    unique=False,
                )
            )
    return out
