"""Keras variable initializers, filled block by block and placement-independent.

Random initializers draw each block of ``BLOCK_ROWS`` rows from its own stream
(seeded by the variable's seed and the block number), so any server can fill
any row range of a variable and get the same values as every other placement
of it, without materialising the whole variable. The distributions are
Keras's (``tf.keras.initializers``); the draws are numpy's, not TensorFlow's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from adamax_ps.server.errors import InvalidArgumentError

BLOCK_ROWS = 4096
TRUNCATED_NORMAL_STDDEV = 0.87962566103423978  # stddev of N(0,1) cut at +-2

INITIALIZERS = (
    "zeros",
    "ones",
    "constant",
    "random_normal",
    "random_uniform",
    "truncated_normal",
    "glorot_uniform",
    "glorot_normal",
    "he_normal",
    "he_uniform",
)


def compute_fans(shape: tuple[int, ...]) -> tuple[float, float]:
    """Keras's fan-in and fan-out of a weight shape."""
    if len(shape) == 0:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    receptive = math.prod(shape[:-2])
    return float(shape[-2] * receptive), float(shape[-1] * receptive)


def parse_initializer(spec: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``"glorot_uniform"`` or ``{"class_name": "RandomNormal", "config": {...}}``."""
    if isinstance(spec, str):
        name, config = spec, {}
    elif isinstance(spec, Mapping) and isinstance(spec.get("class_name"), str):
        name, config = spec["class_name"], dict(spec.get("config") or {})
    else:
        raise InvalidArgumentError(
            "An initializer is a name or {'class_name': ..., 'config': {...}}. "
            f"Received: {spec!r}"
        )
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
    if snake not in INITIALIZERS:
        raise InvalidArgumentError(
            f"Unknown initializer {name!r}. Known: {', '.join(INITIALIZERS)}"
        )
    return snake, config


class Initializer:
    """A parsed initializer for one variable shape, able to fill any row range."""

    def __init__(
        self, spec: str | Mapping[str, Any], shape: tuple[int, ...], seed: int
    ) -> None:
        self.name, config = parse_initializer(spec)
        self.shape = shape
        self.seed = seed
        try:
            self._distribution = self._build(config)
        except TypeError as e:
            raise InvalidArgumentError(
                f"Bad config for initializer {self.name!r}: {e}"
            ) from None

    def _build(self, config: dict[str, Any]):
        fan_in, fan_out = compute_fans(self.shape)
        name = self.name
        if name in ("zeros", "ones", "constant"):
            value = {"zeros": 0.0, "ones": 1.0}.get(name)
            if value is None:
                value = _only(config, value=0.0)["value"]
            return ("constant", float(value))
        if name == "random_normal":
            c = _only(config, mean=0.0, stddev=0.05, seed=None)
            return ("normal", c["mean"], c["stddev"])
        if name == "truncated_normal":
            c = _only(config, mean=0.0, stddev=0.05, seed=None)
            return ("truncated", c["mean"], c["stddev"])
        if name == "random_uniform":
            c = _only(config, minval=-0.05, maxval=0.05, seed=None)
            return ("uniform", c["minval"], c["maxval"])
        _only(config, seed=None)
        if name == "glorot_uniform":
            limit = math.sqrt(6.0 / max(1.0, fan_in + fan_out))
            return ("uniform", -limit, limit)
        if name == "he_uniform":
            limit = math.sqrt(6.0 / max(1.0, fan_in))
            return ("uniform", -limit, limit)
        if name == "glorot_normal":
            stddev = math.sqrt(2.0 / max(1.0, fan_in + fan_out))
            return ("truncated", 0.0, stddev / TRUNCATED_NORMAL_STDDEV)
        stddev = math.sqrt(2.0 / max(1.0, fan_in))  # he_normal
        return ("truncated", 0.0, stddev / TRUNCATED_NORMAL_STDDEV)

    def fill(self, out: np.ndarray, lo: int = 0) -> None:
        """Fill ``out`` with rows ``[lo, lo + len(out))`` of the variable."""
        kind = self._distribution[0]
        if kind == "constant":
            out.fill(self._distribution[1])
            return
        if out.ndim == 0:
            out[...] = self._draw(np.random.default_rng([self.seed, 0]), 1)[0]
            return
        rows = out.reshape(out.shape[0], -1)
        width = rows.shape[1]
        hi = lo + rows.shape[0]
        for block in range(
            lo // BLOCK_ROWS, (hi - 1) // BLOCK_ROWS + 1 if hi > lo else 0
        ):
            start = block * BLOCK_ROWS
            stop = min(start + BLOCK_ROWS, self.shape[0])
            values = self._draw(
                np.random.default_rng([self.seed, block]), (stop - start) * width
            ).reshape(stop - start, width)
            a, b = max(lo, start), min(hi, stop)
            rows[a - lo : b - lo] = values[a - start : b - start]

    def _draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        kind, a, b = self._distribution
        if kind == "uniform":
            return rng.uniform(a, b, n)
        if kind == "normal":
            return rng.normal(a, b, n)
        values = rng.standard_normal(n)  # truncated at two standard deviations
        outside = np.abs(values) > 2
        while outside.any():
            values[outside] = rng.standard_normal(int(outside.sum()))
            outside = np.abs(values) > 2
        return a + b * values


def _only(config: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    unknown = set(config) - set(defaults)
    if unknown:
        raise TypeError(f"unknown keys {sorted(unknown)}")
    merged = {**defaults, **config}
    for key, value in merged.items():
        if key != "seed" and not isinstance(value, int | float):
            raise TypeError(f"{key} must be a number, received {value!r}")
    return merged
