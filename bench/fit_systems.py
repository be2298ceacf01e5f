"""The systems bench/training_fit.py compares: Keras's model.fit and PyTorch
training loops, as users run them, on TensorFlow's parameter servers and on
adamax-ps.

Children of this script (``--tf-fit FOLDER SERVERS STEPS_PER_EXECUTION``, or
``--worker KIND FOLDER RANK WORLD``) each hold one model:

- TensorFlow: ``tf.distribute.ParameterServerStrategy`` over a local
  in-process cluster (2 workers, 1 or 2 servers, the table split by rows over
  2 servers), a tf_keras model of ``Embedding`` -> ``GlobalAveragePooling1D``
  -> ``Dense(1)`` compiled with the legacy Adamax and ``steps_per_execution``
  as given, trained with ``model.fit`` over a ``DatasetCreator`` (with
  ``steps_per_execution`` above 1, its tf.data pipeline ``tuned`` too);
- adamax-ps: one worker process per rank running the same model with
  ``adamax_ps.keras`` under ``model.fit`` (Keras 3, or tf_keras), or the
  PyTorch module and optimizer of ``adamax_ps.torch`` in a plain loop (exact,
  or with ``prefetch=1``, or with the bfloat16 wire).

All start from bench/training_systems.py's initial values and train on its
batches (a worker of rank r takes every WORLD-th batch from r).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from measure import serve_commands
from training_systems import (
    BATCH,
    DIM,
    IDS,
    LEARNING_RATE,
    ROWS,
    TF_THREADS,
    WORKER_THREADS,
    import_tensorflow,
    in_process_cluster,
    load_batches,
)

TABLE, KERNEL, BIAS = "bench_emb", "bench_dense/kernel", "bench_dense/bias"
TUNED_DATA = "BENCH_TUNED_DATA"  # set for a worker whose tf.data pipeline is tuned
PREFETCH = "BENCH_PREFETCH"  # set for a worker whose optimizer prefetches


def tuned(tf, dataset):
    """A tf.data pipeline tuned for a machine whose cores the workers share
    with the servers: no autotuning, one private thread. (Autotuned prefetch
    cost an adamax-ps Keras worker about 8 ms a step in most rounds here.)"""
    options = tf.data.Options()
    options.autotune.enabled = False
    options.threading.private_threadpool_size = 1
    return dataset.with_options(options)


def keras_model(keras, embedding):
    model = keras.Sequential(
        [
            keras.Input(shape=(IDS,), dtype="int64"),
            embedding,
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1, name="bench_dense"),
        ]
    )
    return model


# TensorFlow: ParameterServerStrategy and model.fit. ------------------------------


def tf_fit_runner(folder: Path, servers: int, steps_per_execution: int) -> None:
    tf = import_tensorflow(TF_THREADS)
    import tf_keras

    strategy = in_process_cluster(tf, servers, workers=2)
    with strategy.scope():
        model = keras_model(tf_keras, tf_keras.layers.Embedding(ROWS, DIM))
        model.compile(
            optimizer=tf_keras.optimizers.legacy.Adamax(learning_rate=LEARNING_RATE),
            loss="mse",
            steps_per_execution=steps_per_execution,
        )
    # With 2 servers the table is split by rows into shards: assign each its rows.
    embeddings = model.layers[0].embeddings
    shards = list(getattr(embeddings, "variables", [embeddings]))
    table, first = np.load(folder / "table.npy"), 0
    for shard in shards:
        shard.assign(table[first : first + shard.shape[0]])
        first += shard.shape[0]
    model.layers[-1].set_weights(
        [np.load(folder / "kernel.npy"), np.load(folder / "bias.npy")]
    )
    ids, targets = load_batches(folder)

    def train(start: int, stop: int) -> dict:
        batch_ids = np.asarray(ids[start:stop])
        batch_targets = np.asarray(targets[start:stop])[..., None]

        def dataset_fn(context):
            data = tf.data.Dataset.from_tensor_slices((batch_ids, batch_targets))
            data = data.shard(context.num_input_pipelines, context.input_pipeline_id)
            data = data.repeat().prefetch(2)
            return tuned(tf, data) if steps_per_execution > 1 else data

        model.fit(
            tf_keras.utils.experimental.DatasetCreator(dataset_fn),
            epochs=1,
            steps_per_epoch=stop - start,
            verbose=0,
        )
        return {"iterations": int(model.optimizer.iterations.numpy())}

    def save(path: str) -> dict:
        table = np.concatenate([shard.numpy() for shard in shards])
        kernel, bias = model.layers[-1].get_weights()
        np.savez(path, table=table, kernel=kernel, bias=bias)
        return {"saved": path}

    serve_commands({"train": train, "save": save})


# adamax-ps workers. ---------------------------------------------------------------


def keras_worker(folder: Path, rank: int, world: int) -> None:
    tf = import_tensorflow(WORKER_THREADS)  # thread limits before Keras loads
    from adamax_ps.client import connect
    from adamax_ps.keras import Adamax, Embedding
    from adamax_ps.keras.backend import keras_module

    keras, _ = keras_module()
    ids, targets = load_batches(folder)
    state: dict = {}

    def attach(addresses: str) -> dict:
        cluster = connect(addresses)
        model = keras_model(keras, Embedding(ROWS, DIM, name=TABLE, cluster=cluster))
        model.layers[-1].set_weights(
            [np.load(folder / "kernel.npy"), np.load(folder / "bias.npy")]
        )
        prefetch = 1 if os.environ.get(PREFETCH) else 0
        optimizer = Adamax(
            learning_rate=LEARNING_RATE, cluster=cluster, prefetch=prefetch
        )
        model.compile(optimizer=optimizer, loss="mse")
        state["model"] = model
        dense = model.layers[-1].weights
        names = [v.path if hasattr(v, "path") else v.name.split(":")[0] for v in dense]
        return {"kernel": names[0], "bias": names[1]}

    def train(start: int, stop: int) -> dict:
        mine = list(range(start + rank, stop, world))
        x = np.asarray(ids[mine]).reshape(-1, IDS)
        y = np.asarray(targets[mine]).reshape(-1, 1)
        if os.environ.get(TUNED_DATA):
            data = tuned(tf, tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH))
            state["model"].fit(data, verbose=0)
        else:
            state["model"].fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
        return {"steps": len(mine)}

    serve_commands({"attach": attach, "train": train})


def torch_worker(folder: Path, rank: int, world: int) -> None:
    import torch

    torch.set_num_threads(WORKER_THREADS["intra_op"])
    from adamax_ps.client import connect
    from adamax_ps.torch import Adamax, Embedding

    ids, targets = load_batches(folder)
    state: dict = {}

    class Model(torch.nn.Module):
        def __init__(self, embedding):
            super().__init__()
            self.emb = embedding
            self.dense = torch.nn.Linear(DIM, 1)

        def forward(self, batch_ids):
            return self.dense(self.emb(batch_ids).mean(dim=1)).squeeze(1)

    def attach(addresses: str) -> dict:
        cluster = connect(addresses)
        model = Model(Embedding(ROWS, DIM, name=TABLE, cluster=cluster))
        with torch.no_grad():
            model.dense.weight.copy_(torch.from_numpy(np.load(folder / "kernel.npy").T))
            model.dense.bias.copy_(torch.from_numpy(np.load(folder / "bias.npy")))
        named = [("bench_dense/kernel_t", model.dense.weight), (BIAS, model.dense.bias)]
        named.append((TABLE + "/handle", model.emb.handle))
        state["model"] = model
        prefetch = 1 if os.environ.get(PREFETCH) else 0
        state["optimizer"] = Adamax(
            named, lr=LEARNING_RATE, cluster=cluster, prefetch=prefetch
        )
        return {"kernel": "bench_dense/kernel_t", "bias": BIAS}

    def train(start: int, stop: int) -> dict:
        model, optimizer = state["model"], state["optimizer"]
        mine = list(range(start + rank, stop, world))
        for i in mine:
            optimizer.zero_grad()
            prediction = model(torch.from_numpy(np.asarray(ids[i])))
            loss = torch.nn.functional.mse_loss(
                prediction, torch.from_numpy(np.asarray(targets[i]))
            )
            loss.backward()
            optimizer.step()
        optimizer.flush()  # the round's last push applied, inside its time
        return {"steps": len(mine)}

    serve_commands({"attach": attach, "train": train})


def main() -> None:
    role = sys.argv[1]
    if role == "--tf-fit":
        tf_fit_runner(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    elif role == "--worker":
        kind, folder, rank, world = sys.argv[2], Path(sys.argv[3]), *sys.argv[4:6]
        worker = {"keras": keras_worker, "torch": torch_worker}[kind]
        worker(folder, int(rank), int(world))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
