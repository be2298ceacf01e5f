"""model.fit with a hash-keyed table, run as its own process by
test_tables_layers.py (the Keras that ``adamax_ps.keras`` uses is the
environment's: Keras 3, or tf_keras with ``TF_USE_LEGACY_KERAS=1``).

``python tables_keras_job.py GRPC_ADDRESSES HTTP_ADDRESSES OUT.json PREFIX``
(PREFIX starts every server name it makes) trains a
small recommender whose ``Embedding(table=...)`` looks up int64 keys (hashed
ids up to 2**63, negative ones) for 12 steps under ``model.fit``, counting
each server's requests after every step; then does the same 12 steps by hand
with the client (gather the batch's rows, the gradient of the same Keras
layers and loss, ``apply_gradients`` of ``IndexedSlices(rows, keys)``) on a
second table of the same initializer. Writes whether the tables' rows and
slots and the dense weights are bit-equal, the requests a server per step in
the steady state (steps 3 to 12), the keys the table holds, and whether
unseen keys read their initial rows before and after training.
"""

from __future__ import annotations

import json
import re
import sys

import httpx
import numpy as np
import tensorflow as tf

from adamax_ps.client import Adamax as ClientAdamax
from adamax_ps.client import IndexedSlices, connect, placement
from adamax_ps.keras import Adamax, Embedding
from adamax_ps.keras.backend import keras_module

keras, KERAS_MAJOR = keras_module()
IDS, DIM, BATCH, STEPS = 4, 8, 16, 12
LEARNING_RATE = 0.05
INITIALIZER = {
    "class_name": "RandomUniform",
    "config": {"minval": -0.05, "maxval": 0.05, "seed": 11},
}
# Keys a float64 would round (above 2**53), negative ones, the int64 ends.
PREFIX = ""  # set by main: every server name starts with it
EDGES = [2**53 + 1, 2**62 + 12345, 2**63 - 1, -(2**63), -1, -(2**53) - 3, 0]


def requests(http_address: str) -> dict[str, float]:
    text = httpx.get(http_address + "/metrics").text
    found = re.findall(
        r'adamax_ps_requests_total\{method="(\w+)",transport="grpc"\} (\S+)', text
    )
    return {method: float(count) for method, count in found}


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batches of keys drawn (with repeats) from a pool of hashed ids."""
    rng = np.random.default_rng(7)
    hashed = rng.integers(-(2**63), 2**63 - 1, 40, dtype=np.int64, endpoint=True)
    pool = np.concatenate([hashed, np.array(EDGES, np.int64)])
    x = rng.choice(pool, (STEPS * BATCH, IDS))
    y = rng.standard_normal((STEPS * BATCH, 1)).astype(np.float32)
    return pool, x, y


def by_hand(cluster, x, y, initial: list[np.ndarray]) -> tuple:
    """The same steps with the client: the gradient of the same Keras layers
    and loss at the rows the servers hold, pushed as IndexedSlices of keys."""
    table = cluster.embedding_table(f"{PREFIX}ref_items", DIM, initializer=INITIALIZER)
    kernel = cluster.variable(f"{PREFIX}ref_dense/kernel", initial_value=initial[0])
    bias = cluster.variable(f"{PREFIX}ref_dense/bias", initial_value=initial[1])
    optimizer = ClientAdamax(LEARNING_RATE, name=f"{PREFIX}ref_opt", cluster=cluster)
    pool = keras.layers.GlobalAveragePooling1D()
    dense = keras.layers.Dense(1)
    dense.build((None, DIM))
    loss_of = keras.losses.MeanSquaredError()

    @tf.function
    def gradients(rows, ids_y):
        with tf.GradientTape() as tape:
            tape.watch(rows)
            loss = loss_of(ids_y, dense(pool(rows)))
        return tape.gradient(loss, [rows, dense.kernel, dense.bias])

    for start in range(0, len(x), BATCH):
        keys = x[start : start + BATCH].reshape(-1)
        rows = table.gather(keys).reshape(BATCH, IDS, DIM)
        dense.set_weights([kernel.numpy(), bias.numpy()])
        g_rows, g_kernel, g_bias = gradients(
            tf.constant(rows), tf.constant(y[start : start + BATCH])
        )
        optimizer.apply_gradients(
            [
                (IndexedSlices(g_rows.numpy().reshape(-1, DIM), keys), table),
                (g_kernel.numpy(), kernel),
                (g_bias.numpy(), bias),
            ]
        )
    return table, kernel.numpy(), bias.numpy()


def main() -> None:
    global PREFIX
    grpc_addresses, http_addresses, out, PREFIX = sys.argv[1:5]
    placement.SPLIT_BYTES = 1  # the dense layer split over the servers too
    https = http_addresses.split(",")
    pool, x, y = data()
    after: list = []

    class Counter(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            after.append([requests(address) for address in https])

    result: dict = {"keras": KERAS_MAJOR}
    with connect(grpc_addresses) as cluster:
        table = cluster.embedding_table(
            f"{PREFIX}fit_items", DIM, initializer=INITIALIZER
        )
        fresh = cluster.embedding_table(
            f"{PREFIX}fresh_items", DIM, initializer=INITIALIZER
        )
        keras.utils.set_random_seed(0)
        layer = Embedding(table=table, name="items")
        model = keras.Sequential(
            [
                keras.Input(shape=(IDS,), dtype="int64"),
                layer,
                keras.layers.GlobalAveragePooling1D(),
                keras.layers.Dense(1, name=f"{PREFIX}fit_dense"),
            ]
        )
        # (c) keys never pushed read their initial rows (the table's seed).
        looked_up = np.asarray(layer(x[:2]))
        result["unseen_before"] = bool(
            np.array_equal(
                looked_up, fresh.gather(x[:2].reshape(-1)).reshape(2, IDS, DIM)
            )
        )
        initial = [w.copy() for w in model.layers[-1].get_weights()]
        model.compile(
            optimizer=Adamax(LEARNING_RATE, name=f"{PREFIX}fit_opt", cluster=cluster),
            loss="mse",
        )
        model.fit(
            x, y, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[Counter()]
        )
        reference, kernel, bias = by_hand(cluster, x, y, initial)
        equal = {
            "rows": np.array_equal(table.gather(pool), reference.gather(pool)),
            "dense": all(
                np.array_equal(a, b)
                for a, b in zip(
                    model.layers[-1].get_weights(), [kernel, bias], strict=True
                )
            ),
        }
        for slot in ("m", "v"):
            ours = table.gather_slot(pool, f"{PREFIX}fit_opt", slot)
            theirs = reference.gather_slot(pool, f"{PREFIX}ref_opt", slot)
            equal[slot] = np.array_equal(ours, theirs) and bool(ours.any())
        result["equal"] = equal
        result["moved"] = bool(
            (table.gather(pool) != fresh.gather(pool)).any(axis=1).all()
        )
        result["keys"] = sorted(int(k) for k in table.export().keys)
        result["pushed"] = sorted(int(k) for k in np.unique(x))
        unseen = np.array([[5, -5, 2**60 + 3, -(2**61) - 9]], np.int64)
        result["unseen_after"] = bool(
            np.array_equal(np.asarray(layer(unseen))[0], fresh.gather(unseen[0]))
        )
        result["iterations"] = cluster.optimizer(f"{PREFIX}fit_opt").iterations
    result["spent"] = [
        {
            m: (now[m] - was.get(m, 0)) / (STEPS - 2)
            for m in now
            if now[m] != was.get(m, 0)
        }
        for was, now in zip(after[1], after[-1], strict=True)
    ]
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
