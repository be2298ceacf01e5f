"""AdamaxConfig follows Keras's constructor rules, messages and get_config()."""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers.golden import load_errors

from adamax_ps.server.hyperparams import AdamaxConfig
from adamax_ps.server.schedules import ExponentialDecay

CONSTRUCTOR_CASES = {
    "Adamax(foo=1)": lambda: AdamaxConfig.from_keras(foo=1),
    "Adamax(lr=-0.5)": lambda: AdamaxConfig.from_keras(lr=-0.5),
    "Adamax(learning_rate=-0.5).get_config()": lambda: AdamaxConfig.from_keras(
        learning_rate=-0.5
    ).get_config(),
    "Adamax(decay=-0.5)": lambda: AdamaxConfig.from_keras(decay=-0.5),
    "Adamax(clipnorm=-0.5)": lambda: AdamaxConfig.from_keras(clipnorm=-0.5),
    "Adamax(clipvalue=-0.5)": lambda: AdamaxConfig.from_keras(clipvalue=-0.5),
    "Adamax(global_clipnorm=-0.5)": lambda: AdamaxConfig.from_keras(
        global_clipnorm=-0.5
    ),
    "Adamax(clipnorm=1.0, global_clipnorm=1.0)": lambda: AdamaxConfig.from_keras(
        clipnorm=1.0, global_clipnorm=1.0
    ),
    "Adamax(epsilon=0).get_config()": lambda: AdamaxConfig.from_keras(
        epsilon=0
    ).get_config(),
    "Adamax(beta_1=1.5).get_config() (no range check)": lambda: AdamaxConfig.from_keras(
        beta_1=1.5
    ).get_config(),
    "Adamax.from_config({'lr': 0.5}).get_config()": lambda: AdamaxConfig.from_config(
        {"lr": 0.5}
    ).get_config(),
    "Adamax.from_config({'learning_rate': 0.1, 'foo': 1})": (
        lambda: AdamaxConfig.from_config({"learning_rate": 0.1, "foo": 1})
    ),
}


def _normalise_sets(message: str) -> str:
    """Python prints sets in a per-process order: compare their sorted items."""
    return re.sub(
        r"\{([^{}]*)\}",
        lambda m: "{" + ", ".join(sorted(m.group(1).split(", "))) + "}",
        message,
    )


def _golden(case: str) -> dict:
    return next(e for e in load_errors() if e["case"] == case)


@pytest.mark.parametrize("case", list(CONSTRUCTOR_CASES))
def test_constructor_behaves_as_keras(case):
    expected = _golden(case)
    call = CONSTRUCTOR_CASES[case]
    if expected["raises"] is None:
        assert call() == expected["result"]
        return
    exception = {"TypeError": TypeError, "ValueError": ValueError}[expected["raises"]]
    with pytest.raises(exception) as info:
        call()
    assert _normalise_sets(str(info.value)) == _normalise_sets(expected["message"])


def test_every_constructor_case_of_the_golden_errors_is_covered():
    constructor_cases = {
        e["case"] for e in load_errors() if e["case"].startswith("Adamax")
    }
    # A name identifies the optimizer on a cluster, so adamax-ps refuses one
    # that is not a non-empty string where Keras auto-names.
    spec_overrides = {
        "Adamax(name=None).get_config()['name'] (auto snake_case, uniquified)"
    }
    assert constructor_cases - spec_overrides == set(CONSTRUCTOR_CASES)


@pytest.mark.parametrize("name", [None, "", 123])
def test_name_must_be_a_non_empty_string(name):
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        AdamaxConfig.from_keras(name=name)


def test_lr_alias_wins_and_warns():
    with pytest.warns(UserWarning, match="`lr` argument is deprecated"):
        config = AdamaxConfig.from_keras(learning_rate=0.5, lr=0.25)
    assert config.learning_rate == 0.25
    assert "lr" not in config.get_config()


def test_fresh_defaults_are_keras_defaults():
    assert AdamaxConfig.from_keras().get_config() == {
        "name": "Adamax",
        "learning_rate": 0.001,
        "decay": 0.0,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-07,
    }


def test_clip_keys_come_in_keras_order():
    config = AdamaxConfig.from_keras(clipvalue=0.1, global_clipnorm=2.0)
    assert list(config.get_config())[:3] == ["name", "clipvalue", "global_clipnorm"]
    config = AdamaxConfig.from_keras(clipvalue=0.1, clipnorm=2.0)
    assert list(config.get_config())[:3] == ["name", "clipnorm", "clipvalue"]


def test_schedule_object_and_config_round_trip():
    schedule = ExponentialDecay(
        initial_learning_rate=0.01, decay_steps=3, decay_rate=0.5
    )
    config = AdamaxConfig.from_keras(learning_rate=schedule, decay=0.1)
    assert config.learning_rate is schedule
    again = AdamaxConfig.from_config(config.get_config())
    assert again == config
    assert again.get_config() == config.get_config()


def test_from_config_of_an_empty_dict_gives_defaults():
    assert AdamaxConfig.from_config({}) == AdamaxConfig.from_keras()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"learning_rate": "abc"}, "learning_rate must be a number"),
        ({"beta_1": "0.9"}, "beta_1 must be a number"),
        ({"clipnorm": "big"}, "clipnorm must be a number"),
        ({"learning_rate": True}, "learning_rate must be a number"),
        (
            {"learning_rate": {"class_name": "Nope", "config": {}}},
            "Unknown learning-rate",
        ),
    ],
)
def test_non_numbers_are_refused_with_a_clear_error(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        AdamaxConfig.from_keras(**kwargs)


def test_numpy_scalars_are_accepted():
    config = AdamaxConfig.from_keras(
        learning_rate=np.float32(0.01), beta_1=np.float64(0.8)
    )
    assert config.get_config()["learning_rate"] == float(np.float32(0.01))
    assert config.beta_1 == 0.8


def test_config_is_frozen():
    config = AdamaxConfig.from_keras()
    with pytest.raises(ValueError, match="frozen"):
        config.beta_1 = 0.5  # type: ignore[misc]


def test_clipping_is_reported():
    assert not AdamaxConfig.from_keras().clips
    assert AdamaxConfig.from_keras(clipvalue=1.0).clips
