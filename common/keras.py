"""Keras's rules for the Adamax constructor and for gradient clipping, shared by
the server and the client.

``adamax_arguments`` takes exactly the arguments of
``tf.keras.optimizers.legacy.Adamax(...)`` and applies Keras's checks with its
exception types and messages (``tests/data/golden/errors.json``), so a worker's
mistake is raised before anything is sent; the server applies the same rules
to every config it receives. The values it returns still need type checks
(the server's ``AdamaxConfig`` does them).

``clip_gradients`` is Keras's clipping, in its order; the server clips a push
it receives whole, a client clips a call whose variables span servers.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_EPSILON = 1e-7
ALLOWED_KWARGS = ("clipnorm", "clipvalue", "decay", "global_clipnorm", "lr")
_ALLOWED_REPR = "{" + ", ".join(repr(k) for k in ALLOWED_KWARGS) + "}"


def is_number(value: Any) -> bool:
    """A real number that is not a bool (numpy scalars included)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def as_float(what: str, value: Any) -> float:
    if not is_number(value):
        raise TypeError(f"{what} must be a number. Received: {value!r}")
    return float(value)


def adamax_arguments(
    learning_rate: Any = 0.001,
    beta_1: Any = 0.9,
    beta_2: Any = 0.999,
    epsilon: Any = DEFAULT_EPSILON,
    name: Any = "Adamax",
    *,
    stacklevel: int = 3,
    **kwargs: Any,
) -> dict[str, Any]:
    """The fields of the config ``Adamax(learning_rate, ..., **kwargs)`` has.

    Keras's rules: kwargs other than clipnorm, clipvalue, decay,
    global_clipnorm and lr are a TypeError; a negative one is a ValueError
    (checked in the order given); ``lr`` is a deprecated alias that wins over
    learning_rate and warns; clipnorm with global_clipnorm is a ValueError;
    epsilon 0 or None becomes 1e-7. The name must be a non-empty string.
    """
    for key, value in kwargs.items():
        if key not in ALLOWED_KWARGS:
            raise TypeError(
                f"Unexpected keyword argument passed to optimizer: {key}. "
                f"Allowed kwargs are {_ALLOWED_REPR}."
            )
        if value is not None and as_float(key, value) < 0:
            raise ValueError(f"Expected {key} >= 0, received: {value}")
        if key == "lr":
            warnings.warn(
                "The `lr` argument is deprecated, use `learning_rate` instead.",
                UserWarning,
                stacklevel=stacklevel,
            )
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string. Received: {name!r}")
    clipnorm = kwargs.get("clipnorm")
    global_clipnorm = kwargs.get("global_clipnorm")
    if clipnorm is not None and global_clipnorm is not None:
        raise ValueError(
            "Cannot accept both `clipnorm` and `global_clipnorm`. Received: "
            f"`clipnorm`={clipnorm}, `global_clipnorm`={global_clipnorm}."
        )
    return {
        "name": name,
        "learning_rate": kwargs.get("lr", learning_rate),
        "beta_1": beta_1,
        "beta_2": beta_2,
        "epsilon": epsilon or DEFAULT_EPSILON,
        "decay": kwargs.get("decay") or 0.0,
        "clipnorm": clipnorm,
        "clipvalue": kwargs.get("clipvalue"),
        "global_clipnorm": global_clipnorm,
    }


def from_config_arguments(config: Mapping[str, Any], stacklevel: int = 4) -> dict:
    """Keras ``Adamax.from_config``: ``lr`` renamed, missing keys defaulted."""
    if not isinstance(config, Mapping):
        raise TypeError(f"An optimizer config must be a dict. Received: {config!r}")
    arguments = dict(config)
    if "lr" in arguments:
        arguments["learning_rate"] = arguments.pop("lr")
    return adamax_arguments(**arguments, stacklevel=stacklevel)


def schedule_config(schedule: Any) -> Any:
    """A learning rate as it travels: a number, or a schedule's Keras config.

    Accepts a config dict ``{"class_name": ..., "config": {...}}`` or any
    object with ``get_config()`` whose class is named after a Keras schedule
    (``tf.keras.optimizers.schedules.ExponentialDecay`` and the like).
    """
    if is_number(schedule) or isinstance(schedule, Mapping):
        return schedule
    if hasattr(schedule, "get_config"):
        return {"class_name": type(schedule).__name__, "config": schedule.get_config()}
    return schedule


def set_weights_arrays(
    optimizer: str, shapes: Sequence[tuple[int, ...]], weights: Sequence[Any]
) -> list[np.ndarray]:
    """Keras ``set_weights()``'s checks: the list's length, then each shape
    against the optimizer's ``weights``; the weights as arrays. ValueError with
    Keras's messages."""
    if len(shapes) != len(weights):
        raise ValueError(
            f"You called `set_weights(weights)` on optimizer {optimizer} with a "
            f" weight list of length {len(weights)}, but the optimizer was "
            f"expecting {len(shapes)} weights. Provided weights: "
            f"{str(list(weights))[:50]}..."
        )
    arrays = [np.asarray(w) for w in weights]
    for shape, array in zip(shapes, arrays, strict=True):
        if tuple(shape) != array.shape:
            raise ValueError(
                f"Optimizer weight shape {tuple(shape)} not compatible with "
                f"provided weight shape {array.shape}."
            )
    return arrays


def clip_gradients(
    gradients: Sequence[np.ndarray],
    *,
    clipvalue: float | None = None,
    clipnorm: float | None = None,
    global_clipnorm: float | None = None,
) -> list[np.ndarray]:
    """Keras's gradient clipping, in its order: clipvalue, then clipnorm or global.

    Each item is a dense gradient or the RAW values of a sparse one (duplicates
    not yet summed), as Keras clips IndexedSlices before the update sums them.
    Returns new arrays only where something is clipped.
    """
    clipped = list(gradients)
    with np.errstate(all="ignore"):  # overflowing norms are TF's result too
        if clipvalue is not None:
            clipped = [_clip_by_value(g, clipvalue) for g in clipped]
        if clipnorm is not None:
            clipped = [_clip_by_norm(g, clipnorm) for g in clipped]
        if global_clipnorm is not None:
            clipped = _clip_by_global_norm(clipped, global_clipnorm)
    return clipped


def _clip_by_value(g: np.ndarray, c: float) -> np.ndarray:
    T = g.dtype.type
    return np.maximum(np.minimum(g, T(c)), T(-c))  # tf.clip_by_value's order


def _clip_by_norm(g: np.ndarray, c: float) -> np.ndarray:
    """``tf.clip_by_norm``: ``g * c / max(||g||, c)``, always (it is not exact)."""
    T = g.dtype.type
    squared = np.sum(g * g, dtype=g.dtype)
    norm = np.sqrt(squared) if squared > 0 else squared
    return (g * T(c)) / np.maximum(norm, T(c))


def _clip_by_global_norm(gradients: list[np.ndarray], c: float) -> list[np.ndarray]:
    """``tf.clip_by_global_norm`` over every gradient of one call (one dtype)."""
    if not gradients:
        return gradients
    dtypes = {g.dtype for g in gradients}
    if len(dtypes) > 1:
        names = sorted(str(d) for d in dtypes)
        raise ValueError(
            f"global_clipnorm needs every gradient in one dtype. Received: {names}"
        )
    T = gradients[0].dtype.type
    half_squares = [np.sum(g * g * T(0.5), dtype=T) for g in gradients]
    norm = np.sqrt(np.sum(np.asarray(half_squares, T), dtype=T) * T(2))
    scale = T(c) * np.minimum(T(1) / norm, T(1) / T(c))
    scale = scale + (norm - norm)  # NaN when the norm is not finite, as in TF
    return [g * scale for g in gradients]
