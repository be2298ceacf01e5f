"""The golden reference cases: optimizer arguments, variables, steps and notes.

The order is the order of the draws (see ``golden_inputs``): append new cases.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from golden_inputs import Case, Kind, Variable


def _schedule(class_name: str, **config: Any) -> dict[str, Any]:
    return {"schedule": {"class_name": class_name, "config": config}}


def _zeros_and_tiny(step: int, j: int, indices, values: np.ndarray):
    """Row 0 never gets a gradient at step 0; rows 1-2 get ones near epsilon."""
    if step == 0:
        values[0] = 0
        values[1] = 1e-9
        values[2] = -2e-7
    if step == 1:
        values[1] = 0
    return indices, values


def _cancelling_rows(step: int, j: int, indices, values: np.ndarray):
    """Step 0: a repeated row whose two values cancel, and an all-zero row."""
    if step == 0:
        indices = np.array([2, 2, 5, 7, 8])
        values[0] = -values[1]
        values[2] = 0
    return indices, values


def _mixed(step: int, j: int) -> Kind:
    return "dense" if step % 3 == 1 else "sparse"


def _none_pattern(step: int, j: int) -> Kind:
    absent = {0: {3}, 1: {0, 1}, 2: {0, 1, 2, 3, 4}}[j]
    return "none" if step in absent else "dense"


F16, F32, F64 = "float16", "float32", "float64"
V = Variable
SCHEDULE_NOTE = (
    "learning_rate is a LearningRateSchedule evaluated at step = iterations "
    "(before the increment)"
)
CASES: tuple[Case, ...] = (
    Case(
        "a_dense_f32_defaults",
        F32,
        (V((3, 4)), V((5,), 1.0)),
        10,
        {},
        "two dense variables, default hyper-parameters",
    ),
    Case(
        "b_dense_f64_custom",
        F64,
        (V((6,), 0.5), V((2, 3), 0.01)),
        10,
        {"learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-05},
        "float64 variables; note beta_1/beta_2/learning_rate are float32-rounded "
        "hyper variables",
    ),
    Case(
        "c_sparse_embedding_dup",
        F32,
        (V((50, 8), indices=12, dups=3),),
        10,
        {},
        "IndexedSlices gradients with repeated indices in every step",
    ),
    Case(
        "c_mixed_dense_sparse_same_var",
        F32,
        (V((20, 4), indices=6, dups=1),),
        10,
        {"learning_rate": 0.01},
        "dense steps (i % 3 == 1) and sparse steps on the same variable",
        kind=_mixed,
    ),
    Case(
        "c_sparse_f64_custom",
        F64,
        (V((12, 3), indices=5, dups=2),),
        8,
        {"learning_rate": 0.05, "beta_1": 0.7, "beta_2": 0.95, "epsilon": 1e-06},
        "float64 sparse with non-default hyper-parameters",
    ),
    Case(
        "d_dense_zeros_eps",
        F32,
        (V((6, 4), zeros=0.3),),
        8,
        {},
        "exact zeros, an all-zero row at step 0, tiny gradients comparable to epsilon",
        edit=_zeros_and_tiny,
    ),
    Case(
        "d_sparse_zero_rows",
        F32,
        (V((10, 3), indices=5, zeros=0.2),),
        6,
        {"epsilon": 0.001},
        "sparse: duplicate rows that cancel to 0, an explicit all-zero row, large "
        "epsilon",
        edit=_cancelling_rows,
    ),
    Case(
        "e_sched_exponential",
        F32,
        (V((4, 3)),),
        10,
        {
            "learning_rate": _schedule(
                "ExponentialDecay",
                initial_learning_rate=0.01,
                decay_steps=3,
                decay_rate=0.5,
            )
        },
        SCHEDULE_NOTE,
    ),
    Case(
        "e_sched_exponential_staircase",
        F32,
        (V((4, 3)),),
        10,
        {
            "learning_rate": _schedule(
                "ExponentialDecay",
                initial_learning_rate=0.01,
                decay_steps=3,
                decay_rate=0.5,
                staircase=True,
            )
        },
        SCHEDULE_NOTE,
    ),
    Case(
        "e_sched_piecewise",
        F32,
        (V((4, 3)),),
        10,
        {
            "learning_rate": _schedule(
                "PiecewiseConstantDecay", boundaries=[2, 5], values=[0.01, 0.005, 0.001]
            )
        },
        SCHEDULE_NOTE,
    ),
    Case(
        "e_sched_inverse_time",
        F32,
        (V((4, 3)),),
        10,
        {
            "learning_rate": _schedule(
                "InverseTimeDecay",
                initial_learning_rate=0.01,
                decay_steps=2,
                decay_rate=0.5,
            )
        },
        SCHEDULE_NOTE,
    ),
    Case(
        "e_sched_polynomial",
        F32,
        (V((4, 3)),),
        10,
        {
            "learning_rate": _schedule(
                "PolynomialDecay",
                initial_learning_rate=0.01,
                decay_steps=6,
                end_learning_rate=0.001,
                power=2.0,
            )
        },
        SCHEDULE_NOTE,
    ),
    Case(
        "e_sched_cosine",
        F32,
        (V((4, 3)),),
        10,
        {
            "learning_rate": _schedule(
                "CosineDecay", initial_learning_rate=0.01, decay_steps=8, alpha=0.1
            )
        },
        SCHEDULE_NOTE,
    ),
    Case(
        "f_legacy_decay",
        F32,
        (V((5,)),),
        10,
        {"learning_rate": 0.01, "decay": 0.05},
        "lr_t = lr / (1 + decay * iterations)",
    ),
    Case(
        "f_lr_alias",
        F32,
        (V((5,)),),
        6,
        {"lr": 0.02},
        "`lr` kwarg is an alias of learning_rate (wins over learning_rate when "
        "both given)",
    ),
    Case(
        "f_decay_with_schedule",
        F64,
        (V((5,)),),
        8,
        {
            "learning_rate": _schedule(
                "ExponentialDecay",
                initial_learning_rate=0.01,
                decay_steps=2,
                decay_rate=0.9,
            ),
            "decay": 0.1,
        },
        "decay is applied on top of the schedule value (float64 variable)",
    ),
    Case(
        "g_clipnorm_dense",
        F32,
        (V((4, 3), 1.0), V((6,), 0.01)),
        6,
        {"clipnorm": 0.5},
        "clipnorm is per tensor: g * c / max(||g||, c)",
    ),
    Case(
        "g_clipnorm_sparse",
        F32,
        (V((10, 4), 1.0, indices=6, dups=2),),
        6,
        {"clipnorm": 0.5},
        "clipnorm on IndexedSlices: norm over the RAW values (before duplicates "
        "are summed)",
    ),
    Case(
        "g_clipvalue_dense",
        F32,
        (V((4, 3), 0.3),),
        6,
        {"clipvalue": 0.15},
        "clipvalue: elementwise clip to [-c, c]",
    ),
    Case(
        "g_clipvalue_sparse",
        F32,
        (V((10, 4), 0.3, indices=6, dups=3),),
        6,
        {"clipvalue": 0.15},
        "clipvalue on IndexedSlices clips each raw slice; duplicates summed "
        "afterwards can exceed c",
    ),
    Case(
        "g_global_clipnorm_mixed",
        F32,
        (V((4, 3), 0.5), V((10, 4), 0.5, indices=5, dups=2)),
        6,
        {"global_clipnorm": 0.8},
        "global_clipnorm over a dense and a sparse gradient; sparse contributes "
        "its raw values",
    ),
    Case(
        "g_clipvalue_and_clipnorm",
        F32,
        (V((4, 3), 0.5),),
        5,
        {"clipvalue": 0.15, "clipnorm": 0.25},
        "clipvalue is applied first, then clipnorm",
    ),
    Case(
        "g_clipvalue_and_global",
        F32,
        (V((4, 3), 0.5), V((6,), 0.5)),
        5,
        {"clipvalue": 0.15, "global_clipnorm": 0.5},
        "clipvalue is applied first, then global_clipnorm",
    ),
    Case(
        "h_none_gradients",
        F32,
        (V((3,)), V((2, 2)), V((4,))),
        5,
        {},
        "w1 gets None for steps 0-1 (no slots until step 2), w0 None at step 3, "
        "w2 always None",
        kind=_none_pattern,
    ),
    Case(
        "i_dense_f16",
        F16,
        (V((4, 3)),),
        8,
        {"learning_rate": 0.01},
        "float16 variable, dense; all arithmetic in half precision",
    ),
    Case(
        "i_sparse_f16",
        F16,
        (V((8, 3), indices=4, dups=1),),
        8,
        {"learning_rate": 0.01},
        "float16 variable, sparse with duplicates",
    ),
)
