"""The Adamax updates bench/peers.py compares, behind one small interface.

Each dense implementation takes the start weights and its gradients (cycled)
and offers ``step(k)`` (apply gradient k) and ``weights()``; the sparse ones
take a table, index batches and row values. The peers get Keras's
hyper-parameters (torch's own defaults differ) and gradients already in their
own tensor type, so conversion is never timed. Compiled peers are run as their
users run them: a ``tf.function`` with a fixed input signature (traced once;
``traces()`` tells whether it ever traced again), XLA through
``jit_compile=True``, ``torch.compile`` of the optimizer's step.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import cache
from itertools import pairwise

import numpy as np
from measure import quiet_tensorflow
from probe import stream_4r3w

from adamax_ps.server import adamax, kernels
from adamax_ps.server.hyperparams import AdamaxConfig

CONFIG = AdamaxConfig.from_keras()


class Libraries:
    """TensorFlow, tf_keras, Keras 3 and torch, imported with thread limits."""

    def __init__(self, threads: int) -> None:
        quiet_tensorflow()
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        tf.get_logger().setLevel("ERROR")  # one tf.function per case: by design
        import keras
        import tf_keras
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        self.tf, self.tf_keras, self.keras, self.torch = tf, tf_keras, keras, torch
        self.threads = threads


def compiled_apply(tf, optimizer, var, spec=None, jit_compile: bool = False):
    """``optimizer.apply_gradients([(g, var)])`` as one ``tf.function``; with
    ``spec`` (a ``tf.TensorSpec`` or ``tf.IndexedSlicesSpec``) as its fixed
    input signature, so a new batch can never make it trace again."""

    def apply(gradient) -> None:
        optimizer.apply_gradients([(gradient, var)])

    signature = None if spec is None else [spec]
    return tf.function(apply, input_signature=signature, jit_compile=jit_compile)


def dense_spec(tf, w0):
    return tf.TensorSpec(w0.shape, tf.float32)


def sparse_spec(tf, table, batch: int):
    return tf.IndexedSlicesSpec(
        shape=table.shape,
        dtype=tf.float32,
        indices_dtype=tf.int64,
        dense_shape_dtype=tf.int64,
        indices_shape=[batch],
    )


@cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads)


def run_split(kernel, threads: int, *arrays: np.ndarray) -> None:
    """``kernel`` on ``threads`` row blocks of the arrays at once (the kernels
    release the GIL), as the store updates a split variable's shards."""
    bounds = np.linspace(0, len(arrays[0]), threads + 1).astype(int)
    futures = [
        _pool(threads).submit(kernel, *(a[lo:hi] for a in arrays))
        for lo, hi in pairwise(bounds)
    ]
    for future in futures:
        future.result()


# Dense implementations: ``step(k)`` applies gradient k (cycled), ``weights()``. ---


class Ours:
    def __init__(self, w0, gradients, threads: int = 1) -> None:
        self.w, self.m, self.v = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
        self.gradients = gradients
        self.t = 0
        self.threads = threads

    def step(self, k: int) -> None:
        g = self.gradients[k % len(self.gradients)]
        scalars = CONFIG.step_scalars(self.t, np.float32)
        self.t += 1
        if self.threads == 1:
            adamax.dense_update(self.w, self.m, self.v, g, scalars)
            return
        run_split(
            lambda w, m, v, g_: kernels.dense_adamax(
                w,
                m,
                v,
                g_,
                scalars.one_minus_beta_1,
                scalars.beta_2,
                scalars.lr_hat,
                scalars.epsilon,
            ),
            self.threads,
            self.w,
            self.m,
            self.v,
            g,
        )

    def weights(self) -> np.ndarray:
        return self.w


class TfKerasLegacy:
    def __init__(self, lib: Libraries, w0, gradients) -> None:
        tf = lib.tf
        self.var = tf.Variable(w0)
        self.gradients = [tf.constant(g) for g in gradients]
        optimizer = lib.tf_keras.optimizers.legacy.Adamax()
        self.apply = compiled_apply(tf, optimizer, self.var, dense_spec(tf, w0))

    def step(self, k: int) -> None:
        self.apply(self.gradients[k % len(self.gradients)])

    def weights(self) -> np.ndarray:
        return self.var.numpy()

    def traces(self) -> int:
        return self.apply.experimental_get_tracing_count()


class RawAdaMax:
    """``ResourceApplyAdaMax`` called eagerly with the Keras 2 scalars."""

    def __init__(self, lib: Libraries, w0, gradients) -> None:
        tf = lib.tf
        self.tf = tf
        self.var = tf.Variable(w0)
        self.m = tf.Variable(np.zeros_like(w0))
        self.v = tf.Variable(np.zeros_like(w0))
        self.gradients = [tf.constant(g) for g in gradients]
        self.t = 0

    def step(self, k: int) -> None:
        scalars = CONFIG.step_scalars(self.t, np.float32)
        self.t += 1
        self.tf.raw_ops.ResourceApplyAdaMax(
            var=self.var.handle,
            m=self.m.handle,
            v=self.v.handle,
            beta1_power=adamax.c_pow(scalars.beta_1, np.float32(scalars.t)),
            lr=scalars.lr_t,
            beta1=scalars.beta_1,
            beta2=scalars.beta_2,
            epsilon=scalars.epsilon,
            grad=self.gradients[k % len(self.gradients)],
        )

    def weights(self) -> np.ndarray:
        return self.var.numpy()


class Keras3:
    """Keras 3 Adamax in a ``tf.function``; ``jit_compile=True`` is XLA, as
    ``model.compile(jit_compile=True)`` runs it (Keras's default, "auto",
    leaves XLA off on a machine without an accelerator, like this one)."""

    def __init__(self, lib: Libraries, w0, gradients, jit_compile: bool) -> None:
        tf, keras = lib.tf, lib.keras
        self.var = keras.Variable(w0)
        self.gradients = [tf.constant(g) for g in gradients]
        optimizer = keras.optimizers.Adamax()
        optimizer.build([self.var])
        spec = dense_spec(tf, w0)
        self.apply = compiled_apply(tf, optimizer, self.var, spec, jit_compile)

    def step(self, k: int) -> None:
        self.apply(self.gradients[k % len(self.gradients)])

    def weights(self) -> np.ndarray:
        return np.asarray(self.var.numpy())

    def traces(self) -> int:
        return self.apply.experimental_get_tracing_count()


class Torch:
    """torch.optim.Adamax with Keras's hyper-parameters (torch's own defaults
    differ: lr 0.002, eps 1e-8; and torch adds eps inside the max)."""

    def __init__(
        self, lib: Libraries, w0, gradients, foreach: bool | None, compiled=False
    ) -> None:
        """``compiled``: the step goes through ``torch.compile`` (inductor), as
        PyTorch's recipe for a compiled optimizer does; the first call compiles.
        Dynamo's caches are reset first and inductor's on-disk caches are off,
        so each instance compiles afresh (the first call is a cold compile,
        whatever ran on this machine before) and never falls back to eager by
        running out of recompiles."""
        torch = lib.torch
        self.param = torch.nn.Parameter(torch.from_numpy(w0.copy()))
        self.gradients = [torch.from_numpy(g) for g in gradients]
        self.optimizer = torch.optim.Adamax(
            [self.param], lr=1e-3, betas=(0.9, 0.999), eps=1e-7, foreach=foreach
        )
        self.run = self.optimizer.step
        if compiled:
            from torch._inductor import config as inductor

            inductor.force_disable_caches = True
            torch._dynamo.reset()
            self.run = torch.compile(self.optimizer.step)

    def step(self, k: int) -> None:
        self.param.grad = self.gradients[k % len(self.gradients)]
        self.run()

    def weights(self) -> np.ndarray:
        return self.param.detach().numpy()


class Copy:
    """The machine's copy bandwidth: ``numpy.copyto`` of one array (8 B/param)."""

    def __init__(self, w0) -> None:
        self.source, self.target = w0, np.empty_like(w0)

    def step(self, k: int) -> None:
        np.copyto(self.target, self.source)


class Probe:
    """Read 4 arrays and write 3, no arithmetic, split over ``threads``."""

    def __init__(self, w0, threads: int) -> None:
        self.arrays = [np.ones_like(w0) for _ in range(4)]
        self.threads = threads

    def step(self, k: int) -> None:
        if self.threads == 1:
            stream_4r3w(*self.arrays)
        else:
            run_split(stream_4r3w, self.threads, *self.arrays)


class SparseOurs:
    def __init__(self, table, batches, values) -> None:
        self.w, self.m, self.v = (
            table.copy(),
            np.zeros_like(table),
            np.zeros_like(table),
        )
        self.batches, self.values = batches, values
        self.t = 0

    def step(self, k: int) -> None:
        scalars = CONFIG.step_scalars(self.t, np.float32)
        self.t += 1
        indices = self.batches[k % len(self.batches)]
        adamax.sparse_update(self.w, self.m, self.v, indices, self.values, scalars)

    def weights(self) -> np.ndarray:
        return self.w


class SparseTf:
    """tf_keras legacy or Keras 3 Adamax given ``tf.IndexedSlices``.

    ``how``: ``"signature"`` a ``tf.function`` with a fixed input signature (as
    users run it), ``"plain"`` one without (it could retrace on a new shape;
    with every batch the same size it traces as often), ``"xla"`` the
    signature form with ``jit_compile=True``, ``"no reads"`` the legacy class
    minus its three reads of whole tables (see ``LegacyWithoutReads``)."""

    def __init__(
        self, lib: Libraries, table, batches, values, legacy: bool, how: str
    ) -> None:
        tf = lib.tf
        if legacy:
            self.var = tf.Variable(table)
            legacy_class = lib.tf_keras.optimizers.legacy.Adamax
            if how == "no reads":
                legacy_class = legacy_without_reads(lib)
            optimizer = legacy_class()
        else:
            self.var = lib.keras.Variable(table)
            optimizer = lib.keras.optimizers.Adamax()
            optimizer.build([self.var])
        shape = tf.constant(table.shape, tf.int64)
        self.slices = [
            tf.IndexedSlices(tf.constant(values), tf.constant(b), shape)
            for b in batches
        ]
        spec = None if how == "plain" else sparse_spec(tf, table, len(batches[0]))
        self.apply = compiled_apply(tf, optimizer, self.var, spec, how == "xla")

    def step(self, k: int) -> None:
        self.apply(self.slices[k % len(self.slices)])

    def weights(self) -> np.ndarray:
        return np.asarray(self.var.numpy())

    def traces(self) -> int:
        return self.apply.experimental_get_tracing_count()


def legacy_without_reads(lib: Libraries):
    """tf_keras legacy Adamax whose scatter helpers return the scatter op
    instead of ``x.value()`` (a read of the whole slot or table).

    A diagnostic, not a peer: the three dense reads are what makes the legacy
    class slow in a ``tf.function``. Gather and scatter put a variable in
    TensorFlow's copy-on-read mode, so each read copies the whole variable
    (256 MB here) although only a control dependency uses it. The update is
    the same ops on the same rows, so it stays bit-identical."""
    tf = lib.tf

    class LegacyWithoutReads(lib.tf_keras.optimizers.legacy.Adamax):
        def _resource_scatter_update(self, x, i, v):
            return tf.raw_ops.ResourceScatterUpdate(
                resource=x.handle, indices=i, updates=v
            )

        def _resource_scatter_add(self, x, i, v):
            return tf.raw_ops.ResourceScatterAdd(
                resource=x.handle, indices=i, updates=v
            )

    return LegacyWithoutReads


def torch_sparse_refusal(lib: Libraries) -> dict:
    torch = lib.torch
    param = torch.nn.Parameter(torch.zeros(10, 4))
    param.grad = torch.sparse_coo_tensor(
        torch.tensor([[1, 3]]), torch.ones(2, 4), (10, 4), check_invariants=True
    )
    try:
        torch.optim.Adamax([param]).step()
    except RuntimeError as error:
        return {"supported": False, "error": str(error).splitlines()[0]}
    return {"supported": True}
