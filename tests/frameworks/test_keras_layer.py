"""adamax_ps.keras's layer and optimizer as Keras users meet them (Keras 3,
the Keras ``tf.keras`` is by default): attaching, weights, errors, config."""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers.servers import start_cluster

from adamax_ps.client import connect
from adamax_ps.keras import Adamax, Embedding


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    servers = start_cluster(1, tmp_path_factory.mktemp("layer"), checkpoints=False)
    with connect(servers[0].grpc_address) as connected:
        yield connected
    for server in servers:
        server.kill()


def test_a_layer_named_after_a_pretrained_table_uses_it(cluster):
    pretrained = np.arange(40, dtype=np.float32).reshape(10, 4)
    cluster.variable("pretrained", initial_value=pretrained)
    layer = Embedding(10, 4, name="pretrained", cluster=cluster)
    ids = np.array([[3, 3, 9], [0, 1, 2]])
    np.testing.assert_array_equal(layer(ids).numpy(), pretrained[ids])
    np.testing.assert_array_equal(layer.get_weights()[0], pretrained)
    layer.set_weights([pretrained * 2])
    np.testing.assert_array_equal(cluster.read("pretrained"), pretrained * 2)
    with pytest.raises(ValueError, match=r"weight shape \(10, 4\) is not compatible"):
        layer.set_weights([np.zeros((4, 10), np.float32)])
    with pytest.raises(ValueError, match="expects 1 weight"):
        layer.set_weights([])


def test_a_table_of_another_shape_is_a_clear_error(cluster):
    cluster.variable("other_shape", shape=(10, 4))
    layer = Embedding(10, 8, name="other_shape", cluster=cluster)
    with pytest.raises(ValueError, match=r"other_shape.*exists with shape"):
        layer(np.array([[1]]))


def test_a_new_table_is_created_on_the_servers_with_the_initializer(cluster):
    layer = Embedding(1000, 16, name="fresh", cluster=cluster)
    layer.build()
    table = cluster.read("fresh")
    assert table.shape == (1000, 16)
    assert -0.05 <= table.min() < -0.04 and 0.04 < table.max() <= 0.05  # "uniform"
    ones = Embedding(5, 2, name="ones", cluster=cluster, embeddings_initializer="ones")
    ones.build()
    np.testing.assert_array_equal(cluster.read("ones"), np.ones((5, 2)))
    normal = keras.initializers.RandomNormal(stddev=0.5)
    layer = Embedding(
        500, 8, name="normal", cluster=cluster, embeddings_initializer=normal
    )
    layer.build()
    assert 0.45 < cluster.read("normal").std() < 0.55


def test_ids_outside_the_table_are_an_error_naming_them(cluster):
    layer = Embedding(10, 4, name="small", cluster=cluster)
    with pytest.raises(Exception, match=r"10 is not in \[0, 10\)"):
        layer(np.array([[10]]))


def test_mask_zero_and_output_shape(cluster):
    layer = Embedding(10, 4, name="masked", cluster=cluster, mask_zero=True)
    ids = np.array([[0, 1, 0]])
    np.testing.assert_array_equal(
        layer.compute_mask(ids).numpy(), [[False, True, False]]
    )
    assert layer.compute_output_shape((None, 3)) == (None, 3, 4)


def test_regularizers_and_constraints_of_the_table_are_refused():
    with pytest.raises(ValueError, match="embeddings_regularizer is not supported"):
        Embedding(10, 4, embeddings_regularizer="l2")
    with pytest.raises(ValueError, match="embeddings_constraint is not supported"):
        Embedding(10, 4, embeddings_constraint="non_neg")
    with pytest.raises(ValueError, match="should be positive"):
        Embedding(0, 4)


def test_configs_round_trip(cluster, monkeypatch):
    layer = Embedding(10, 4, name="configured", cluster=cluster, mask_zero=True)
    config = layer.get_config()
    assert config["input_dim"] == 10 and config["output_dim"] == 4
    assert config["embeddings_initializer"] == "uniform" and config["mask_zero"]
    # With no cluster given, layers and optimizers use the environment's.
    monkeypatch.setattr("adamax_ps.client.cluster._default", cluster)
    again = Embedding.from_config(config)
    assert again.get_config() == config
    optimizer = Adamax(learning_rate=0.02, clipnorm=1.0, name="configured_opt")
    assert optimizer.get_config()["clipnorm"] == 1.0
    restored = Adamax.from_config(optimizer.get_config())
    assert restored.get_config() == optimizer.get_config()


def test_optimizer_arguments_are_keras_s(cluster):
    with pytest.raises(TypeError, match="momentum"):
        Adamax(momentum=0.9, cluster=cluster)
    with pytest.raises(ValueError):
        Adamax(name="", cluster=cluster)


def test_keras3_on_another_backend_is_a_clear_error():
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    env.pop("TF_USE_LEGACY_KERAS", None)
    done = subprocess.run(
        [sys.executable, "-c", "import adamax_ps.keras"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "runs on Keras's TensorFlow backend; KERAS_BACKEND is 'torch'" in done.stderr
