"""Keras 3 pushes held back until the next lookup: which model a traced step
belongs to, and which dense weights a graph's lookups refresh.

``adamax_ps.keras.Adamax`` holds a step's push back when every dense weight
it would refresh is assigned by an ``Embedding`` lookup of the same traced
step, before any layer used them: that lookup sends the push with the read
of the new batch's rows and the dense weights after it, and assigns them
before any later layer reads them (TensorFlow orders a graph's ops on one
variable as they were traced). The lookup learns the weights from the model
whose ``train_step``/``test_step``/``predict_step`` is being traced: Keras's
documented places for a model's step, custom ones included.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

STEP_METHODS = frozenset({"train_step", "test_step", "predict_step"})

# Per traced graph: ids of the dense weights its lookups assign.
_assigned: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_in_step(model_class: type) -> Any:
    """The Keras model whose step is being traced (or run), else None."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name in STEP_METHODS:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, model_class):
                return candidate
        frame = frame.f_back
    return None


def mark_assigned(graph: Any, variables: list[Any]) -> None:
    """``graph``'s lookups assign ``variables`` before its layers read them."""
    _assigned.setdefault(graph, set()).update(id(v) for v in variables)


def assigned_in(graph: Any) -> set[int]:
    return _assigned.get(graph, set())


def read_in(graph: Any, variables: list[Any]) -> bool:
    """Whether ``graph`` already uses any of ``variables`` (a layer traced
    before the lookup read it: the lookup's assignment would come too late)."""
    handles = {id(getattr(v, "handle", v)) for v in variables}
    return any(id(t) in handles for t in getattr(graph, "external_captures", ()))
