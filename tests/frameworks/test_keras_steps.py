"""adamax_ps.keras under model.fit (Keras 3 and tf_keras): a step's push
held back and sent with the next step's lookup (one request a server per
step, its step handed out with the last answer), exactly as a push sent at
once; a model whose dense layer runs first pushes at once."""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers.keras_jobs import run_keras_job
from helpers.servers import start_cluster

from adamax_ps.client import connect
from adamax_ps.keras import Adamax, Embedding

JOB = Path(__file__).with_name("keras_steps_job.py")
sys.path.insert(0, str(JOB.parent))
from keras_steps_job import requests  # noqa: E402

IDS, DIM, VOCABULARY, BATCH = 4, 8, 200, 16


def data(steps: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.integers(0, VOCABULARY, (steps * BATCH, IDS))
    return x, rng.standard_normal((steps * BATCH, 1)).astype(np.float32)


@pytest.fixture
def servers(tmp_path):
    """Two servers: the table and the layer split over both, the step handed
    out by server 0 (one server is the simpler case, tested for PyTorch in
    tests/test_push_reads.py)."""
    started = start_cluster(2, tmp_path, checkpoints=False)
    yield started
    for server in started:
        server.kill()


@pytest.mark.parametrize("keras_kind", ["keras3", "tf_keras"])
def test_a_fit_step_is_one_request_a_server_and_exact(servers, tmp_path, keras_kind):
    """Steps 3 to 12 of model.fit, the table and layer split over the
    servers: one ApplyGradients a server per step, and weights bit-equal to
    the same fit pushing at once; fit's end sent the last push."""
    result = run_keras_job(JOB, servers, tmp_path / "steps.json", keras_kind)
    assert result["keras"] == (2 if keras_kind == "tf_keras" else 3)
    assert result["equal"] and result["iterations"] == 12
    assert result["spent"] == [{"ApplyGradients": 1.0}] * 2


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


def test_prefetch_sends_the_push_in_the_background(tmp_path):
    """prefetch=1: each push goes in the background and every step's rows are
    read beside it (a gather a step, where the exact run has only its first);
    fit's end waits for the last push; the model trains as the exact one
    does, to within a step's staleness."""
    (server,) = start_cluster(1, tmp_path, checkpoints=False)
    try:
        x, y = data(20)
        losses, weights, gathers = {}, {}, {}
        with connect(server.grpc_address) as cluster:
            for name, prefetch in (("exact", 0), ("ahead", 1)):
                keras.utils.set_random_seed(0)
                table = np.random.default_rng(0).uniform(-0.05, 0.05, (VOCABULARY, DIM))
                cluster.variable(f"{name}_emb", initial_value=table.astype(np.float32))
                model = keras.Sequential(
                    [
                        keras.Input(shape=(IDS,), dtype="int64"),
                        Embedding(VOCABULARY, DIM, name=f"{name}_emb", cluster=cluster),
                        keras.layers.GlobalAveragePooling1D(),
                        keras.layers.Dense(1, name=f"{name}_dense"),
                    ]
                )
                optimizer = Adamax(0.05, name=name, cluster=cluster, prefetch=prefetch)
                model.compile(optimizer=optimizer, loss="mse")
                before = requests(server.http_address).get("ReadInline", 0)
                history = model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
                gathers[name] = requests(server.http_address)["ReadInline"] - before
                losses[name] = history.history["loss"][0]
                weights[name] = model.get_weights()
                assert cluster.optimizer(name).iterations == 20
            with pytest.raises(ValueError, match="prefetch is 0"):
                Adamax(cluster=cluster, prefetch=3)
        # The same reads of the dense layer when fit first traces its step;
        # then one gather for the exact run's first step, 20 for prefetch's.
        assert gathers["ahead"] - gathers["exact"] == 19
        assert abs(losses["ahead"] - losses["exact"]) < 0.05 * losses["exact"]
        for ahead, exact in zip(weights["ahead"], weights["exact"], strict=True):
            np.testing.assert_allclose(ahead, exact, atol=0.1)
    finally:
        server.kill()
