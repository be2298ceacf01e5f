"""The model the rescale tests train: a split embedding, a dense kernel and a
hash-keyed table, one deterministic ``apply_gradients`` call per step, and
everything the optimizer holds, read back for a bit-for-bit comparison."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from adamax_ps.client import Adamax, IndexedSlices, connect

SPLIT = 4096  # bytes: the embedding (64 KB) is split by rows over the servers


@dataclass
class Model:
    opt: Adamax
    emb: Any
    kernel: Any
    ids: Any

    @classmethod
    def on(cls, cluster) -> Model:
        emb = cluster.variable("emb", shape=(1000, 16), initializer="glorot_uniform")
        kernel = cluster.variable("kernel", shape=(16, 4), initializer="ones")
        ids = cluster.embedding_table("ids", 8, initializer="uniform")
        return cls(Adamax(learning_rate=0.01, cluster=cluster), emb, kernel, ids)

    def step(self, step: int) -> None:
        """The call of ``step``: the same gradients on any cluster."""
        rng = np.random.default_rng(step)
        rows = rng.integers(0, 1000, 64)
        keys = rng.zipf(1.3, 64).astype(np.int64) * 7919 - 10**9
        emb = IndexedSlices(rng.normal(size=(64, 16)).astype(np.float32), rows)
        kernel = rng.normal(size=(16, 4)).astype(np.float32)
        ids = IndexedSlices(rng.normal(size=(64, 8)).astype(np.float32), keys)
        self.opt.apply_gradients(
            [(emb, self.emb), (kernel, self.kernel), (ids, self.ids)]
        )


def state(address: str, **options: Any) -> dict:
    """Iterations, Keras weights (slots), the variables, and the table's
    keys, rows and slots, as bytes (``options``: of ``connect``)."""
    with connect(address, **options) as cluster:
        opt = Adamax(learning_rate=0.01, cluster=cluster)
        ids = cluster.embedding_table("ids", 8, initializer="uniform")
        keys = np.sort(ids.export().keys)
        found = {
            "iterations": int(opt.iterations),
            "weights": [w.tobytes() for w in opt.get_weights()],
            "keys": keys.tobytes(),
            "ids": ids.gather(keys).tobytes(),
            "ids/m": ids.gather_slot(keys, "Adamax", "m").tobytes(),
            "ids/v": ids.gather_slot(keys, "Adamax", "v").tobytes(),
        }
        for name in ("emb", "kernel"):
            var = cluster.variable(name, shape=(1000, 16) if name == "emb" else (16, 4))
            found[name] = var.numpy().tobytes()
        return found
