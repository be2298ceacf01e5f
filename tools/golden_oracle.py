"""Runs one golden case through TensorFlow's Keras 2 Adamax and records the run.

The optimizer is ``tf_keras.optimizers.legacy.Adamax`` in eager mode on the
CPU, fed exactly the drawn arrays. Each step records the learning rate the
optimizer is about to use, then calls ``apply_gradients`` once and records
every variable, its ``m`` and ``v`` slots (zeros while they do not exist) and
``iterations``. The case's index entry holds the configs before and after the
run and the final order of ``optimizer.weights``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras
from golden_inputs import Case, Inputs

SLOTS = ("m", "v")


def jsonable(value: Any) -> Any:
    """Configs hold numpy scalars (hyper-parameter variables read back)."""
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def make_optimizer(ctor_kwargs: dict[str, Any]):
    """The optimizer of a case; a schedule is written {"schedule": {...}}."""
    kwargs = dict(ctor_kwargs)
    lr = kwargs.get("learning_rate")
    if isinstance(lr, dict) and "schedule" in lr:
        spec = lr["schedule"]
        schedule = getattr(tf_keras.optimizers.schedules, spec["class_name"])
        kwargs["learning_rate"] = schedule(**spec["config"])
    return tf_keras.optimizers.legacy.Adamax(**kwargs)


def _slot(optimizer, variable, name: str):
    try:
        return optimizer.get_slot(variable, name)
    except KeyError:
        return None


def _pair(item: tuple[int, str, Any], variables: list[tf.Variable]):
    j, kind, grad = item
    variable = variables[j]
    if kind == "none":
        return None, variable
    if kind == "sparse":
        indices, values = grad
        slices = tf.IndexedSlices(
            values=tf.constant(values),
            indices=tf.constant(indices),
            dense_shape=tf.constant(variable.shape.as_list(), dtype=tf.int64),
        )
        return slices, variable
    return tf.constant(grad), variable


def _weights_order(optimizer, variables: list[tf.Variable]) -> list[Any]:
    names = []
    for weight in optimizer.weights:
        if weight is optimizer.iterations:
            names.append("iterations")
            continue
        names.append(
            next(
                [j, slot]
                for j, variable in enumerate(variables)
                for slot in SLOTS
                if _slot(optimizer, variable, slot) is weight
            )
        )
    return names


def _step_entry(step: list[tuple[int, str, Any]]) -> list[dict[str, Any]]:
    entry = []
    for j, kind, grad in step:
        item: dict[str, Any] = {"var": j, "kind": kind}
        if kind == "sparse":
            item["indices"] = grad[0].tolist()
        entry.append(item)
    return entry


def input_arrays(inputs: Inputs) -> dict[str, np.ndarray]:
    """The case's inputs under their archive keys, in the archive's order."""
    arrays = {f"w{j}_init": init for j, init in enumerate(inputs.inits)}
    for i, step in enumerate(inputs.steps):
        for j, kind, grad in step:
            if kind == "dense":
                arrays[f"w{j}_s{i:03d}_grad"] = grad
            elif kind == "sparse":
                arrays[f"w{j}_s{i:03d}_idx"] = grad[0]
                arrays[f"w{j}_s{i:03d}_val"] = grad[1]
    return arrays


def run_case(case: Case, inputs: Inputs) -> tuple[dict[str, np.ndarray], dict]:
    """Replay the case in TensorFlow: its archive arrays and its index entry."""
    dtype = tf.as_dtype(case.dtype)
    variables = [tf.Variable(init) for init in inputs.inits]
    optimizer = make_optimizer(case.ctor_kwargs)
    fresh_config = jsonable(optimizer.get_config())
    n, count = case.n_steps, len(variables)
    trace = {
        what: [np.zeros((n, *v.shape), case.dtype) for v in variables]
        for what in ("var", "m", "v")
    }
    has_slots = [np.zeros(n, bool) for _ in variables]
    iterations = np.zeros(n, np.int64)
    lr_t = np.zeros(n, np.float64)
    for i, step in enumerate(inputs.steps):
        lr_t[i] = np.float64(optimizer._decayed_lr(dtype).numpy())
        optimizer.apply_gradients([_pair(item, variables) for item in step])
        iterations[i] = optimizer.iterations.numpy()
        for j, variable in enumerate(variables):
            trace["var"][j][i] = variable.numpy()
            for slot in SLOTS:
                value = _slot(optimizer, variable, slot)
                if value is not None:
                    trace[slot][j][i] = value.numpy()
            has_slots[j][i] = _slot(optimizer, variable, "m") is not None
    arrays = input_arrays(inputs)
    for j in range(count):
        for what in ("var", "m", "v"):
            arrays[f"w{j}_{what}"] = trace[what][j]
        arrays[f"w{j}_has_slots"] = has_slots[j]
    arrays["iterations"] = iterations
    arrays["lr_t"] = lr_t
    entry = {
        "name": case.name,
        "file": f"{case.name}.npz",
        "dtype": case.dtype,
        "shapes": [list(v.shape) for v in case.variables],
        "n_vars": count,
        "n_steps": n,
        "ctor_kwargs": case.ctor_kwargs,
        "get_config_fresh": fresh_config,
        "get_config": jsonable(optimizer.get_config()),
        "serialize": jsonable(tf_keras.optimizers.serialize(optimizer)),
        "weights_order_final": _weights_order(optimizer, variables),
        "steps": [_step_entry(step) for step in inputs.steps],
        "notes": case.notes,
    }
    return arrays, entry
