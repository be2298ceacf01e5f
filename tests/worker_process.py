"""A worker process for the end-to-end tests: ``worker_process.py K STEPS``
pushes STEPS calls (sparse and dense) to the cluster of ADAMAX_PS_ADDRESS."""

from __future__ import annotations

import sys

import numpy as np

from adamax_ps.client import Adamax, IndexedSlices
from adamax_ps.client.cluster import default_cluster


def main(k: int, steps: int) -> None:
    cluster = default_cluster()
    opt = Adamax()
    emb = cluster.variable("emb", shape=(1000, 8), initializer="glorot_uniform")
    dense = cluster.variable("dense", shape=(16,))
    rng = np.random.default_rng(k)
    for _ in range(steps):
        rows = rng.integers(0, 1000, 32)
        values = rng.normal(size=(32, 8)).astype(np.float32)
        g = rng.normal(size=16).astype(np.float32)
        opt.apply_gradients([(IndexedSlices(values, rows), emb), (g, dense)])
    cluster.close()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
