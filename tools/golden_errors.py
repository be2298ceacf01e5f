"""Keras's answer to malformed and borderline input, for tests/data/golden/errors.json.

Each entry runs one small call against ``tf_keras.optimizers.legacy.Adamax``
and records either the exception (its class name and ``str()``) or the result
and the warnings raised. Messages are TensorFlow's own, so they name ops and
devices; one prints a Python set, whose order follows the string hash seed
(``make_golden.py`` pins it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras
from golden_oracle import jsonable

Adamax = tf_keras.optimizers.legacy.Adamax


def _var() -> tf.Variable:
    return tf.Variable([1.0, 2.0])


def _ones() -> tf.Tensor:
    return tf.ones([2])


def _after_one_step() -> tuple[Any, tf.Variable]:
    """An optimizer with three weights: iterations, m and v of one variable."""
    variable = _var()
    optimizer = Adamax()
    optimizer.apply_gradients([(_ones(), variable)])
    return optimizer, variable


def _empty_list() -> dict[str, Any]:
    optimizer, variable = Adamax(), _var()
    returned = optimizer.apply_gradients([])
    return {
        "iterations": int(optimizer.iterations.numpy()),
        "var": variable.numpy().tolist(),
        "returned": type(returned).__name__,
    }


def _not_atomic() -> dict[str, Any]:
    optimizer, first, second = Adamax(), _var(), _var()
    pairs = [(_ones(), first), (tf.ones([3]), second)]
    try:
        optimizer.apply_gradients(pairs)
        raised = None
    except tf.errors.InvalidArgumentError as error:
        raised = type(error).__name__
    return {
        "raised": raised,
        "iterations": int(optimizer.iterations.numpy()),
        "first_var_after": first.numpy().tolist(),
        "second_var_after": second.numpy().tolist(),
    }


def _same_variable_twice() -> dict[str, Any]:
    optimizer, variable = Adamax(), tf.Variable([0.0, 0.0])
    optimizer.apply_gradients([(_ones(), variable), (_ones(), variable)])
    return {
        "iterations": int(optimizer.iterations.numpy()),
        "var": variable.numpy().tolist(),
        "m": optimizer.get_slot(variable, "m").numpy().tolist(),
    }


def _out_of_range() -> None:
    slices = tf.IndexedSlices(
        values=tf.constant([1.0]),
        indices=tf.constant([5], dtype=tf.int64),
        dense_shape=tf.constant([2], dtype=tf.int64),
    )
    Adamax().apply_gradients([(slices, _var())])


def _set_weights_length() -> None:
    _after_one_step()[0].set_weights([np.array(3)])


def _set_weights_shape() -> None:
    optimizer = _after_one_step()[0]
    optimizer.set_weights([np.array(1), np.zeros(3), np.zeros(3)])


def _unknown_slot() -> None:
    optimizer, variable = _after_one_step()
    optimizer.get_slot(variable, "u")


CALLS: list[tuple[str, Callable[[], Any]]] = [
    ("Adamax(foo=1)", lambda: Adamax(foo=1)),
    ("Adamax(lr=-0.5)", lambda: Adamax(lr=-0.5)),
    (
        "Adamax(learning_rate=-0.5).get_config()",
        lambda: Adamax(learning_rate=-0.5).get_config(),
    ),
    ("Adamax(decay=-0.5)", lambda: Adamax(decay=-0.5)),
    ("Adamax(clipnorm=-0.5)", lambda: Adamax(clipnorm=-0.5)),
    ("Adamax(clipvalue=-0.5)", lambda: Adamax(clipvalue=-0.5)),
    ("Adamax(global_clipnorm=-0.5)", lambda: Adamax(global_clipnorm=-0.5)),
    (
        "Adamax(clipnorm=1.0, global_clipnorm=1.0)",
        lambda: Adamax(clipnorm=1.0, global_clipnorm=1.0),
    ),
    ("Adamax(epsilon=0).get_config()", lambda: Adamax(epsilon=0).get_config()),
    (
        "Adamax(name=None).get_config()['name'] (auto snake_case, uniquified)",
        lambda: Adamax(name=None).get_config()["name"],
    ),
    (
        "Adamax(beta_1=1.5).get_config() (no range check)",
        lambda: Adamax(beta_1=1.5).get_config(),
    ),
    (
        "Adamax.from_config({'lr': 0.5}).get_config()",
        lambda: Adamax.from_config({"lr": 0.5}).get_config(),
    ),
    (
        "Adamax.from_config({'learning_rate': 0.1, 'foo': 1})",
        lambda: Adamax.from_config({"learning_rate": 0.1, "foo": 1}),
    ),
    (
        "apply_gradients([(None, a)])  (all gradients None)",
        lambda: Adamax().apply_gradients([(None, _var())]),
    ),
    ("apply_gradients([])  (empty list)", _empty_list),
    ("apply_gradients([g])  (not pairs)", lambda: Adamax().apply_gradients([_ones()])),
    (
        "apply_gradients([(g, a, 1)])  (triples)",
        lambda: Adamax().apply_gradients([(_ones(), _var(), 1)]),
    ),
    (
        "apply_gradients([(a, g)])  (swapped)",
        lambda: Adamax().apply_gradients([(_var(), _ones())]),
    ),
    (
        "apply_gradients([(g_shape3, a_shape2)])  (shape mismatch)",
        lambda: Adamax().apply_gradients([(tf.ones([3]), _var())]),
    ),
    (
        "apply_gradients([(g_float64, a_float32)])  (dtype mismatch)",
        lambda: Adamax().apply_gradients([(tf.ones([2], tf.float64), _var())]),
    ),
    ("apply_gradients sparse index out of range", _out_of_range),
    (
        "apply_gradients([(ok, a), (bad_shape, c)])  "
        "(no atomicity: a is updated, iterations not)",
        _not_atomic,
    ),
    (
        "apply_gradients with the same variable twice (two sequential updates, same t)",
        _same_variable_twice,
    ),
    ("set_weights with wrong length", _set_weights_length),
    ("set_weights with wrong shape", _set_weights_shape),
    ("get_slot(var, 'u')", _unknown_slot),
]


def record(case: str, call: Callable[[], Any]) -> dict[str, Any]:
    """What Keras does with one call: the exception, or the result and warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = call()
        except Exception as error:  # the exception is the observation
            return {"case": case, "raises": type(error).__name__, "message": str(error)}
    return {
        "case": case,
        "raises": None,
        "result": jsonable(result),
        "warnings": [str(w.message) for w in caught],
    }


def observe() -> list[dict[str, Any]]:
    return [record(case, call) for case, call in CALLS]
