"""``Adamax`` for ``model.compile``: Keras 2's Adamax, applied on the servers.

``model.fit`` hands it ``zip(grads, model.trainable_variables)``, as it hands
any Keras optimizer. It pushes all of a step's gradients in one call of the
client's ``Adamax`` (so every variable uses the same ``t``, and the step is
exactly-once): an ``adamax_ps.keras.Embedding``'s rows to its table
(``IndexedSlices`` of its keys, for a hash-keyed table), every other trainable
variable to a server variable of the same name. The dense weights live on the
servers so that every worker trains one model: each worker's copy is replaced
by the servers' value when the optimizer first meets it, and refreshed after
every push. (Weights kept apart per worker would be
several models trained on parts of the data.)

``model.fit``'s step holds its push back (``holding``): the next step's
``Embedding`` lookup sends it with the read of the new batch's rows and the
dense weights, one round trip a server per step, with the values a push sent
at once would give. The end of ``fit`` (``finalize_variable_values``, which
Keras 3 and tf_keras call on their non-legacy optimizer bases, this class's
base), reading the table, saving, closing the cluster and the interpreter's
exit send a push still held.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import tensorflow as tf

from adamax_ps.client.cluster import Cluster, default_cluster
from adamax_ps.client.optimizer import Adamax as RemoteAdamax
from adamax_ps.client.tables import RemoteTable
from adamax_ps.client.transport import Read
from adamax_ps.client.variables import IndexedSlices, RemoteVariable
from adamax_ps.keras import holding
from adamax_ps.keras.backend import keras_module

log = logging.getLogger("adamax_ps.keras")

keras, KERAS_MAJOR = keras_module()
# tf_keras's optimizer base, not its legacy one: its model.fit tells only
# this one that training ended (finalize_variable_values), where a held push
# is sent. The arithmetic is the servers' either way.
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
    is done once, by the client, over the whole step. ``prefetch=1`` sends
    each push in the background instead of holding it: the next step's rows
    are read beside it and its dense weights are the last push's (at most one
    step stale); ``prefetch=0``, the default, is exact.
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
        prefetch: int = 0,
        **kwargs: Any,
    ) -> None:
        if prefetch not in (0, 1):
            raise ValueError(
                f"prefetch is 0 (exact) or 1 (rows at most one step stale). "
                f"Received: {prefetch!r}"
            )
        cluster = cluster if cluster is not None else default_cluster()
        remote = RemoteAdamax(
            learning_rate, beta_1, beta_2, epsilon, name, cluster=cluster, **kwargs
        )
        if KERAS_MAJOR == 2:
            super().__init__(name=name, jit_compile=False)
            self._learning_rate = self._build_learning_rate(_plain(learning_rate))
        else:
            # Keras 3 keeps a learning-rate variable; the servers' schedule is
            # the one that counts, this one only answers optimizer.learning_rate.
            super().__init__(learning_rate=_plain(learning_rate), name=name)
        self._cluster = cluster
        self.remote = remote
        self._remote_variables: dict[int, RemoteVariable] = {}
        # Weakly: the model owns them (and a checkpoint tracks them there).
        self._keras_variables: dict[int, weakref.ref] = {}
        # The dense weights' values as this worker last read them.
        self._values: dict[int, np.ndarray] = {}
        # A step's push held back until the next lookup.
        self.holds_pushes = True
        self._held: list[tuple[Any, RemoteVariable]] | None = None
        self._held_lock = threading.Lock()
        self.prefetch = prefetch
        self._in_flight: Future | None = None  # prefetch=1: the last push
        self._background = (
            ThreadPoolExecutor(1, thread_name_prefix="adamax-ps-push")
            if prefetch
            else None
        )
        self._iterations_seen = int(remote.iterations.numpy())
        cluster.before_close(self.flush)
        _every.add(self)

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
            value = remote.numpy()
            variable.assign(value)
            self._remote_variables[id(variable)] = remote
            self._keras_variables[id(variable)] = weakref.ref(variable)
            self._values[id(variable)] = value

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

        def gradients_of(arrays: tuple[np.ndarray, ...], copy: bool) -> list:
            it = iter(np.array(a) if copy else a for a in arrays)
            grads_and_remote = []
            for remote, sparse in layout:
                if sparse:
                    ids = next(it)
                    grads_and_remote.append((IndexedSlices(next(it), ids), remote))
                else:
                    grads_and_remote.append((next(it), remote))
            return grads_and_remote

        assigned = holding.assigned_in(tf.compat.v1.get_default_graph())
        if (
            self.holds_pushes
            and not tf.executing_eagerly()
            and any(_table_of(v) is not None for _, v in pairs)
            and all(id(v) in assigned for v in dense)
        ):
            # The next step's lookup sends it and refreshes the dense weights.
            def hold(*arrays: np.ndarray) -> np.int64:
                # Copies: TensorFlow may reuse the inputs' buffers.
                return np.int64(self._hold(gradients_of(arrays, copy=True)))

            iterations = tf.numpy_function(hold, inputs, tf.int64, stateful=True)
            iterations.set_shape(())
            return self.iterations.assign(iterations)
        outputs = [tf.int64] + [tf.as_dtype(v.dtype) for v in dense]

        def push(*arrays: np.ndarray) -> list[np.ndarray]:
            grads_and_remote = gradients_of(arrays, copy=False)
            self.flush(assign=False)  # a push held back goes first
            # The dense weights come back with the push (gRPC: one round trip).
            remotes = [self._remote_variables[id(v)] for v in dense]
            iterations, refreshed = self.remote.apply_and_refresh(
                grads_and_remote, remotes
            )
            self._iterations_seen = int(iterations)
            for variable, value in zip(dense, refreshed, strict=True):
                self._values[id(variable)] = value
            return [np.int64(iterations), *refreshed]

        results = tf.numpy_function(push, inputs, outputs, stateful=True)
        if not isinstance(results, (list, tuple)):  # eagerly, one output: bare
            results = [results]
        results[0].set_shape(())
        for variable, result in zip(dense, results[1:], strict=True):
            result.set_shape(variable.shape)
        updates = [v.assign(r) for v, r in zip(dense, results[1:], strict=True)]
        with tf.control_dependencies(updates):
            return self.iterations.assign(results[0])

    # Held-back pushes ---------------------------------------------------------------

    def _hold(self, gradients: list) -> int:
        if self._background is not None:  # prefetch=1: at most one in flight
            self._wait_in_flight()
            self._in_flight = self._background.submit(self._send, gradients, [])
            return self._iterations_seen + 1
        with self._held_lock:
            previous, self._held = self._held, None
        if previous is not None:  # no lookup since: it goes first
            self._send(previous, [])
        with self._held_lock:
            self._held = gradients
        return self._iterations_seen + 1

    def _send(self, gradients: list, reads: list[Read]) -> list[np.ndarray]:
        """The push, then ``reads`` and every dense weight after it (their
        values kept for the lookups); the reads' values."""
        keys = list(self._remote_variables)
        dense = [Read(self._remote_variables[k].name) for k in keys]
        iterations, values = self.remote.apply_and_read(gradients, reads + dense)
        self._iterations_seen = int(iterations)
        for key, value in zip(keys, values[len(reads) :], strict=True):
            self._values[key] = value
        return values[: len(reads)]

    def lookup(
        self, table: RemoteVariable | RemoteTable, ids: np.ndarray, dense: list[Any]
    ) -> list[np.ndarray]:
        """Rows (or keys) ``ids`` of ``table`` and the values of ``dense`` (Keras
        variables) after every push of this worker: read with the push held
        back, if any (one round trip a server)."""
        with self._held_lock:
            held, self._held = self._held, None
        if held is None:
            rows = table.gather(ids)
        else:
            (rows,) = self._send(held, [Read(table.name, ids)])
        return [rows, *(self._values[id(v)] for v in dense)]

    def dense_variables(self, variables: list[Any]) -> list[Any]:
        """The dense ones of a model's trainable ``variables``, attached to
        the servers (a lookup assigns them)."""
        dense = [v for v in variables if _table_of(v) is None]
        with tf.init_scope():
            self._attach(dense)
        return dense

    def _wait_in_flight(self) -> bool:
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return False
        in_flight.result()  # its dense values are kept by _send
        return True

    def flush(self, assign: bool = True) -> None:
        """Send the push held back, if any (or wait for the one in flight);
        with ``assign``, give the dense weights the servers' values after it
        (eagerly)."""
        waited = self._wait_in_flight()
        with self._held_lock:
            held, self._held = self._held, None
        if held is None and not waited:
            return
        if held is not None:
            self._send(held, [])
        if assign:
            for key, ref in self._keras_variables.items():
                variable = ref()
                if variable is not None:
                    variable.assign(self._values[key])

    def finalize_variable_values(self, var_list: Any) -> None:
        """The end of ``model.fit`` (Keras 3): the last step's push."""
        self.flush()
        super().finalize_variable_values(var_list)

    # Keras plumbing -----------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        return self.remote.get_config()

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> Adamax:
        del custom_objects
        return cls(**config)


_every: weakref.WeakSet = weakref.WeakSet()


def flush_all(cluster: Cluster) -> None:
    """``flush`` every optimizer of ``cluster`` (eagerly)."""
    for optimizer in list(_every):
        if optimizer.remote.cluster is cluster:
            optimizer.flush()


@atexit.register
def _flush_at_exit() -> None:
    """The last step's push reaches the servers however the script ends."""
    for optimizer in list(_every):
        try:
            optimizer.flush(assign=False)
        except Exception:
            log.exception("the last step's push of %r was not applied", optimizer)


def _table_of(variable: Any) -> RemoteVariable | RemoteTable | None:
    return getattr(variable, "_adamax_ps_table", None)


def _plain(learning_rate: Any) -> Any:
    return learning_rate if isinstance(learning_rate, (int, float)) else 0.001
