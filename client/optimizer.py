"""Adamax: the Keras 2 optimizer API, with its state held by the cluster.

``Adamax(...)`` takes Keras's arguments and raises Keras's errors before
anything is sent; its ``apply_gradients`` accepts what Keras's does (dense
gradients as anything ``np.asarray`` takes, sparse ones as ``IndexedSlices``
or any object with ``.values``, ``.indices``, ``.dense_shape``) and applies the
call as one step on every server concerned, exactly once.

Optimizers with the same name on one cluster are one optimizer (shared slots
and iterations); attaching with another config is a ``ValueError``.

The client has no automatic differentiation. ``minimize(loss, var_list)`` and
``get_gradients(loss, params)`` take a ``loss`` callable returning
``(loss_value, gradients)`` (one per variable, ``None`` allowed); see
``adamax_ps.client.autodiff`` for an adapter to PyTorch's autograd.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from adamax_ps.client import errors
from adamax_ps.client.cluster import Cluster, default_cluster
from adamax_ps.client.gradients import checked, compact, keras_pairs
from adamax_ps.client.transport import Gradient, Read
from adamax_ps.client.variables import (
    Iterations,
    RemoteSlot,
    RemoteVariable,
    RemoteWeight,
)
from adamax_ps.common import keras

log = logging.getLogger("adamax_ps.client")
HYPER_PARAMETERS = (
    "learning_rate",
    "beta_1",
    "beta_2",
    "epsilon",
    "decay",
    "clipnorm",
    "clipvalue",
    "global_clipnorm",
)


def keras_config(arguments: dict[str, Any]) -> dict[str, Any]:
    """Constructor fields in Keras's ``get_config()`` order, JSON-ready."""
    config: dict[str, Any] = {"name": arguments["name"]}
    for key in ("clipnorm", "clipvalue", "global_clipnorm"):
        if arguments[key] is not None:
            config[key] = float(arguments[key])
    lr = keras.schedule_config(arguments["learning_rate"])
    config["learning_rate"] = float(lr) if keras.is_number(lr) else lr
    for key in ("decay", "beta_1", "beta_2", "epsilon"):
        value = arguments[key]
        config[key] = float(value) if keras.is_number(value) else value
    return config


class Adamax:
    """``tf.keras.optimizers.legacy.Adamax`` whose state lives on the cluster."""

    def __init__(
        self,
        learning_rate: Any = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        name: str = "Adamax",
        *,
        cluster: Cluster | None = None,
        **kwargs: Any,
    ) -> None:
        arguments = keras.adamax_arguments(
            learning_rate, beta_1, beta_2, epsilon, name, stacklevel=3, **kwargs
        )
        self._config = keras_config(arguments)
        self._cluster = cluster if cluster is not None else default_cluster()
        try:
            info = self._cluster.create_optimizer(self._config)
        except errors.InvalidArgumentError as e:
            raise ValueError(str(e)) from None
        self._name = name
        self._clip = {
            k: self._config.get(k) for k in ("clipvalue", "clipnorm", "global_clipnorm")
        }
        self._known_iterations = info.iterations

    # Config -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def cluster(self) -> Cluster:
        return self._cluster

    def get_config(self) -> dict[str, Any]:
        """Keras ``get_config()`` (float32-rounded hypers once gradients applied)."""
        return self._cluster.optimizer(self._name).config

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> Adamax:
        """Keras ``from_config``: ``lr`` renamed; the cluster of ADAMAX_PS_ADDRESS."""
        del custom_objects  # schedules travel as their Keras config
        arguments = keras.from_config_arguments(config, stacklevel=4)
        return cls(**{k: v for k, v in arguments.items() if v is not None})

    def __getattr__(self, name: str) -> Any:
        if name == "lr":
            name = "learning_rate"
        if name in HYPER_PARAMETERS:
            return self.get_config().get(name)
        raise AttributeError(f"'Adamax' object has no attribute {name!r}")

    # Steps ----------------------------------------------------------------------

    @property
    def iterations(self) -> Iterations:
        return Iterations(self._cluster, self._name)

    def apply_gradients(
        self,
        grads_and_vars: Iterable[tuple[Any, RemoteVariable]],
        name: str | None = None,
        experimental_aggregate_gradients: bool = True,
    ) -> np.int64 | None:
        """Apply one step: every variable with the same ``t``, ``iterations`` + 1.

        In synchronous mode the server sums the replicas' pushes of the step;
        ``experimental_aggregate_gradients=False`` marks a call whose gradients
        the workers already summed (their own all-reduce): it is the step.
        Returns the new iterations (None for an empty call, as Keras).
        """
        del name
        applied = self._apply(grads_and_vars, experimental_aggregate_gradients, ())
        return None if applied is None else applied[0]

    def apply_and_refresh(
        self,
        grads_and_vars: Iterable[tuple[Any, RemoteVariable]],
        refresh: Sequence[RemoteVariable],
    ) -> tuple[np.int64, list[np.ndarray]]:
        """``apply_gradients``, then the values of ``refresh`` as the servers
        hold them once the step is applied: over gRPC, answered with the push
        (a framework layer's dense weights, in the step's round trip)."""
        return self.apply_and_read(grads_and_vars, [Read(v.name) for v in refresh])

    def apply_and_read(
        self,
        grads_and_vars: Iterable[tuple[Any, RemoteVariable]],
        reads: Sequence[Read],
    ) -> tuple[np.int64, list[np.ndarray]]:
        """``apply_gradients``, then ``reads`` (whole variables, or rows of
        them: the next batch's embedding rows) as the servers hold them once
        the step is applied, answered with the push over gRPC."""
        applied = self._apply(grads_and_vars, True, reads)
        if applied is None:
            raise ValueError("No gradients provided for any variable.")
        return applied

    def _apply(
        self,
        grads_and_vars: Iterable[tuple[Any, RemoteVariable]],
        experimental_aggregate_gradients: bool,
        reads: Sequence[Read],
    ) -> tuple[np.int64, list[np.ndarray]] | None:
        pairs = keras_pairs(grads_and_vars)
        if not pairs:
            return None
        gradients = [(g, v) for g, v in pairs if g is not None]
        missing = [v.name for g, v in pairs if g is None]
        if missing:
            log.warning(
                "Gradients do not exist for variables %s when minimizing the loss. "
                "If you're using `model.compile()`, did you forget to provide a "
                "`loss` argument?",
                missing,
            )
        if not gradients:
            raise ValueError(
                f"No gradients provided for any variable: "
                f"({[v.name for _, v in pairs]},). Provided `grads_and_vars` is "
                f"({tuple(pairs)},)."
            )
        wire = [checked(g, v) for g, v in gradients]
        sync = self._cluster.synchronous
        clipped = False
        if any(value is not None for value in self._clip.values()):
            if sync:
                self._check_sync_clipping(wire)
            else:
                raw = keras.clip_gradients([w.values for w in wire], **self._clip)
                wire = [
                    Gradient(w.variable, g, w.indices)
                    for w, g in zip(wire, raw, strict=True)
                ]
                clipped = True
        if not sync:
            # After clipping, Keras sums duplicate rows: do it here, exactly as
            # the server would, and send each row once. (In synchronous mode the
            # server sums the replicas' raw rows, so they travel as they are.)
            wire = [compact(w) for w in wire]
        try:
            _, iterations, values = self._cluster.push(
                self._name,
                wire,
                step=self._known_iterations if sync else None,
                aggregated=sync and not experimental_aggregate_gradients,
                clipped=clipped,
                reads=reads,
            )
        except errors.StalePushError:
            self._known_iterations = self._cluster.optimizer(self._name).iterations
            raise
        self._known_iterations = iterations
        return np.int64(iterations), values

    def _check_sync_clipping(self, wire: list[Gradient]) -> None:
        """In synchronous mode each server clips its aggregated share: refuse
        norm clipping that would span servers."""
        cluster = self._cluster
        if cluster.size == 1:
            return
        if self._clip["global_clipnorm"] is not None:
            raise ValueError(
                "global_clipnorm spans servers: in synchronous mode with several "
                "servers it cannot be applied after aggregation"
            )
        if self._clip["clipnorm"] is not None:
            split = [w.variable for w in wire if cluster.placement(w.variable).split]
            if split:
                raise ValueError(
                    f"clipnorm of {split} spans servers (they are split by rows): in "
                    "synchronous mode it cannot be applied after aggregation"
                )

    def minimize(
        self,
        loss: Any,
        var_list: Sequence[RemoteVariable] | Callable[[], Sequence[RemoteVariable]],
        grad_loss: Any = None,
        name: str | None = None,
        tape: Any = None,
    ) -> np.int64 | None:
        """Keras ``minimize``: gradients from ``loss`` (see the module docstring),
        then ``apply_gradients``."""
        if callable(var_list):
            var_list = var_list()
        gradients = self._gradients(loss, list(var_list), tape)
        return self.apply_gradients(zip(gradients, var_list, strict=True), name=name)

    def get_gradients(self, loss: Any, params: Sequence[RemoteVariable]) -> list:
        """Keras ``get_gradients``: the gradients ``loss`` returns for ``params``."""
        gradients = self._gradients(loss, list(params), None)
        missing = [p.name for p, g in zip(params, gradients, strict=True) if g is None]
        if missing:
            raise ValueError(f"Variable(s) with no gradient: {missing}")
        return gradients

    @staticmethod
    def _gradients(loss: Any, var_list: list[RemoteVariable], tape: Any) -> list:
        if not callable(loss):
            raise ValueError(
                "`tape` is required when a `Tensor` loss is passed. "
                f"Received: loss={loss}, tape={tape}."
                if tape is None
                else "adamax-ps has no automatic differentiation of remote variables: "
                "pass a loss callable returning (loss_value, gradients)"
            )
        result = loss()
        if not (isinstance(result, tuple) and len(result) == 2):
            raise ValueError(
                "adamax-ps has no automatic differentiation: the loss callable must "
                "return (loss_value, gradients), one gradient per variable (see "
                "adamax_ps.client.autodiff)"
            )
        _, gradients = result
        if isinstance(gradients, dict):
            gradients = [gradients.get(v.name, gradients.get(v)) for v in var_list]
        gradients = list(gradients)
        if len(gradients) != len(var_list):
            raise ValueError(
                f"the loss callable returned {len(gradients)} gradients for "
                f"{len(var_list)} variables"
            )
        return gradients

    # Weights and slots --------------------------------------------------------------

    def _refs(self) -> list[tuple[str, str, str]]:
        return self._cluster.optimizer(self._name).weights

    @property
    def weights(self) -> list:
        """Keras ``weights``: iterations, then the slots in creation order."""
        result: list = []
        for kind, variable, name in self._refs():
            if kind == "iterations":
                result.append(self.iterations)
            elif kind == "slot":
                result.append(
                    RemoteSlot(
                        self._cluster, self._name, self._variable(variable), name
                    )
                )
            else:
                value = self._cluster.read_weight(self._name, name)
                result.append(
                    RemoteWeight(
                        self._cluster, self._name, name, value.shape, value.dtype
                    )
                )
        return result

    def variables(self) -> list:
        return self.weights

    def get_weights(self) -> list[np.ndarray]:
        """Keras ``get_weights()``: the values of ``weights``, fetched in parallel."""
        return self._cluster.map(lambda w: np.asarray(w.numpy()), self.weights)

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Keras ``set_weights()``: length then shapes checked, then assigned."""
        params = self.weights
        shapes = [tuple(param.shape) for param in params]
        arrays = keras.set_weights_arrays(self._name, shapes, weights)
        self._cluster.map(
            lambda pair: pair[0].assign(pair[1]), list(zip(params, arrays, strict=True))
        )

    def get_slot_names(self) -> list[str]:
        return self._cluster.optimizer(self._name).slot_names

    def get_slot(self, var: RemoteVariable, slot_name: str) -> RemoteSlot:
        """Keras ``get_slot``: ``KeyError`` for a variable without slots or an
        unknown slot name."""
        slots = {(v, n) for kind, v, n in self._refs() if kind == "slot"}
        if not any(v == var.name for v, _ in slots):
            raise KeyError(var.name)
        if (var.name, slot_name) not in slots:
            raise KeyError(slot_name)
        return RemoteSlot(self._cluster, self._name, var, slot_name)

    def add_slot(
        self,
        var: RemoteVariable,
        slot_name: str,
        initializer: str = "zeros",
        shape: Any = None,
    ) -> RemoteSlot:
        """Keras ``add_slot``: a slot shaped like the variable (once)."""
        if shape is not None and tuple(shape) != var.shape:
            raise ValueError("slots have the variable's shape here")
        if not isinstance(initializer, str):
            raise TypeError("add_slot takes an initializer name, such as 'zeros'")
        self._cluster.add_slot(self._name, var.name, slot_name, initializer)
        return RemoteSlot(self._cluster, self._name, var, slot_name)

    def add_weight(
        self,
        name: str,
        shape: Any,
        dtype: Any = None,
        initializer: str = "zeros",
        trainable: Any = None,
        **kwargs: Any,
    ) -> RemoteWeight:
        """Keras ``add_weight``: an extra weight of the optimizer (in ``weights``)."""
        del trainable, kwargs
        dtype = np.dtype(dtype or "float32")
        shape = tuple(int(d) for d in (shape or ()))
        value = self._cluster.add_weight(self._name, name, shape, dtype, initializer)
        return RemoteWeight(self._cluster, self._name, name, value.shape, value.dtype)

    def _variable(self, name: str) -> RemoteVariable:
        placement = self._cluster.placement(name)
        return RemoteVariable(self._cluster, name, placement.shape, placement.dtype)

    def __repr__(self) -> str:
        return f"<adamax_ps.client.Adamax {self._name!r} on {self._cluster!r}>"
