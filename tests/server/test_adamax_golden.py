"""Every TensorFlow reference run replayed through the kernel layer.

Bit-exact for every var, m and v value (float16, float32, float64; dense,
sparse, schedules, decay, clipvalue, None gradients); cases clipping by norm
within 1e-7 absolute, since TF's norm reduction order cannot be reproduced.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers.golden import assert_matches, case_names, load_case

from adamax_ps.server import adamax
from adamax_ps.server.hyperparams import AdamaxConfig


def make_config(case) -> AdamaxConfig:
    """The case's config; the ``lr`` alias warns as in Keras."""
    if "lr" in case.kwargs:
        with pytest.warns(UserWarning, match="`lr` argument is deprecated"):
            return AdamaxConfig.from_keras(**case.kwargs)
    return AdamaxConfig.from_keras(**case.kwargs)


def replay(case, check=None):
    """Run the case as Keras's apply_gradients does, calling ``check`` per step."""
    config = make_config(case)
    weights = [case.init(j).copy() for j in range(len(case.shapes))]
    slots: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    iterations = 0
    for i, step in enumerate(case.steps()):
        pairs = [p for p in step if p.kind != "none"]
        for p in pairs:
            if p.var not in slots:
                w = weights[p.var]
                slots[p.var] = (np.zeros_like(w), np.zeros_like(w))
        clipped = config.clip([p.grad for p in pairs])
        scalars = config.step_scalars(iterations, case.dtype)
        for p, g in zip(pairs, clipped, strict=True):
            w = weights[p.var]
            m, v = slots[p.var]
            if p.kind == "dense":
                adamax.dense_update(w, m, v, g, scalars)
            else:
                adamax.sparse_update(w, m, v, p.indices, g, scalars)
        iterations += 1
        if check is not None:
            check(i, iterations, scalars, weights, slots)
    return config, weights, slots, iterations


@pytest.mark.parametrize("name", case_names())
def test_replay_matches_tensorflow(name):
    case = load_case(name)

    def check(i, iterations, scalars, weights, slots):
        assert iterations == case.arrays["iterations"][i]
        assert float(scalars.lr_t) == pytest.approx(case.arrays["lr_t"][i], rel=1e-6)
        for j, w in enumerate(weights):
            assert_matches(case, w, j, "var", i)
            assert (j in slots) == case.has_slots(j, i), f"w{j} slots at step {i}"
            if j in slots:
                assert_matches(case, slots[j][0], j, "m", i)
                assert_matches(case, slots[j][1], j, "v", i)

    replay(case, check)


@pytest.mark.parametrize(
    "name", [n for n in case_names() if n.startswith(("e_", "f_"))]
)
def test_learning_rate_is_exact(name):
    """The learning rate of each step equals TensorFlow's, bit for bit."""
    case = load_case(name)
    seen = []
    replay(case, lambda i, it, scalars, *_: seen.append(float(scalars.lr_t)))
    assert seen == case.arrays["lr_t"].tolist()


@pytest.mark.parametrize("name", case_names())
def test_configs_match_keras(name):
    case = load_case(name)
    config = make_config(case)
    assert config.get_config() == case.entry["get_config_fresh"]
    assert config.get_config(hypers_created=True) == case.entry["get_config"]
    assert config.serialize(hypers_created=True) == case.entry["serialize"]
    # Key order is part of Keras's get_config().
    assert list(config.get_config()) == list(case.entry["get_config_fresh"])
    again = AdamaxConfig.from_config(config.get_config())
    assert again.get_config() == config.get_config()
