"""Keras learning-rate schedules: their configs, and their values in float32.

Each class is a frozen pydantic model whose fields are the Keras config keys in
Keras's order, so ``get_config()`` and ``serialize()`` give exactly what
``tf_keras`` gives, and ``schedule_from_config`` reads it back. ``__call__``
evaluates the schedule as tf_keras does for Python-float configs: the step is
cast to float32 and every operation runs in float32 (``pow`` is the C
library's ``powf``/``cosf``/``logf``, which TensorFlow's scalar ops match).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    model_validator,
)

from adamax_ps.server.adamax import cosf, logf, powf

Number = StrictInt | StrictFloat
PositiveNumber = Annotated[Number, Field(gt=0)]
f32 = np.float32

SCHEDULES_MODULE = "keras.optimizers.schedules"


class LearningRateSchedule(BaseModel):
    """Base of the six Keras schedules. ``schedule(step)`` returns a float32."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    class_name: ClassVar[str]

    def __call__(self, step: np.floating) -> np.float32:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """The Keras ``get_config()`` dict, keys in Keras's order."""
        return self.model_dump()

    def serialize(self) -> dict[str, Any]:
        """The ``keras.optimizers.schedules.serialize`` form."""
        return {
            "module": SCHEDULES_MODULE,
            "class_name": self.class_name,
            "config": self.get_config(),
            "registered_name": None,
        }


class ExponentialDecay(LearningRateSchedule):
    """``lr0 * decay_rate ** (step / decay_steps)``, floored if staircase."""

    class_name: ClassVar[str] = "ExponentialDecay"
    initial_learning_rate: Number
    decay_steps: PositiveNumber
    decay_rate: Number
    staircase: StrictBool = False
    name: str | None = None

    def __call__(self, step: np.floating) -> np.float32:
        p = f32(step) / f32(self.decay_steps)
        if self.staircase:
            p = np.floor(p)
        return f32(self.initial_learning_rate) * powf(f32(self.decay_rate), p)


class InverseTimeDecay(LearningRateSchedule):
    """``lr0 / (1 + decay_rate * step / decay_steps)``, floored if staircase."""

    class_name: ClassVar[str] = "InverseTimeDecay"
    initial_learning_rate: Number
    decay_steps: PositiveNumber
    decay_rate: Number
    staircase: StrictBool = False
    name: str | None = None

    def __call__(self, step: np.floating) -> np.float32:
        p = f32(step) / f32(self.decay_steps)
        if self.staircase:
            p = np.floor(p)
        return f32(self.initial_learning_rate) / (f32(1) + f32(self.decay_rate) * p)


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[i]`` while ``boundaries[i-1] < step <= boundaries[i]``."""

    class_name: ClassVar[str] = "PiecewiseConstantDecay"
    boundaries: list[Number] = Field(min_length=1)
    values: list[Number]
    name: str | None = None

    @model_validator(mode="after")
    def _one_more_value_than_boundaries(self) -> PiecewiseConstantDecay:
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError(
                "The length of boundaries should be 1 less than the length of "
                f"values. Received: boundaries={self.boundaries} of length "
                f"{len(self.boundaries)}, and values={self.values} of length "
                f"{len(self.values)}."
            )
        return self

    def __call__(self, step: np.floating) -> np.float32:
        # Keras compares in the step's own dtype (boundaries are cast to it).
        cast = np.asarray(step).dtype.type
        for boundary, value in zip(self.boundaries, self.values, strict=False):
            if step <= cast(boundary):
                return f32(value)
        return f32(self.values[-1])


class PolynomialDecay(LearningRateSchedule):
    """``(lr0 - end) * (1 - step / decay_steps) ** power + end``; cycles if asked."""

    class_name: ClassVar[str] = "PolynomialDecay"
    initial_learning_rate: Number
    decay_steps: PositiveNumber
    end_learning_rate: Number = 0.0001
    power: Number = 1.0
    cycle: StrictBool = False
    name: str | None = None

    def __call__(self, step: np.floating) -> np.float32:
        lr0 = f32(self.initial_learning_rate)
        end = f32(self.end_learning_rate)
        x = f32(step)
        steps = f32(self.decay_steps)
        if self.cycle:
            multiplier = f32(1) if x == 0 else np.ceil(x / f32(self.decay_steps))
            steps = steps * multiplier
        else:
            x = np.minimum(x, steps)
        p = x / steps
        return (lr0 - end) * powf(f32(1) - p, f32(self.power)) + end


class CosineDecay(LearningRateSchedule):
    """Cosine decay from lr0 to ``alpha * lr0``, with an optional linear warmup."""

    class_name: ClassVar[str] = "CosineDecay"
    initial_learning_rate: Number
    decay_steps: PositiveNumber
    alpha: Number = 0.0
    name: str | None = None
    warmup_target: Number | None = None
    warmup_steps: Annotated[Number, Field(ge=0)] = 0

    def __call__(self, step: np.floating) -> np.float32:
        lr0 = f32(self.initial_learning_rate)
        steps = f32(self.decay_steps)
        x = f32(step)
        if self.warmup_target is None:
            return self._decay(np.minimum(x, steps), steps, lr0)
        target = f32(self.warmup_target)
        warmup = f32(self.warmup_steps)
        x = np.minimum(x, steps + warmup)
        if x < warmup:
            return (target - lr0) * (x / warmup) + lr0
        return self._decay(x - warmup, steps, target)

    def _decay(self, x: np.float32, steps: np.float32, start: np.float32) -> np.float32:
        cosine = f32(0.5) * (f32(1) + cosf(f32(math.pi) * (x / steps)))
        decayed = f32(1 - self.alpha) * cosine + f32(self.alpha)
        return start * decayed


class CosineDecayRestarts(LearningRateSchedule):
    """Cosine decay with warm restarts (SGDR): periods grow by t_mul, peaks by m_mul."""

    class_name: ClassVar[str] = "CosineDecayRestarts"
    initial_learning_rate: Number
    first_decay_steps: PositiveNumber
    t_mul: Annotated[Number, Field(gt=0)] = 2.0
    m_mul: Number = 1.0
    alpha: Number = 0.0
    name: str | None = None

    def __call__(self, step: np.floating) -> np.float32:
        alpha = f32(self.alpha)
        t_mul = f32(self.t_mul)
        fraction = f32(step) / f32(self.first_decay_steps)
        if t_mul == f32(1):
            restart = np.floor(fraction)
            fraction = fraction - restart
        else:
            restart = np.floor(logf(f32(1) - fraction * (f32(1) - t_mul)) / logf(t_mul))
            done = (f32(1) - powf(t_mul, restart)) / (f32(1) - t_mul)
            fraction = (fraction - done) / powf(t_mul, restart)
        m_factor = powf(f32(self.m_mul), restart)
        cosine = f32(0.5) * m_factor * (f32(1) + cosf(f32(math.pi) * fraction))
        decayed = (f32(1) - alpha) * cosine + alpha
        return f32(self.initial_learning_rate) * decayed


SCHEDULE_CLASSES: dict[str, type[LearningRateSchedule]] = {
    cls.class_name: cls
    for cls in (
        ExponentialDecay,
        PiecewiseConstantDecay,
        PolynomialDecay,
        InverseTimeDecay,
        CosineDecay,
        CosineDecayRestarts,
    )
}


def schedule_from_config(config: Mapping[str, Any]) -> LearningRateSchedule:
    """Build a schedule from its Keras form ``{"class_name": ..., "config": {...}}``.

    ``module`` and ``registered_name`` keys (as ``serialize`` writes them) are
    accepted and ignored. Unknown classes or config keys are a ``ValueError``.
    """
    if not isinstance(config, Mapping) or "class_name" not in config:
        raise ValueError(
            "A learning-rate schedule must be given as "
            '{"class_name": ..., "config": {...}}. Received: ' + repr(config)
        )
    extra = set(config) - {"class_name", "config", "module", "registered_name"}
    if extra:
        raise ValueError(f"Unknown keys in a learning-rate schedule: {sorted(extra)}")
    class_name = config["class_name"]
    cls = SCHEDULE_CLASSES.get(class_name) if isinstance(class_name, str) else None
    if cls is None:
        raise ValueError(
            f"Unknown learning-rate schedule: {class_name!r}. "
            f"Known: {sorted(SCHEDULE_CLASSES)}"
        )
    arguments = config.get("config", {})
    if not isinstance(arguments, Mapping):
        raise ValueError(f"The config of {class_name} must be a mapping.")
    return cls.model_validate(dict(arguments))
