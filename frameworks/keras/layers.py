"""``Embedding``: a Keras embedding layer whose table lives on the servers.

The worker never holds the table: a row-indexed server variable
(``input_dim x output_dim``), or a hash-keyed table (``table=``, any int64
key). A step looks up the batch's distinct ids (one gather from the servers
that hold them) and hands back, in the backward pass, their summed gradient
rows as ``IndexedSlices`` keyed by id: the sum TensorFlow's own optimizers
take of an embedding's duplicate rows, so the servers apply exactly the lazy
sparse update a local ``Embedding`` would get.
The layer's one local weight is a scalar ``handle`` that routes that gradient
to ``adamax_ps.keras.Adamax`` through ``model.fit``'s usual
``apply_gradients(zip(grads, model.trainable_variables))``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from adamax_ps.client.cluster import Cluster, default_cluster
from adamax_ps.client.tables import RemoteTable
from adamax_ps.client.variables import RemoteVariable
from adamax_ps.keras import holding
from adamax_ps.keras.backend import keras_module

keras, KERAS_MAJOR = keras_module()

# Keras's short names of its random initializers, as the servers spell them.
ALIASES = {"uniform": "random_uniform", "normal": "random_normal"}


def server_initializer(initializer: Any) -> str | dict:
    """A Keras initializer (a name or an object) as the servers take it."""
    if isinstance(initializer, str):
        return ALIASES.get(initializer, initializer)
    if isinstance(initializer, dict):
        return initializer
    if hasattr(initializer, "get_config"):
        return {
            "class_name": type(initializer).__name__,
            "config": initializer.get_config(),
        }
    raise ValueError(
        "embeddings_initializer is a Keras initializer or its name. "
        f"Received: {initializer!r}"
    )


def attach_table(table: RemoteTable | str, cluster: Cluster | None) -> RemoteTable:
    """A hash-keyed table given as itself or by name (a layer's config names
    it: the table must exist, created by ``cluster.embedding_table``)."""
    if isinstance(table, RemoteTable):
        if cluster is not None and cluster is not table.cluster:
            raise ValueError(
                f"table {table.name!r} belongs to another cluster than cluster="
            )
        return table
    if not isinstance(table, str):
        raise TypeError(
            "table is a RemoteTable (cluster.embedding_table) or its name. "
            f"Received: {table!r}"
        )
    cluster = cluster if cluster is not None else default_cluster()
    placement = cluster.placement(table)
    if not placement.keyed:
        raise ValueError(
            f"{table!r} is a row-indexed server variable, not a hash-keyed table: "
            f"use Embedding(input_dim, output_dim, name={table!r})"
        )
    return RemoteTable(cluster, table, placement.shape[1], placement.dtype)


def flush_held_pushes(cluster: Cluster) -> None:
    """Send the pushes adamax_ps.keras optimizers of ``cluster`` hold back
    (before the table is read or written from outside a step)."""
    from adamax_ps.keras.optimizer import flush_all

    flush_all(cluster)


class TableCheckpoint(tf.__internal__.tracking.Trackable):
    """The server table as a TensorFlow checkpoint value: written by
    ``tf.train.Checkpoint`` (and tf_keras's ``save_weights`` in its default
    format), assigned back to the servers when restored."""

    def __init__(self, layer: Embedding) -> None:
        self._layer = layer

    def _names(self) -> tuple[str, ...]:
        return ("keys", "values") if self._layer.keyed else ("table",)

    def _serialize_to_tensors(self) -> dict[str, tf.Tensor]:
        weights = self._layer.get_weights()
        return {n: tf.constant(w) for n, w in zip(self._names(), weights, strict=True)}

    def _restore_from_tensors(self, restored_tensors: dict[str, tf.Tensor]) -> Any:
        self._layer.set_weights([restored_tensors[n].numpy() for n in self._names()])
        return tf.no_op()


class Embedding(keras.layers.Layer):
    """``keras.layers.Embedding`` with its table on the servers: an
    ``input_dim x output_dim`` server variable named ``name``, or a hash-keyed
    table (``table=``).

    A table of that name that exists (restored, or created from pretrained
    values) is attached to as it is when its shape and dtype match, else a
    ``ValueError``; otherwise the servers create it with
    ``embeddings_initializer`` (drawn by numpy on the servers: the same on
    every worker and run, not the values TensorFlow would draw).
    ``get_weights``/``set_weights`` read and write the server table.
    Regularizers and constraints of the table are refused: there is no local
    table to apply them to.

    ``Embedding(table=t)`` (or ``Embedding.from_table(t)``) looks up ``t``, a
    hash-keyed table (``cluster.embedding_table(name, dim)``, or its name when
    it exists): inputs are int64 keys of any value, negative ones too (no
    ``input_dim``; ``output_dim`` is the table's ``dim``), an unseen key reads
    as its initial row (the table's ``initializer``, not
    ``embeddings_initializer``), and ``adamax_ps.keras.Adamax`` pushes the
    keys' summed gradient rows. Declare the input ``keras.Input(shape,
    dtype="int64")``: Keras converts a model's inputs to its ``Input``'s dtype
    (float32 unless told), which cannot hold every key (a float input is a
    ``TypeError``; an int32 input holds only keys within +-2**31). ``get_weights``
    is ``[keys, rows]``: every row the table holds (``table.export()``);
    ``set_weights([keys, rows])`` sets those rows. The layer's name is
    Keras's own (``embedding``, ...), not the table's: layers may share one.
    """

    def __init__(
        self,
        input_dim: int | None = None,
        output_dim: int | None = None,
        *,
        table: RemoteTable | str | None = None,
        cluster: Cluster | None = None,
        name: str | None = None,
        embeddings_initializer: Any = "uniform",
        embeddings_regularizer: Any = None,
        activity_regularizer: Any = None,
        embeddings_constraint: Any = None,
        mask_zero: bool = False,
        input_length: int | None = None,
        **kwargs: Any,
    ) -> None:
        for argument, value in (
            ("embeddings_regularizer", embeddings_regularizer),
            ("embeddings_constraint", embeddings_constraint),
        ):
            if value is not None:
                raise ValueError(
                    f"{argument} is not supported: the table lives on the servers, "
                    "which apply only the Adamax step to it"
                )
        kwargs.pop("sparse", None)  # the gradient is always sparse
        if table is not None:
            table = attach_table(table, cluster)
            if input_dim is not None:
                raise ValueError(
                    f"table {table.name!r} is hash-keyed: any int64 key is an input, "
                    f"there is no input_dim. Received input_dim = {input_dim}"
                )
            if output_dim is not None and int(output_dim) != table.dim:
                raise ValueError(
                    f"output_dim = {output_dim} is not the dim of table "
                    f"{table.name!r} ({table.dim})"
                )
            input_dim, output_dim = None, table.dim
            cluster = table.cluster
        elif input_dim is None or output_dim is None:
            raise TypeError(
                "Embedding takes input_dim and output_dim (a table of that shape), "
                "or table= (a hash-keyed table: cluster.embedding_table)"
            )
        super().__init__(name=name, activity_regularizer=activity_regularizer, **kwargs)
        if table is None and (int(input_dim) <= 0 or int(output_dim) <= 0):
            raise ValueError(
                "Both `input_dim` and `output_dim` should be positive, "
                f"Received input_dim = {input_dim} and output_dim = {output_dim}"
            )
        self.keyed = table is not None
        self.input_dim = None if input_dim is None else int(input_dim)
        self.output_dim = int(output_dim)
        self.embeddings_initializer = embeddings_initializer
        self.mask_zero = bool(mask_zero)
        self.supports_masking = self.mask_zero
        self.input_length = input_length
        self._cluster = cluster
        self.table: RemoteVariable | RemoteTable | None = table
        self._ready = False

    @classmethod
    def from_table(cls, table: RemoteTable | str, **kwargs: Any) -> Embedding:
        """The layer looking up hash-keyed ``table``: ``Embedding(table=table)``."""
        return cls(table=table, **kwargs)

    # Weights ------------------------------------------------------------------------

    def build(self, input_shape: Any = None) -> None:
        if self._ready:
            return
        if self.table is None:
            cluster = self._cluster if self._cluster is not None else default_cluster()
            self.table = cluster.variable(
                self.name,
                shape=(self.input_dim, self.output_dim),
                dtype=self.dtype,
                initializer=server_initializer(self.embeddings_initializer),
            )
        self.handle = self.add_weight(
            name="handle", shape=(), initializer="zeros", trainable=True
        )
        # What adamax_ps.keras.Adamax pushes the handle's gradient to.
        self.handle._adamax_ps_table = self.table
        # TensorFlow checkpoints (tf_keras's save_weights) save the table too.
        self.table_checkpoint = TableCheckpoint(self)
        self._ready = True
        self.built = True

    @property
    def embeddings(self) -> RemoteVariable | RemoteTable:
        """The server table (``numpy()``, ``gather(rows)``, ``assign(value)``;
        a hash-keyed one: ``gather(keys)``, ``assign(keys, rows)``,
        ``export()``)."""
        if self.table is None:
            raise ValueError(f"layer {self.name!r} is not built yet")
        return self.table

    def get_weights(self) -> list[np.ndarray]:
        flush_held_pushes(self.embeddings.cluster)
        if self.keyed:
            exported = self.embeddings.export()
            return [exported.keys, exported.values]
        return [self.embeddings.numpy()]

    def set_weights(self, weights: list[Any]) -> None:
        expected = 2 if self.keyed else 1
        if len(weights) != expected:
            what = "keys and rows" if self.keyed else "its table"
            raise ValueError(
                f"Layer {self.name!r} expects {expected} weight{'s' * self.keyed} "
                f"({what}), but received {len(weights)}"
            )
        if self.keyed:
            flush_held_pushes(self.embeddings.cluster)
            self.embeddings.assign(np.asarray(weights[0]), np.asarray(weights[1]))
            return
        value = np.asarray(weights[0])
        if value.shape != (self.input_dim, self.output_dim):
            raise ValueError(
                f"Layer {self.name!r} weight shape {(self.input_dim, self.output_dim)} "
                f"is not compatible with provided weight shape {value.shape}"
            )
        flush_held_pushes(self.embeddings.cluster)
        self.embeddings.assign(value)

    # Keras 3's weight files (model.save_weights / load_weights, .keras files).
    def save_own_variables(self, store: Any) -> None:
        for index, weight in enumerate(self.get_weights()):
            store[str(index)] = weight

    def load_own_variables(self, store: Any) -> None:
        self.set_weights([store[str(i)] for i in range(2 if self.keyed else 1)])

    # Forward and backward -----------------------------------------------------------

    def call(self, inputs: Any) -> tf.Tensor:
        ids = tf.convert_to_tensor(inputs)
        if self.keyed and not ids.dtype.is_integer:
            raise TypeError(
                f"layer {self.name!r} looks up hash-keyed table "
                f"{self.embeddings.name!r}: its inputs are int64 keys, not "
                f"{ids.dtype.name} (which cannot hold every key). Declare the "
                'input keras.Input(shape, dtype="int64")'
            )
        if ids.dtype not in (tf.int32, tf.int64):
            ids = tf.cast(ids, tf.int64)
        flat = tf.reshape(tf.cast(ids, tf.int64), [-1])
        rows = self._lookup(flat)
        return tf.reshape(rows, tf.concat([tf.shape(ids), [self.output_dim]], 0))

    def _stepper(self) -> tuple[Any, list[Any]]:
        """The optimizer that may hold a push back for this table, and the
        dense weights this lookup refreshes (``holding``): those of the model
        whose step is being traced, when its optimizer is adamax-ps's."""
        from adamax_ps.keras.optimizer import Adamax

        model = holding.model_in_step(keras.Model)
        optimizer = getattr(model, "optimizer", None)
        if not isinstance(optimizer, Adamax) or optimizer.remote.cluster is not (
            self.embeddings.cluster
        ):
            return None, []
        if not optimizer.holds_pushes:
            return None, []
        if tf.executing_eagerly():
            optimizer.flush()  # assigned before any layer reads them
            return None, []
        graph = tf.compat.v1.get_default_graph()
        if holding.assigned_in(graph):
            return optimizer, []  # an earlier lookup of this step assigns them
        dense = optimizer.dense_variables(list(model.trainable_variables))
        if holding.read_in(graph, dense):
            return None, []  # a layer before this one read them: push at once
        holding.mark_assigned(graph, dense)
        return optimizer, dense

    def _lookup(self, flat: tf.Tensor) -> tf.Tensor:
        table, handle, dim = self.embeddings, self.handle, self.output_dim
        # A hash-keyed table has no number of rows (its gradient's keys say).
        dense_shape = (
            None if self.keyed else tf.constant([self.input_dim, dim], tf.int64)
        )
        dtype = tf.as_dtype(table.dtype)
        unique, positions = tf.unique(flat)
        optimizer, dense = self._stepper()
        if optimizer is None:
            rows = tf.numpy_function(table.gather, [unique], dtype, stateful=True)
        else:
            # The held push goes with this read; the dense weights after it
            # are assigned before the layers after this one read them.
            fetched = tf.numpy_function(
                lambda ids: optimizer.lookup(table, ids, dense),
                [unique],
                [dtype] + [tf.as_dtype(v.dtype) for v in dense],
                stateful=True,
            )
            rows = fetched[0]
            assigns = []
            for variable, value in zip(dense, fetched[1:], strict=True):
                value.set_shape(variable.shape)
                assigns.append(variable.assign(value))
            with tf.control_dependencies(assigns):
                rows = tf.identity(rows)
        rows.set_shape([None, dim])

        @tf.custom_gradient
        def lookup(rows: tf.Tensor) -> Any:
            tf.convert_to_tensor(handle)  # the tape's link to the handle

            def grad(dy: tf.Tensor, variables: Any = None) -> Any:
                # Exactly TensorFlow's summing of an embedding's duplicate rows.
                summed = tf.math.unsorted_segment_sum(
                    dy, positions, tf.shape(unique)[0]
                )
                return None, [tf.IndexedSlices(summed, unique, dense_shape)]

            return tf.gather(rows, positions), grad

        return lookup(rows)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        if not self.mask_zero:
            return None
        return tf.not_equal(inputs, 0)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (*tuple(input_shape), self.output_dim)

    def get_config(self) -> dict[str, Any]:
        initializer = self.embeddings_initializer
        if not isinstance(initializer, (str, dict)):
            initializer = keras.initializers.serialize(initializer)
        config = {
            **super().get_config(),
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "embeddings_initializer": initializer,
            "mask_zero": self.mask_zero,
            "input_length": self.input_length,
        }
        if self.keyed:  # attached to again by name (it must exist by then)
            config["table"] = self.embeddings.name
        return config
