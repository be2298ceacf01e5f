"""The embedded default run: a small recommendation model trained with Adamax.

Data is generated with a known ground truth (no download): each example is a
user id (a row of an embedding table, looked up with repeats) plus dense
features; the target is linear in both. The model learns the embedding table
with sparse (IndexedSlices) gradients and the dense kernel with dense ones,
and is judged on held-out data against predicting the mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DemoData:
    ids: np.ndarray  # int64 [n]
    features: np.ndarray  # float32 [n, dense_dim]
    targets: np.ndarray  # float32 [n]


@dataclass(frozen=True)
class DemoProblem:
    """Ground truth and generated train/test splits."""

    users: int
    embedding_dim: int
    dense_dim: int
    train: DemoData
    test: DemoData

    @classmethod
    def generate(
        cls,
        *,
        users: int = 2000,
        embedding_dim: int = 8,
        dense_dim: int = 16,
        examples: int = 40_000,
        seed: int = 0,
    ) -> DemoProblem:
        rng = np.random.default_rng(seed)
        true_embedding = rng.normal(0, 0.5, (users, embedding_dim)).astype(np.float32)
        true_kernel = rng.normal(0, 1, (dense_dim,)).astype(np.float32)
        popularity = rng.zipf(1.3, size=examples * 2)
        ids = (popularity[popularity <= users][:examples] - 1).astype(np.int64)
        features = rng.normal(0, 1, (len(ids), dense_dim)).astype(np.float32)
        targets = (
            true_embedding[ids].sum(axis=1)
            + features @ true_kernel
            + rng.normal(0, 0.1, len(ids))
        ).astype(np.float32)
        cut = int(len(ids) * 0.9)
        return cls(
            users=users,
            embedding_dim=embedding_dim,
            dense_dim=dense_dim,
            train=DemoData(ids[:cut], features[:cut], targets[:cut]),
            test=DemoData(ids[cut:], features[cut:], targets[cut:]),
        )


def predict(embedding_rows: np.ndarray, kernel: np.ndarray, features: np.ndarray):
    """The model: sum of the user's embedding plus a linear layer."""
    return embedding_rows.sum(axis=1) + features @ kernel


def gradients(
    embedding_rows: np.ndarray, kernel: np.ndarray, batch: DemoData
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean squared error, the per-example embedding-row gradients and the
    dense kernel gradient of one batch."""
    error = predict(embedding_rows, kernel, batch.features) - batch.targets
    loss = float(np.mean(error**2))
    d_prediction = (2.0 / len(error)) * error
    row_grads = np.repeat(d_prediction[:, None], embedding_rows.shape[1], axis=1)
    kernel_grad = batch.features.T @ d_prediction
    return loss, row_grads.astype(np.float32), kernel_grad.astype(np.float32)


def batches(data: DemoData, batch_size: int, rng: np.random.Generator):
    """Endless shuffled mini-batches."""
    while True:
        order = rng.permutation(len(data.ids))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            pick = order[start : start + batch_size]
            yield DemoData(data.ids[pick], data.features[pick], data.targets[pick])
