"""A deterministic push workload, shared by the WAL tests and their child process."""

from __future__ import annotations

import numpy as np

from adamax_ps.server.ledger import PushId
from adamax_ps.server.service import Gradient, ParameterService


def setup(service: ParameterService) -> None:
    service.create_optimizer({"learning_rate": 0.01})
    service.create_variable("emb", shape=(500, 8), initializer="glorot_uniform", seed=1)
    service.create_variable("dense", shape=(64,), initializer="ones")


def push(service: ParameterService, sequence: int) -> None:
    rng = np.random.default_rng(sequence)
    service.apply(
        "Adamax",
        [
            Gradient.sparse(
                "emb",
                rng.integers(0, 500, 32),
                rng.normal(size=(32, 8)).astype(np.float32),
            ),
            Gradient.dense("dense", rng.normal(size=64).astype(np.float32)),
        ],
        PushId("worker", sequence),
    )
