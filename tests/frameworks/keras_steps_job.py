"""model.fit's requests per step, run as its own process by test_keras_steps.py
(the Keras that ``adamax_ps.keras`` uses is the environment's).

``python keras_steps_job.py GRPC_ADDRESSES HTTP_ADDRESSES OUT.json`` trains a
small recommender for 12 steps with its pushes held for the next lookup,
counting each server's requests after every step, then the same model from
the same values with every push sent at once; writes both sides' weights'
equality, the requests a server per step in the steady state (steps 3 to
12), and the servers' iterations.
"""

from __future__ import annotations

import json
import re
import sys

import httpx
import numpy as np

from adamax_ps.client import connect, placement
from adamax_ps.keras import Adamax, Embedding
from adamax_ps.keras.backend import keras_module

keras, KERAS_MAJOR = keras_module()
IDS, DIM, VOCABULARY, BATCH, STEPS = 4, 8, 200, 16, 12


def requests(http_address: str) -> dict[str, float]:
    text = httpx.get(http_address + "/metrics").text
    found = re.findall(
        r'adamax_ps_requests_total\{method="(\w+)",transport="grpc"\} (\S+)', text
    )
    return {method: float(count) for method, count in found}


def recommender(cluster, name: str):
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


def main() -> None:
    grpc_addresses, http_addresses, out = sys.argv[1:4]
    placement.SPLIT_BYTES = 1  # every variable split over the servers
    https = http_addresses.split(",")
    rng = np.random.default_rng(3)
    x = rng.integers(0, VOCABULARY, (STEPS * BATCH, IDS))
    y = rng.standard_normal((STEPS * BATCH, 1)).astype(np.float32)
    after: list = []

    class Counter(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            after.append([requests(address) for address in https])

    with connect(grpc_addresses) as cluster:
        held = recommender(cluster, "held")
        held.compile(
            optimizer=Adamax(0.01, name="held_opt", cluster=cluster), loss="mse"
        )
        held.fit(
            x, y, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[Counter()]
        )
        at_once = recommender(cluster, "at_once")
        reference = Adamax(0.01, name="at_once_opt", cluster=cluster)
        reference.holds_pushes = False
        at_once.compile(optimizer=reference, loss="mse")
        at_once.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
        equal = all(
            np.array_equal(a, b)
            for a, b in zip(held.get_weights(), at_once.get_weights(), strict=True)
        )
        iterations = cluster.optimizer("held_opt").iterations
    spent = [
        {
            m: (now[m] - was.get(m, 0)) / (STEPS - 2)
            for m in now
            if now[m] != was.get(m, 0)
        }
        for was, now in zip(after[1], after[-1], strict=True)
    ]
    result = {"keras": KERAS_MAJOR, "equal": equal, "spent": spent}
    result["iterations"] = iterations
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
