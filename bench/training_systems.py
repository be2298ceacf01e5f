"""The two systems bench/training.py compares, and the problem they share.

The data, initial values and held-out loss; the model in TensorFlow; the
TensorFlow ParameterServerStrategy runner (a child process holding an
in-process cluster); the adamax-ps worker (a child process using the client);
and the parent's handles on both. Children are this script, started with
``--tf-runner FOLDER SERVERS`` or ``--worker FOLDER``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from measure import CORES, Child, free_port, quiet_tensorflow, serve_commands

ROWS, DIM, BATCH, IDS = 1_000_000, 64, 1024, 8
LEARNING_RATE = 0.01
EVAL_BATCHES = 8
SPLIT_BYTES = 64 << 20  # adamax-ps splits variables of 64 MB or more by rows
STEP_BYTES = BATCH * IDS * (DIM * 4 + 8) + (DIM + 1) * 4
TF_THREADS = {"intra_op": CORES, "inter_op": CORES + 1}
WORKER_THREADS = {"intra_op": 1, "inter_op": 1}


# The problem: data and initial values, written once, read by every process. ----


def make_problem(folder: Path, steps: int, seed: int = 0) -> None:
    """Zipf-popular ids (popular rows anywhere in the table), targets from a
    hidden score per row, and the initial weights both systems start from."""
    rng = np.random.default_rng(seed)
    count = (steps + EVAL_BATCHES) * BATCH * IDS
    ranks = rng.zipf(1.2, size=count * 3)
    ranks = ranks[ranks <= ROWS][:count] - 1
    ids = rng.permutation(ROWS)[ranks].reshape(-1, BATCH, IDS).astype(np.int64)
    score = rng.normal(0.0, 1.0, ROWS).astype(np.float32)
    noise = rng.normal(0.0, 0.1, ids.shape[:2]).astype(np.float32)
    targets = (score[ids].mean(axis=2) + 0.5 + noise).astype(np.float32)
    np.save(folder / "ids.npy", ids)
    np.save(folder / "targets.npy", targets)
    limit = np.sqrt(6.0 / (DIM + 1))
    np.save(
        folder / "table.npy",
        rng.uniform(-0.05, 0.05, (ROWS, DIM)).astype(np.float32),
    )
    np.save(
        folder / "kernel.npy", rng.uniform(-limit, limit, (DIM, 1)).astype(np.float32)
    )
    np.save(folder / "bias.npy", np.zeros(1, np.float32))


def load_batches(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.load(folder / "ids.npy", mmap_mode="r"),
        np.load(folder / "targets.npy", mmap_mode="r"),
    )


def heldout_loss(folder: Path, table, kernel, bias) -> float:
    """Mean squared error on the last EVAL_BATCHES batches (never trained on),
    computed by the same numpy code for both systems."""
    ids, targets = load_batches(folder)
    ids, targets = ids[-EVAL_BATCHES:], targets[-EVAL_BATCHES:]
    hidden = np.asarray(table)[ids].astype(np.float64).mean(axis=2)
    prediction = hidden @ np.asarray(kernel, np.float64)[:, 0] + float(bias[0])
    return float(np.mean((prediction - targets) ** 2))


def initial_heldout_loss(folder: Path) -> float:
    """The held-out loss of the initial values, before any step."""
    return heldout_loss(
        folder,
        np.load(folder / "table.npy", mmap_mode="r"),
        np.load(folder / "kernel.npy"),
        np.load(folder / "bias.npy"),
    )


# The model, in TensorFlow, shared by both systems. -------------------------------


def model_loss(tf, rows, kernel, bias, targets):
    """rows [batch, ids, dim] -> mean of the ids' rows -> dense layer -> MSE."""
    hidden = tf.reduce_mean(rows, axis=1)
    prediction = tf.squeeze(tf.matmul(hidden, kernel), axis=1) + bias
    return tf.reduce_mean(tf.square(prediction - targets))


def import_tensorflow(threads: dict[str, int]):
    quiet_tensorflow()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads["intra_op"])
    tf.config.threading.set_inter_op_parallelism_threads(threads["inter_op"])
    return tf


# TensorFlow ParameterServerStrategy, in one child process. ------------------------


def tensorflow_runner(folder: Path, servers: int) -> None:
    tf = import_tensorflow(TF_THREADS)
    import tf_keras

    strategy = in_process_cluster(tf, servers, workers=2)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    with strategy.scope():
        table = tf.Variable(np.load(folder / "table.npy"), name="embedding")
        kernel = tf.Variable(np.load(folder / "kernel.npy"), name="dense/kernel")
        bias = tf.Variable(np.load(folder / "bias.npy"), name="dense/bias")
        optimizer = tf_keras.optimizers.legacy.Adamax(learning_rate=LEARNING_RATE)
    shards = list(getattr(table, "variables", [table]))
    trainable = [*shards, kernel, bias]
    ids, targets = load_batches(folder)

    @tf.function
    def train_step(batch_ids, batch_targets):
        def replica(batch_ids, batch_targets):
            with tf.GradientTape() as tape:
                rows = tf.nn.embedding_lookup(table, batch_ids)
                loss = model_loss(tf, rows, kernel, bias, batch_targets)
            gradients = tape.gradient(loss, trainable)
            pairs = [(gradients[k], v) for k, v in enumerate(trainable)]
            optimizer.apply_gradients(pairs)
            return loss

        return strategy.run(replica, args=(batch_ids, batch_targets))

    def schedule(i: int):
        return coordinator.schedule(
            train_step, args=(tf.constant(ids[i]), tf.constant(targets[i]))
        )

    def lockstep(batches: list[int]) -> dict:
        losses = []
        for i in batches:
            result = schedule(i)
            coordinator.join()
            losses.append(float(result.fetch()))
        return {"losses": losses}

    def train(start: int, stop: int) -> dict:
        for i in range(start, stop):
            schedule(i)
        coordinator.join()
        return {"iterations": int(optimizer.iterations.numpy())}

    def save(path: str) -> dict:
        value = np.concatenate([s.numpy() for s in shards])
        np.savez(path, table=value, kernel=kernel.numpy(), bias=bias.numpy())
        return {"saved": path}

    serve_commands({"lockstep": lockstep, "train": train, "save": save})


def in_process_cluster(tf, servers: int, workers: int):
    """TensorFlow's local cluster: in-process servers on free ports, then the
    strategy (large variables split over the parameter servers by rows)."""
    spec = tf.train.ClusterSpec(
        {
            "worker": [f"127.0.0.1:{free_port()}" for _ in range(workers)],
            "ps": [f"127.0.0.1:{free_port()}" for _ in range(servers)],
        }
    )
    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=TF_THREADS["intra_op"],
        inter_op_parallelism_threads=TF_THREADS["inter_op"],
    )
    for job, count in (("worker", workers), ("ps", servers)):
        for index in range(count):
            tf.distribute.Server(
                spec, job_name=job, task_index=index, config=config, protocol="grpc"
            )
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        spec, rpc_layer="grpc"
    )
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=SPLIT_BYTES, max_shards=servers
    )
    return tf.distribute.ParameterServerStrategy(
        resolver, variable_partitioner=partitioner
    )


# adamax-ps: a worker process using the client. --------------------------------


def adamax_ps_worker(folder: Path) -> None:
    tf = import_tensorflow(WORKER_THREADS)
    from adamax_ps.client import Adamax, IndexedSlices, connect

    ids, targets = load_batches(folder)
    models: dict[str, tuple] = {}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, DIM], tf.float32),  # the batch's distinct rows
            tf.TensorSpec([BATCH, IDS], tf.int64),
            tf.TensorSpec([DIM, 1], tf.float32),
            tf.TensorSpec([1], tf.float32),
            tf.TensorSpec([BATCH], tf.float32),
        ]
    )
    def gradients(unique_rows, inverse, kernel, bias, batch_targets):
        with tf.GradientTape() as tape:
            tape.watch([unique_rows, kernel, bias])
            rows = tf.gather(unique_rows, inverse)
            loss = model_loss(tf, rows, kernel, bias, batch_targets)
        row_grads, kernel_grad, bias_grad = tape.gradient(
            loss, [unique_rows, kernel, bias]
        )
        return loss, row_grads.values, kernel_grad, bias_grad

    def attach(addresses: str) -> dict:
        cluster = connect(addresses)
        optimizer = Adamax(learning_rate=LEARNING_RATE, cluster=cluster)
        variables = [
            cluster.variable(name, shape=shape)
            for name, shape in (
                ("embedding", (ROWS, DIM)),
                ("dense/kernel", (DIM, 1)),
                ("dense/bias", (1,)),
            )
        ]
        models[addresses] = (optimizer, *variables)
        return {"attached": addresses}

    def steps(addresses: str, batches: list[int]) -> dict:
        optimizer, table, kernel, bias = models[addresses]
        losses = []
        for i in batches:
            batch_ids = np.asarray(ids[i]).reshape(-1)
            unique, inverse = np.unique(batch_ids, return_inverse=True)
            loss, row_grads, kernel_grad, bias_grad = gradients(
                table.gather(unique),
                inverse.reshape(BATCH, IDS),
                kernel.numpy(),
                bias.numpy(),
                np.asarray(targets[i]),
            )
            optimizer.apply_gradients(
                [
                    (IndexedSlices(row_grads.numpy(), batch_ids, table.shape), table),
                    (kernel_grad.numpy(), kernel),
                    (bias_grad.numpy(), bias),
                ]
            )
            losses.append(float(loss))
        return {"losses": losses}

    serve_commands({"attach": attach, "steps": steps})


class AdamaxPsSystem:
    """``servers`` adamax-ps servers, the model created on them from the
    initial values, driven through the shared worker processes."""

    def __init__(self, folder: Path, servers: int, workers: list[Child]) -> None:
        from adamax_ps.client import connect
        from adamax_ps.server.launcher import addresses, start_cluster

        logs = folder / f"adamax-ps-{servers}"
        logs.mkdir()
        self.servers = start_cluster(servers, logs, checkpoints=False)
        self.addresses = addresses(self.servers)
        self.workers = workers
        try:
            self.cluster = connect(self.addresses)
            self._create(folder)
        except BaseException:
            for server in self.servers:
                server.kill()
            raise

    def _create(self, folder: Path) -> None:
        from adamax_ps.client import Adamax

        for name, file in (
            ("embedding", "table"),
            ("dense/kernel", "kernel"),
            ("dense/bias", "bias"),
        ):
            value = np.load(folder / f"{file}.npy")
            # Created, then assigned: a value over 64 MB does not fit in the
            # create call (assignments stream in 1 MB chunks).
            self.cluster.variable(name, shape=value.shape).assign(value)
        Adamax(learning_rate=LEARNING_RATE, cluster=self.cluster)  # same config

    def attach(self) -> None:
        for worker in self.workers:
            worker.send("attach", addresses=self.addresses)
        for worker in self.workers:
            worker.receive()

    def lockstep(self, batches: list[int]) -> list[float]:
        """One step at a time, the workers taking turns, in batch order."""
        losses = []
        for k, i in enumerate(batches):
            worker = self.workers[k % len(self.workers)]
            losses += worker.call("steps", addresses=self.addresses, batches=[i])[
                "losses"
            ]
        return losses

    def train(self, start: int, stop: int) -> None:
        count = len(self.workers)
        for k, worker in enumerate(self.workers):
            share = list(range(start + k, stop, count))
            worker.send("steps", addresses=self.addresses, batches=share)
        for worker in self.workers:
            worker.receive()

    def weights(self) -> dict[str, np.ndarray]:
        return {
            "table": self.cluster.read("embedding"),
            "kernel": self.cluster.read("dense/kernel"),
            "bias": self.cluster.read("dense/bias"),
        }

    def close(self) -> None:
        self.cluster.close()
        for server in self.servers:
            server.stop()


class TensorFlowSystem:
    def __init__(self, folder: Path, servers: int) -> None:
        self.folder = folder
        self.servers = servers
        self.child = Child(
            __file__,
            "--tf-runner",
            str(folder),
            str(servers),
            log=folder / f"tf-{servers}.log",
        )

    def ready(self) -> None:
        self.child.receive()

    def lockstep(self, batches: list[int]) -> list[float]:
        return self.child.call("lockstep", batches=batches)["losses"]

    def train(self, start: int, stop: int) -> None:
        self.child.call("train", start=start, stop=stop)

    def weights(self) -> dict[str, np.ndarray]:
        path = self.folder / f"tf-{self.servers}-weights.npz"
        self.child.call("save", path=str(path))
        with np.load(path) as saved:
            weights = {key: saved[key] for key in saved.files}
        path.unlink()
        return weights

    def close(self) -> None:
        self.child.close()


def main() -> None:
    role, folder = sys.argv[1], Path(sys.argv[2])
    if role == "--tf-runner":
        tensorflow_runner(folder, int(sys.argv[3]))
    elif role == "--worker":
        adamax_ps_worker(folder)
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()
