"""Synthetic click data for the framework examples: nothing is downloaded.

Each example is ``IDS`` item ids (Zipf-popular items first) and a target:
the mean of the items' hidden scores plus noise, so a model with an
embedding table and a linear layer can learn it, and the held-out loss shows
it did. Every worker draws the same data and trains on its own shard.
"""

from __future__ import annotations

import argparse

import numpy as np

VOCABULARY = 100_000
IDS = 8
NOISE = 0.1


def make_data(examples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int64 [examples, IDS], targets float32 [examples, 1])``."""
    truth = np.random.default_rng(12345).standard_normal(VOCABULARY).astype(np.float32)
    rng = np.random.default_rng(seed)
    ids = (rng.zipf(1.2, (examples, IDS)) - 1) % VOCABULARY
    noise = NOISE * rng.standard_normal(examples)
    targets = truth[ids].mean(axis=1) + noise
    return ids.astype(np.int64), targets.astype(np.float32)[:, None]


def shard(arrays: tuple[np.ndarray, ...], rank: int, world: int) -> tuple:
    """Worker ``rank``'s share: every ``world``-th example from ``rank``."""
    return tuple(a[rank::world] for a in arrays)


def training_arguments(description: str) -> argparse.ArgumentParser:
    """The examples' options: steps per worker, batch size, learning rate."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=200, help="steps per worker")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    return parser
