"""A Keras training script, run as its own process by test_keras.py.

``python keras_job.py ADDRESS NAME OUT.npz [split]`` trains one small recommender
with ``model.fit`` twice on the same data from the same initial values:
locally with tf_keras's legacy Adamax (the reference), and with
``adamax_ps.keras`` (table and dense weights on the servers at ADDRESS, under
names starting with NAME; with ``split``, every variable split by rows over
the servers). The Keras that ``adamax_ps.keras`` uses is the
environment's (``TF_USE_LEGACY_KERAS``). It saves both sides' per-step
losses, weights, slots, iterations, evaluation and predictions to OUT.npz,
then checks ``save_weights``/``load_weights`` bring the server table back.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import tf_keras

from adamax_ps.client import Adamax as ClientAdamax
from adamax_ps.client import connect, placement
from adamax_ps.keras import Adamax, Embedding
from adamax_ps.keras.backend import keras_module

keras, KERAS_MAJOR = keras_module()
VOCABULARY, DIM, IDS, BATCH, STEPS = 1000, 8, 4, 32, 50
LEARNING_RATE = 0.01


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = (rng.zipf(1.3, (BATCH * STEPS, IDS)) % VOCABULARY).astype(np.int64)
    y = rng.standard_normal((BATCH * STEPS, 1)).astype(np.float32)
    return x, y


class StepLosses:
    """The loss Keras reports after each step (its running mean)."""

    def __init__(self, keras_module) -> None:
        losses = self.losses = []

        class Callback(keras_module.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                losses.append(float(logs["loss"]))

        self.callback = Callback()


def reference(x, y):
    tf_keras.utils.set_random_seed(1)
    model = tf_keras.Sequential(
        [
            tf_keras.Input(shape=(IDS,), dtype="int64"),
            tf_keras.layers.Embedding(VOCABULARY, DIM),
            tf_keras.layers.GlobalAveragePooling1D(),
            tf_keras.layers.Dense(1),
        ]
    )
    initial = [w.copy() for w in model.get_weights()]
    optimizer = tf_keras.optimizers.legacy.Adamax(learning_rate=LEARNING_RATE)
    model.compile(optimizer=optimizer, loss="mse")
    steps = StepLosses(tf_keras)
    model.fit(
        x, y, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[steps.callback]
    )
    slots = [
        optimizer.get_slot(v, s).numpy()
        for v in model.trainable_variables
        for s in ("m", "v")
    ]
    return model, initial, steps.losses, slots, int(optimizer.iterations.numpy())


def on_servers(address, name, x, y, initial):
    cluster = connect(address)
    # The table exists already (pretrained values): the layer attaches to it.
    cluster.variable(f"{name}_emb", initial_value=initial[0])
    dense = keras.layers.Dense(1, name=f"{name}_dense")
    model = keras.Sequential(
        [
            keras.Input(shape=(IDS,), dtype="int64"),
            Embedding(VOCABULARY, DIM, name=f"{name}_emb", cluster=cluster),
            keras.layers.GlobalAveragePooling1D(),
            dense,
        ]
    )
    dense.set_weights(initial[1:])
    optimizer = Adamax(learning_rate=LEARNING_RATE, name=f"{name}_opt", cluster=cluster)
    model.compile(optimizer=optimizer, loss="mse")
    steps = StepLosses(keras)
    model.fit(
        x, y, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[steps.callback]
    )
    remote = ClientAdamax(
        name=f"{name}_opt", learning_rate=LEARNING_RATE, cluster=cluster
    )
    names = [f"{name}_emb"] + [
        v.path if KERAS_MAJOR == 3 else v.name.split(":")[0] for v in dense.weights
    ]
    variables = [cluster.variable(n, shape=cluster.placement(n).shape) for n in names]
    slots = [remote.get_slot(v, s).numpy() for v in variables for s in ("m", "v")]
    return (
        model,
        steps.losses,
        slots,
        int(optimizer.iterations.numpy()),
        int(remote.iterations.numpy()),
    )


def main() -> None:
    address, name, out = sys.argv[1:4]
    if sys.argv[4:] == ["split"]:
        placement.SPLIT_BYTES = 1
    x, y = data()
    ref, initial, ref_losses, ref_slots, ref_iterations = reference(x, y)
    ours, losses, slots, iterations, server_iterations = on_servers(
        address, name, x, y, initial
    )
    table = ours.layers[0].get_weights()[0]
    results = {
        "keras_major": KERAS_MAJOR,
        "ref_losses": ref_losses,
        "losses": losses,
        "ref_weights": np.array(ref.get_weights(), dtype=object),
        "weights": np.array([table, *ours.layers[-1].get_weights()], dtype=object),
        "ref_slots": np.array(ref_slots, dtype=object),
        "slots": np.array(slots, dtype=object),
        "iterations": [ref_iterations, iterations, server_iterations],
        "ref_evaluate": ref.evaluate(x[:256], y[:256], verbose=0),
        "evaluate": ours.evaluate(x[:256], y[:256], verbose=0),
        "ref_predict": ref.predict(x[:256], verbose=0),
        "predict": ours.predict(x[:256], verbose=0),
    }
    # save_weights / load_weights carry the server table.
    folder = os.path.dirname(out)
    path = os.path.join(folder, "weights.weights.h5" if KERAS_MAJOR == 3 else "ckpt")
    ours.save_weights(path)
    ours.layers[0].set_weights([np.zeros_like(table)])
    results["zeroed"] = ours.layers[0].get_weights()[0]
    ours.load_weights(path)
    results["reloaded"] = ours.layers[0].get_weights()[0]
    np.savez(out, **results, allow_pickle=True)


if __name__ == "__main__":
    main()
