"""Whole-state snapshots of a ParameterService, for bit-for-bit comparisons."""

from __future__ import annotations

from typing import Any

import numpy as np

from adamax_ps.server.ledger import PushId
from adamax_ps.server.service import Gradient, ParameterService

F32 = np.float32


def snapshot(service: ParameterService) -> dict[str, Any]:
    """Every variable, slot, counter, weight order and remembered push, as bytes."""
    state: dict[str, Any] = {}
    for record in service.variables():
        state[f"var:{record.name}"] = (
            record.shape,
            record.dtype.str,
            service.pull(record.name).tobytes(),
        )
    for optimizer in service.optimizers():
        name = optimizer.name
        with optimizer.lock:
            state[f"opt:{name}"] = optimizer.to_json()
            slotted = {k: sorted(v) for k, v in optimizer.slotted.items()}
            extra = {k: v.tobytes() for k, v in optimizer.extra_weights.items()}
        state[f"extra:{name}"] = extra
        for variable, slots in slotted.items():
            for slot in slots:
                state[f"slot:{name}:{variable}:{slot}"] = service.pull(
                    variable, optimizer=name, slot=slot
                ).tobytes()
    state["ledger"] = service.ledger.snapshot()
    return state


def build_state(service, pushes: int = 6) -> None:
    """A deterministic state covering every kind of thing a checkpoint holds."""
    rng = np.random.default_rng(11)
    service.create_optimizer(
        {
            "learning_rate": {
                "class_name": "ExponentialDecay",
                "config": {
                    "initial_learning_rate": 0.01,
                    "decay_steps": 3,
                    "decay_rate": 0.5,
                },
            },
            "clipvalue": 0.5,
        }
    )
    service.create_optimizer({"name": "second", "beta_1": 0.8})
    service.create_variable("emb", shape=(300, 4), initializer="glorot_uniform", seed=3)
    service.create_variable("dense", initial_value=rng.normal(size=(7,)))  # float64
    service.create_variable("half", initial_value=np.ones((5, 2), np.float16))
    service.create_variable("scalar", initial_value=np.float32(2.5))
    service.create_variable("empty", shape=(0, 3))
    for i in range(pushes):
        service.apply(
            "Adamax",
            [
                Gradient.sparse(
                    "emb",
                    rng.integers(0, 300, 16),
                    rng.normal(size=(16, 4)).astype(F32),
                ),
                Gradient.dense("dense", rng.normal(size=7)),
                Gradient.dense("scalar", np.array(rng.normal(), F32)),
            ],
            PushId("worker-a", i),
        )
    service.apply(
        "second",
        [Gradient.dense("half", np.full((5, 2), 0.5, np.float16))],
        PushId("worker-b", 0),
    )
    service.add_slot("Adamax", "dense", "z", initializer="ones")
    service.add_weight("second", "scale", shape=(3,), initializer="ones")
