"""Learning-rate schedules: values against plain float64 formulas, and configs."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest

from adamax_ps.server.schedules import (
    SCHEDULE_CLASSES,
    CosineDecay,
    CosineDecayRestarts,
    ExponentialDecay,
    InverseTimeDecay,
    PiecewiseConstantDecay,
    PolynomialDecay,
    schedule_from_config,
)

STEPS = range(0, 40)


def _sgdr(step, lr0, first, t_mul, m_mul, alpha):
    """Cosine decay with restarts, walking the periods one by one (float64)."""
    start, period, restart = 0.0, float(first), 0
    while step >= start + period:
        start += period
        period *= t_mul
        restart += 1
    fraction = (step - start) / period
    cosine = 0.5 * m_mul**restart * (1 + math.cos(math.pi * fraction))
    return lr0 * ((1 - alpha) * cosine + alpha)


def _cosine(step, lr0, decay_steps, alpha, warmup_target=None, warmup_steps=0):
    if warmup_target is None:
        s = min(step, decay_steps)
        return lr0 * (
            (1 - alpha) * 0.5 * (1 + math.cos(math.pi * s / decay_steps)) + alpha
        )
    s = min(step, decay_steps + warmup_steps)
    if s < warmup_steps:
        return (warmup_target - lr0) * s / warmup_steps + lr0
    s -= warmup_steps
    return warmup_target * (
        (1 - alpha) * 0.5 * (1 + math.cos(math.pi * s / decay_steps)) + alpha
    )


def _polynomial(step, lr0, decay_steps, end, power, cycle):
    if cycle:
        decay_steps = decay_steps * (1 if step == 0 else math.ceil(step / decay_steps))
    else:
        step = min(step, decay_steps)
    return (lr0 - end) * (1 - step / decay_steps) ** power + end


CASES = [
    (
        ExponentialDecay(initial_learning_rate=0.1, decay_steps=4, decay_rate=0.7),
        lambda s: 0.1 * 0.7 ** (s / 4),
    ),
    (
        ExponentialDecay(
            initial_learning_rate=0.1, decay_steps=4, decay_rate=0.7, staircase=True
        ),
        lambda s: 0.1 * 0.7 ** (s // 4),
    ),
    (
        InverseTimeDecay(initial_learning_rate=0.1, decay_steps=3, decay_rate=0.5),
        lambda s: 0.1 / (1 + 0.5 * s / 3),
    ),
    (
        InverseTimeDecay(
            initial_learning_rate=0.1, decay_steps=3, decay_rate=0.5, staircase=True
        ),
        lambda s: 0.1 / (1 + 0.5 * (s // 3)),
    ),
    (
        PiecewiseConstantDecay(boundaries=[3, 10, 20], values=[1.0, 0.5, 0.25, 0.1]),
        lambda s: 1.0 if s <= 3 else 0.5 if s <= 10 else 0.25 if s <= 20 else 0.1,
    ),
    (
        PolynomialDecay(
            initial_learning_rate=0.1, decay_steps=12, end_learning_rate=0.01, power=0.5
        ),
        lambda s: _polynomial(s, 0.1, 12, 0.01, 0.5, False),
    ),
    (
        PolynomialDecay(
            initial_learning_rate=0.1, decay_steps=7, end_learning_rate=0.01, cycle=True
        ),
        lambda s: _polynomial(s, 0.1, 7, 0.01, 1.0, True),
    ),
    (
        CosineDecay(initial_learning_rate=0.1, decay_steps=25, alpha=0.05),
        lambda s: _cosine(s, 0.1, 25, 0.05),
    ),
    (
        CosineDecay(
            initial_learning_rate=0.0, decay_steps=20, warmup_target=0.1, warmup_steps=8
        ),
        lambda s: _cosine(s, 0.0, 20, 0.0, 0.1, 8),
    ),
    (
        CosineDecayRestarts(initial_learning_rate=0.1, first_decay_steps=5),
        lambda s: _sgdr(s, 0.1, 5, 2.0, 1.0, 0.0),
    ),
    (
        CosineDecayRestarts(
            initial_learning_rate=0.1,
            first_decay_steps=6,
            t_mul=1.0,
            m_mul=0.5,
            alpha=0.1,
        ),
        lambda s: _sgdr(s, 0.1, 6, 1.0, 0.5, 0.1),
    ),
]


def _case_id(value: object) -> str:
    """A case's id: the schedule's repr; the reference (a lambda, whose repr
    holds an address that differs between processes) adds nothing."""
    return "" if isinstance(value, types.FunctionType) else repr(value)[:60]


@pytest.mark.parametrize(("schedule", "reference"), CASES, ids=_case_id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_values_follow_the_formula(schedule, reference, dtype):
    for step in STEPS:
        value = schedule(dtype(step))
        assert value.dtype == np.float32
        assert float(value) == pytest.approx(reference(step), rel=2e-6, abs=1e-9), step


@pytest.mark.parametrize(("schedule", "reference"), CASES, ids=_case_id)
def test_config_round_trip(schedule, reference):
    serialized = schedule.serialize()
    assert serialized["module"] == "keras.optimizers.schedules"
    assert serialized["class_name"] == type(schedule).class_name
    assert serialized["registered_name"] is None
    assert schedule_from_config(serialized) == schedule
    assert (
        schedule_from_config(
            {"class_name": serialized["class_name"], "config": serialized["config"]}
        )
        == schedule
    )


def test_config_keys_in_keras_order():
    keys = {name: list(cls.model_fields) for name, cls in SCHEDULE_CLASSES.items()}
    assert keys == {
        "ExponentialDecay": [
            "initial_learning_rate",
            "decay_steps",
            "decay_rate",
            "staircase",
            "name",
        ],
        "PiecewiseConstantDecay": ["boundaries", "values", "name"],
        "PolynomialDecay": [
            "initial_learning_rate",
            "decay_steps",
            "end_learning_rate",
            "power",
            "cycle",
            "name",
        ],
        "InverseTimeDecay": [
            "initial_learning_rate",
            "decay_steps",
            "decay_rate",
            "staircase",
            "name",
        ],
        "CosineDecay": [
            "initial_learning_rate",
            "decay_steps",
            "alpha",
            "name",
            "warmup_target",
            "warmup_steps",
        ],
        "CosineDecayRestarts": [
            "initial_learning_rate",
            "first_decay_steps",
            "t_mul",
            "m_mul",
            "alpha",
            "name",
        ],
    }


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"class_name": "Linear", "config": {}}, "Unknown learning-rate schedule"),
        ({"config": {}}, "must be given as"),
        (
            {
                "class_name": "ExponentialDecay",
                "config": {"initial_learning_rate": 0.1},
            },
            "decay_steps",
        ),
        (
            {
                "class_name": "ExponentialDecay",
                "config": {
                    "initial_learning_rate": 0.1,
                    "decay_steps": 0,
                    "decay_rate": 0.5,
                },
            },
            "greater than 0",
        ),
        (
            {
                "class_name": "ExponentialDecay",
                "config": {
                    "initial_learning_rate": "0.1",
                    "decay_steps": 2,
                    "decay_rate": 0.5,
                },
            },
            "initial_learning_rate",
        ),
        (
            {
                "class_name": "CosineDecay",
                "config": {"initial_learning_rate": 0.1, "decay_steps": 5, "beta": 1},
            },
            "beta",
        ),
        (
            {
                "class_name": "PiecewiseConstantDecay",
                "config": {"boundaries": [1, 2], "values": [0.1, 0.2]},
            },
            "1 less than the length of values",
        ),
        ({"class_name": "ExponentialDecay", "config": [1, 2]}, "must be a mapping"),
        ({"class_name": "ExponentialDecay", "config": {}, "extra": 1}, "Unknown keys"),
    ],
)
def test_bad_configs_are_refused_clearly(config, message):
    with pytest.raises(ValueError, match=message):
        schedule_from_config(config)
