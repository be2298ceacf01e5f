"""``Adamax`` for ``model.compile``: Keras 2's Adamax, applied on the servers.

``model.fit`` hands it ``zip(grads, model.trainable_variables)``, as it hands
any Keras optimizer. It pushes all of a step's gradients in one call of the
client's ``Adamax`` (so every variable uses the same ``t``, and the step is
exactly-once): an ``adamax_ps.keras.Embedding``'s rows to its table, every
other trainable variable to a server variable of the same name. The dense
weights live on the servers so that every worker trains one model: each
worker's copy is replaced by the servers' value when the optimizer first meets
it, and refreshed after every push. (Weights kept apart per worker would be
several models trained on parts of the data.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import tensorflow as tf

from adamax_ps.client.cluster import Cluster, default_cluster
from adamax_ps.client.optimizer import Adamax as RemoteAdamax
from adamax_ps.client.variables import IndexedSlices, RemoteVariable
from adamax_ps.keras.backend import keras_module

keras, KERAS_MAJOR = keras_module()
if KERAS_MAJOR == 2:
    Base = keras.optimizers.legacy.Optimizer
else:
    Base = keras.optimizers.Optimizer


def server_name(variable: Any) -> str:
    """The server variable a Keras variable maps to: its path in Keras 3
    (``sequential/dense/kernel``), its name without ``:0`` in Keras 2."""
    path = getattr(variable, "path", None)
    if isinstance(path, str) and path:
        return path
    return variable.name.split(":")[0]


class Adamax(Base):
    """``tf.keras.optimizers.legacy.Adamax`` for ``model.compile``, with its
    slots and ``iterations`` on the servers (the client's ``Adamax`` named
    ``name``: optimizers of one name share their state across workers).

    Takes Keras's arguments (``learning_rate`` a float or a schedule,
    ``clipnorm``, ``clipvalue``, ``global_clipnorm``, ``decay``); the clipping
    is done once, by the client, over the whole step.
    """

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
        cluster = cluster if cluster is not None else default_cluster()
        remote = RemoteAdamax(
            learning_rate, beta_1, beta_2, epsilon, name, cluster=cluster, **kwargs
        )
        if KERAS_MAJOR == 2:
            super().__init__(name=name)
        else:
            # Keras 3 keeps a learning-rate variable; the servers' schedule is
            # the one that counts, this one only answers optimizer.learning_rate.
            super().__init__(learning_rate=_plain(learning_rate), name=name)
        self._cluster = cluster
        self.remote = remote
        self._remote_variables: dict[int, RemoteVariable] = {}

    # What the servers hold ----------------------------------------------------------

    def _attach(self, variables: list[Any]) -> None:
        """Create (or attach to) the server variable of each dense Keras
        variable, and give the Keras variable the servers' value."""
        for variable in variables:
            if id(variable) in self._remote_variables:
                continue
            remote = self._cluster.variable(
                server_name(variable), initial_value=np.asarray(variable.numpy())
            )
            variable.assign(remote.numpy())
            self._remote_variables[id(variable)] = remote

    def build(self, var_list: Any) -> None:
        dense = [v for v in var_list if _table_of(v) is None]
        self._attach(dense)
        if KERAS_MAJOR == 3:
            super().build(var_list)

    # One step -----------------------------------------------------------------------

    def apply_gradients(
        self, grads_and_vars: Iterable[tuple[Any, Any]], name: Any = None, **kwargs: Any
    ) -> Any:
        del name, kwargs
        pairs = [(g, v) for g, v in grads_and_vars if g is not None]
        if not pairs:
            raise ValueError("No gradients provided for any variable.")
        dense = [v for _, v in pairs if _table_of(v) is None]
        with tf.init_scope():
            self._attach(dense)
        inputs: list[tf.Tensor] = []
        layout: list[tuple[Any, bool]] = []
        for grad, variable in pairs:
            table = _table_of(variable)
            if table is not None:
                inputs += [grad.indices, grad.values]
                layout.append((table, True))
            else:
                if isinstance(grad, tf.IndexedSlices):
                    inputs += [tf.cast(grad.indices, tf.int64), grad.values]
                    layout.append((self._remote_variables[id(variable)], True))
                else:
                    inputs.append(grad)
                    layout.append((self._remote_variables[id(variable)], False))
        outputs = [tf.int64] + [tf.as_dtype(v.dtype) for v in dense]

        def push(*arrays: np.ndarray) -> list[np.ndarray]:
            it = iter(arrays)
            grads_and_remote = []
            for remote, sparse in layout:
                if sparse:
                    ids = next(it)
                    grads_and_remote.append((IndexedSlices(next(it), ids), remote))
                else:
                    grads_and_remote.append((next(it), remote))
            # The dense weights come back with the push (gRPC: one round trip).
            remotes = [self._remote_variables[id(v)] for v in dense]
            iterations, refreshed = self.remote.apply_and_refresh(
                grads_and_remote, remotes
            )
            return [np.int64(iterations), *refreshed]

        results = tf.numpy_function(push, inputs, outputs, stateful=True)
        results[0].set_shape(())
        for variable, result in zip(dense, results[1:], strict=True):
            result.set_shape(variable.shape)
        updates = [v.assign(r) for v, r in zip(dense, results[1:], strict=True)]
        with tf.control_dependencies(updates):
            return self.iterations.assign(results[0])

    # Keras plumbing -----------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        return self.remote.get_config()

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> Adamax:
        del custom_objects
        return cls(**config)


def _table_of(variable: Any) -> RemoteVariable | None:
    return getattr(variable, "_adamax_ps_table", None)


def _plain(learning_rate: Any) -> Any:
    return learning_rate if isinstance(learning_rate, (int, float)) else 0.001
