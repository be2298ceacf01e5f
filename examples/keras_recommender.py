"""A Keras recommender trained with model.fit, its embedding on the servers.

An ordinary Keras script (``tf.keras``: Keras 3, or tf_keras with
``TF_USE_LEGACY_KERAS=1``); the line marked ``adamax-ps`` is the change from
training locally, where ``Embedding`` and ``Adamax`` came from Keras. Run it
against a cluster::

    adamax-ps cluster --servers 2 &          # prints ADAMAX_PS_ADDRESS=...
    export ADAMAX_PS_ADDRESS=grpc://127.0.0.1:50051,grpc://127.0.0.1:50052
    python -m adamax_ps.examples.keras_recommender --steps 200

Several copies (``RANK``/``WORLD_SIZE``, or ``TF_CONFIG``'s worker task) each
train on their own shard of the data, asynchronously, one shared model. It
prints the held-out loss before and after, and against predicting zero.
"""

from __future__ import annotations

import numpy as np
from tensorflow import keras

from adamax_ps.client.discovery import worker_rank
from adamax_ps.examples.recsys_data import (
    IDS,
    VOCABULARY,
    make_data,
    shard,
    training_arguments,
)
from adamax_ps.keras import Adamax, Embedding  # adamax-ps


def main(argv: list[str] | None = None) -> float:
    args = training_arguments(__doc__.splitlines()[0]).parse_args(argv)

    me = worker_rank()
    x, y = shard(
        make_data(args.steps * args.batch * me.world_size, seed=1),
        me.rank,
        me.world_size,
    )
    x_test, y_test = make_data(4096, seed=2)
    model = keras.Sequential(
        [
            keras.Input(shape=(IDS,), dtype="int64"),
            Embedding(VOCABULARY, 16, name="items"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1, name="score"),
        ]
    )
    model.compile(optimizer=Adamax(learning_rate=args.learning_rate), loss="mse")
    before = float(model.evaluate(x_test, y_test, verbose=0))
    model.fit(x, y, batch_size=args.batch, epochs=1, shuffle=False, verbose=2)
    after = float(model.evaluate(x_test, y_test, verbose=0))
    zero = float(np.mean(y_test**2))
    print(
        f"worker {me.rank}/{me.world_size}: held-out loss {before:.4f} -> {after:.4f} "
        f"(predicting zero: {zero:.4f}); optimizer iterations "
        f"{int(model.optimizer.iterations.numpy())}",
        flush=True,
    )
    return after


if __name__ == "__main__":
    main()
