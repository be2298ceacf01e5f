"""AdamaxConfig: one frozen, validated set of Adamax hyper-parameters, as in Keras.

Built from the Keras constructor's arguments (``from_keras``) or from a Keras
``get_config()`` dict (``from_config``), with Keras's exception types and
messages for bad input (``tests/data/golden/errors.json``), and read back with
``get_config()`` in Keras's key order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from adamax_ps.common import keras
from adamax_ps.server.adamax import StepScalars, clip_gradients
from adamax_ps.server.schedules import LearningRateSchedule, schedule_from_config

DEFAULT_EPSILON = keras.DEFAULT_EPSILON


def _as_float(what: str, value: Any) -> float:
    return keras.as_float(what, value)


class AdamaxConfig(BaseModel):
    """Keras 2 Adamax hyper-parameters (``tf.keras.optimizers.legacy.Adamax``).

    ``learning_rate`` is a float or a learning-rate schedule. ``epsilon`` 0 or
    None becomes 1e-7 as in Keras; betas and epsilon have no range check
    (Keras has none). ``clipnorm`` and ``global_clipnorm`` exclude each other.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "Adamax"
    learning_rate: float | LearningRateSchedule = 0.001
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = DEFAULT_EPSILON
    decay: float = 0.0
    clipnorm: float | None = None
    clipvalue: float | None = None
    global_clipnorm: float | None = None

    @field_validator("learning_rate", mode="before")
    @classmethod
    def _schedule_from_dict(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return schedule_from_config(value)
        if isinstance(value, LearningRateSchedule):
            return value
        return _as_float("learning_rate", value)

    @field_validator("beta_1", "beta_2", "epsilon", "decay", mode="before")
    @classmethod
    def _number(cls, value: Any, info: Any) -> float:
        return _as_float(info.field_name, value)

    @classmethod
    def from_keras(
        cls,
        learning_rate: Any = 0.001,
        beta_1: Any = 0.9,
        beta_2: Any = 0.999,
        epsilon: Any = DEFAULT_EPSILON,
        name: Any = "Adamax",
        **kwargs: Any,
    ) -> AdamaxConfig:
        """The config ``Adamax(learning_rate, beta_1, ..., **kwargs)`` would have,
        with Keras's checks and messages (``adamax_ps.common.keras``)."""
        arguments = keras.adamax_arguments(
            learning_rate, beta_1, beta_2, epsilon, name, stacklevel=4, **kwargs
        )
        for key in ("clipnorm", "clipvalue", "global_clipnorm"):
            arguments[key] = _optional_float(arguments[key])
        return cls(**arguments)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AdamaxConfig:
        """Keras ``Adamax.from_config``: ``lr`` renamed, missing keys defaulted."""
        arguments = keras.from_config_arguments(config, stacklevel=5)
        for key in ("clipnorm", "clipvalue", "global_clipnorm"):
            arguments[key] = _optional_float(arguments[key])
        return cls(**arguments)

    def get_config(self, *, hypers_created: bool = False) -> dict[str, Any]:
        """Keras ``get_config()``: keys and order as Keras.

        Once an optimizer has applied gradients, Keras holds learning_rate,
        beta_1 and beta_2 in float32 variables and reports their float32 values
        (``hypers_created=True``); decay and epsilon stay as given.
        """

        def value(x: float) -> float:
            return float(np.float32(x)) if hypers_created else x

        config: dict[str, Any] = {"name": self.name}
        for key in ("clipnorm", "clipvalue", "global_clipnorm"):
            if getattr(self, key) is not None:
                config[key] = getattr(self, key)
        if isinstance(self.learning_rate, LearningRateSchedule):
            config["learning_rate"] = self.learning_rate.serialize()
        else:
            config["learning_rate"] = value(self.learning_rate)
        config["decay"] = self.decay
        config["beta_1"] = value(self.beta_1)
        config["beta_2"] = value(self.beta_2)
        config["epsilon"] = self.epsilon
        return config

    def serialize(self, *, hypers_created: bool = False) -> dict[str, Any]:
        """``tf_keras.optimizers.serialize(optimizer)``."""
        return {
            "module": "keras.optimizers.legacy",
            "class_name": "Adamax",
            "config": self.get_config(hypers_created=hypers_created),
            "registered_name": None,
        }

    def step_scalars(self, iterations: int, dtype: np.dtype | type) -> StepScalars:
        """Scalars of the step taken at ``iterations`` for variables of ``dtype``."""
        return StepScalars.compute(
            learning_rate=self.learning_rate,
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            epsilon=self.epsilon,
            decay=self.decay,
            iterations=iterations,
            dtype=dtype,
        )

    def clip(self, gradients: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Apply this config's clipping to the gradients of one call (Keras order)."""
        return clip_gradients(
            gradients,
            clipvalue=self.clipvalue,
            clipnorm=self.clipnorm,
            global_clipnorm=self.global_clipnorm,
        )

    @property
    def clips(self) -> bool:
        """Whether any clipping is configured."""
        return (
            self.clipvalue is not None
            or self.clipnorm is not None
            or self.global_clipnorm is not None
        )


def _optional_float(value: Any) -> float | None:
    if value is None:
        return None
    result = float(value)
    if math.isnan(result):
        raise ValueError(f"Clipping thresholds must not be NaN. Received: {value}")
    return result
