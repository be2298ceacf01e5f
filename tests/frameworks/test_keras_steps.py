"""adamax_ps.keras under Keras 3's model.fit: a step's push held back and
sent with the next step's lookup (one request a server per step, its step
handed out with the last answer), exactly as a push sent at once; a model
whose dense layer runs first pushes at once."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from helpers.servers import addresses, start_cluster
from test_push_reads import requests

from adamax_ps.client import connect, placement
from adamax_ps.keras import Adamax, Embedding

IDS, DIM, VOCABULARY, BATCH = 4, 8, 200, 16


def data(steps: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.integers(0, VOCABULARY, (steps * BATCH, IDS))
    return x, rng.standard_normal((steps * BATCH, 1)).astype(np.float32)


def recommender(cluster, name: str) -> keras.Model:
    """The same model and initial values under any name."""
    keras.utils.set_random_seed(0)
    table = np.random.default_rng(0).uniform(-0.05, 0.05, (VOCABULARY, DIM))
    cluster.variable(f"{name}_emb", initial_value=table.astype(np.float32))
    return keras.Sequential(
        [
            keras.Input(shape=(IDS,), dtype="int64"),
            Embedding(VOCABULARY, DIM, name=f"{name}_emb", cluster=cluster),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1, name=f"{name}_dense"),
        ]
    )


class Counter(keras.callbacks.Callback):
    """The servers' request counters after each step."""

    def __init__(self, servers) -> None:
        super().__init__()
        self.servers, self.after = servers, []

    def on_train_batch_end(self, batch, logs=None):
        self.after.append([requests(server) for server in self.servers])


@pytest.fixture(params=[1, 2], ids=["1 server", "2 servers"])
def servers(request, tmp_path, monkeypatch):
    monkeypatch.setattr(placement, "SPLIT_BYTES", 1)  # split over both
    started = start_cluster(request.param, tmp_path, checkpoints=False)
    yield started
    for server in started:
        server.kill()


def test_a_fit_step_is_one_request_a_server_and_exact(servers):
    steps = 12
    x, y = data(steps)
    with connect(addresses(servers)) as cluster:
        held = recommender(cluster, "held")
        optimizer = Adamax(learning_rate=0.01, name="held_opt", cluster=cluster)
        held.compile(optimizer=optimizer, loss="mse")
        counter = Counter(servers)
        held.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[counter])
        # The reference: the same fit with every push sent at once.
        at_once = recommender(cluster, "at_once")
        reference = Adamax(learning_rate=0.01, name="at_once_opt", cluster=cluster)
        reference.holds_pushes = False
        at_once.compile(optimizer=reference, loss="mse")
        at_once.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
        for ours, ref in zip(held.get_weights(), at_once.get_weights(), strict=True):
            np.testing.assert_array_equal(ours, ref)
        assert cluster.optimizer("held_opt").iterations == steps  # fit's end sent it
    first, last = counter.after[1], counter.after[-1]
    for was, now in zip(first, last, strict=True):
        spent = {m: (now[m] - was.get(m, 0)) / (steps - 2) for m in now}
        assert {m: n for m, n in spent.items() if n} == {"ApplyGradients": 1.0}


class DenseFirst(keras.Model):
    """A dense layer on a side input, traced before the embedding's lookup."""

    def __init__(self, cluster, name: str) -> None:
        super().__init__()
        table = np.random.default_rng(0).uniform(-0.05, 0.05, (VOCABULARY, DIM))
        cluster.variable(f"{name}_emb", initial_value=table.astype(np.float32))
        self.side = keras.layers.Dense(1, name=f"{name}_side")
        self.emb = Embedding(VOCABULARY, DIM, name=f"{name}_emb", cluster=cluster)
        self.pool = keras.layers.GlobalAveragePooling1D()

    def call(self, ids):
        side = self.side(keras.ops.ones((keras.ops.shape(ids)[0], 2)))
        return side + keras.ops.sum(self.pool(self.emb(ids)), axis=1, keepdims=True)


def test_a_dense_layer_before_the_lookup_gets_every_push_at_once(tmp_path):
    """The lookup would assign the side layer's weights after that layer
    read them: this step pushes at once, and trains as the reference does."""
    (server,) = start_cluster(1, tmp_path, checkpoints=False)
    try:
        x, y = data(6)
        losses = {}
        with connect(server.grpc_address) as cluster:
            for name, hold in (("first", True), ("first_ref", False)):
                keras.utils.set_random_seed(0)
                model = DenseFirst(cluster, name)
                optimizer = Adamax(learning_rate=0.1, name=name, cluster=cluster)
                optimizer.holds_pushes = hold
                model.compile(optimizer=optimizer, loss="mse")
                history = model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
                losses[name] = history.history["loss"]
                assert cluster.optimizer(name).iterations == 6
        assert losses["first"] == losses["first_ref"]
    finally:
        server.kill()
