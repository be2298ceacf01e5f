"""How the golden cases draw their inputs: the case model and one seeded generator.

Every case draws its inputs from one ``numpy.random.default_rng(SEED)`` shared
by all cases, in the order of ``golden_cases.CASES``: for each step, for each
variable of the step, its gradient; then every variable's initial value. So the
draws of one case depend on all the cases before it: add a case at the end,
never in the middle, or every later case changes.

A dense gradient is ``standard_normal(shape) * scale``. A sparse gradient
draws ``integers(0, rows, n)`` indices, then makes ``dups`` repeats (each picks
two positions with ``choice(n, 2, replace=False)`` and copies the first's index
into the second), then ``standard_normal((n, *row)) * scale`` values. With a
``zeros`` fraction, ``random(shape) < zeros`` then zeroes entries. A case's
``edit`` may fix some entries afterwards. Initial values are
``standard_normal(shape)``. Draws are float64, cast to the case's dtype last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

SEED = 1234

Kind = str  # "dense" | "sparse" | "none"


@dataclass(frozen=True)
class Variable:
    """One variable of a case and how its gradients are drawn."""

    shape: tuple[int, ...]
    scale: float = 0.1
    indices: int = 0  # sparse: indices per step (0: the variable is dense)
    dups: int = 0  # sparse: repeated indices forced per step
    zeros: float = 0.0  # fraction of gradient entries set to zero


@dataclass(frozen=True)
class Case:
    """One reference run: an optimizer, variables and a list of steps."""

    name: str
    dtype: str
    variables: tuple[Variable, ...]
    n_steps: int
    ctor_kwargs: dict[str, Any]
    notes: str
    # (step, variable index) -> kind; default: sparse if the variable has
    # indices, dense otherwise.
    kind: Callable[[int, int], Kind] | None = None
    # Fixed edits of a step's gradient, after drawing: (step, j, indices,
    # values) -> (indices, values); indices is None for a dense gradient.
    edit: Callable[..., tuple[Any, np.ndarray]] | None = None

    def kind_of(self, step: int, j: int) -> Kind:
        if self.kind is not None:
            return self.kind(step, j)
        return "sparse" if self.variables[j].indices else "dense"


@dataclass
class Inputs:
    """The drawn inputs of one case: initial values and each step's gradients."""

    inits: list[np.ndarray]
    # steps[i] is a list of (j, kind, grad) where grad is an array (dense),
    # an (indices, values) pair (sparse) or None.
    steps: list[list[tuple[int, Kind, Any]]]


def _sparse_indices(rng: np.random.Generator, rows: int, n: int, dups: int):
    indices = rng.integers(0, rows, n)
    for _ in range(dups):
        source, target = rng.choice(n, 2, replace=False)
        indices[target] = indices[source]
    return indices


def _gradient(rng: np.random.Generator, case: Case, step: int, j: int, kind: Kind):
    variable = case.variables[j]
    indices = None
    shape = variable.shape
    if kind == "sparse":
        indices = _sparse_indices(rng, shape[0], variable.indices, variable.dups)
        shape = (variable.indices, *shape[1:])
    values = rng.standard_normal(shape) * variable.scale
    if variable.zeros:
        values[rng.random(shape) < variable.zeros] = 0
    if case.edit is not None:
        indices, values = case.edit(step, j, indices, values)
    values = values.astype(case.dtype)
    return values if indices is None else (indices, values)


def draw_inputs(rng: np.random.Generator, case: Case) -> Inputs:
    """Draw one case's gradients, then its initial values, from ``rng``."""
    steps = []
    for i in range(case.n_steps):
        step = []
        for j in range(len(case.variables)):
            kind = case.kind_of(i, j)
            grad = None if kind == "none" else _gradient(rng, case, i, j, kind)
            step.append((j, kind, grad))
        steps.append(step)
    inits = [rng.standard_normal(v.shape).astype(case.dtype) for v in case.variables]
    return Inputs(inits=inits, steps=steps)
