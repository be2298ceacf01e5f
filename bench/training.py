"""End to end against TensorFlow's own parameter-server training.

The same small recommendation model, the same initial values, the same
batches and the same optimizer (Keras 2 legacy Adamax) trained two ways on one
machine, in one run:

- TensorFlow: ``tf.distribute.ParameterServerStrategy`` with a
  ``ClusterCoordinator`` over a local in-process cluster (``tf.distribute.Server``
  on free loopback ports, as TensorFlow's tutorial does): 1 or 2 parameter
  servers, 2 workers, ``tf_keras.optimizers.legacy.Adamax``; with 2 servers the
  table is split by rows over both (``MinSizePartitioner`` at 64 MB, the size at
  which adamax-ps splits a variable);
- adamax-ps: ``adamax-ps serve`` processes (the same count) and 2 worker
  processes using the client: rows gathered from the servers, gradients
  computed by the same TensorFlow function, the embedding pushed as
  ``IndexedSlices`` and the dense layer densely.

Model: an embedding table of 1,000,000 x 64 float32 (8 Zipf-popular ids per
example, averaged) and a dense layer 64 -> 1 with a bias, mean squared error,
batches of 1024 examples. First both systems take the same steps one at a time
(lockstep): their per-step losses and every weight must be identical, which
shows they train the same model. Then rounds of asynchronous training (both
workers at once), interleaved system by system; each reports training steps
per second and gradient bytes per second (the gradient a step computes:
8192 rows x 64 float32 with their int64 ids, plus the dense layer's), and after
the same number of steps both report the held-out loss, which must agree.

Usage: ``python bench/training.py [--json] [--quick] [--results DIR]``; writes
``bench/results/training.md`` and ``training.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from measure import (
    CORES,
    Child,
    free_port,
    machine,
    quiet_tensorflow,
    serve_commands,
    spread,
    versions,
)

RESULTS = Path(__file__).resolve().parent / "results"
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
        from adamax_ps.client import Adamax, connect
        from adamax_ps.server.launcher import addresses, start_cluster

        logs = folder / f"adamax-ps-{servers}"
        logs.mkdir()
        self.servers = start_cluster(servers, logs, checkpoints=False)
        self.addresses = addresses(self.servers)
        self.workers = workers
        self.cluster = connect(self.addresses)
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


# The run. ------------------------------------------------------------------------


def compare(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> dict:
    differing = sum(int(np.count_nonzero(ours[k] != theirs[k])) for k in ours)
    largest = max(float(np.max(np.abs(ours[k] - theirs[k]))) for k in ours)
    return {"identical": differing == 0, "differing": differing, "max_abs": largest}


def run(
    server_counts: list[int], lockstep: int, rounds: int, steps: int, folder: Path
) -> dict:
    total = lockstep + rounds * steps
    make_problem(folder, total)
    initial = heldout_loss(
        folder,
        np.load(folder / "table.npy", mmap_mode="r"),
        np.load(folder / "kernel.npy"),
        np.load(folder / "bias.npy"),
    )
    print(f"training: data ready, {total} steps", file=sys.stderr)
    systems = {}
    workers = []
    try:
        for n in server_counts:
            systems[("tensorflow", n)] = TensorFlowSystem(folder, n)
        workers = [
            Child(__file__, "--worker", str(folder), log=folder / f"worker-{k}.log")
            for k in range(2)
        ]
        for n in server_counts:
            systems[("adamax-ps", n)] = AdamaxPsSystem(folder, n, workers)
        for worker in workers:
            worker.receive()
        for (name, _), system in systems.items():
            if name == "tensorflow":
                system.ready()
            else:
                system.attach()
        return measure(systems, server_counts, lockstep, rounds, steps, folder, initial)
    finally:
        for system in systems.values():
            system.close()
        for worker in workers:
            worker.close()


def measure(systems, server_counts, lockstep, rounds, steps, folder, initial) -> dict:
    results: dict = {"initial_heldout_loss": initial, "servers": {}}
    batches = list(range(lockstep))
    for n in server_counts:
        theirs = systems[("tensorflow", n)]
        ours = systems[("adamax-ps", n)]
        tf_losses, our_losses = theirs.lockstep(batches), ours.lockstep(batches)
        results["servers"][n] = {
            "lockstep": {
                "steps": lockstep,
                "losses_identical": tf_losses == our_losses,
                "tensorflow_losses": tf_losses,
                "adamax_ps_losses": our_losses,
                **compare(ours.weights(), theirs.weights()),
            },
            "seconds": {"tensorflow": [], "adamax-ps": []},
        }
        print(f"training: lockstep with {n} server(s) compared", file=sys.stderr)
    for r in range(rounds):
        start = lockstep + r * steps
        order = (
            ["tensorflow", "adamax-ps"] if r % 2 == 0 else ["adamax-ps", "tensorflow"]
        )
        for n in server_counts:
            for name in order:
                began = time.perf_counter()
                systems[(name, n)].train(start, start + steps)
                elapsed = time.perf_counter() - began
                results["servers"][n]["seconds"][name].append(elapsed)
        print(f"training: round {r + 1}/{rounds} done", file=sys.stderr)
    for n in server_counts:
        summarize(results["servers"][n], systems, n, steps, folder)
    return results


def summarize(result: dict, systems: dict, n: int, steps: int, folder: Path) -> None:
    final = {}
    for name in ("tensorflow", "adamax-ps"):
        rates = [steps / s for s in result["seconds"][name]]
        weights = systems[(name, n)].weights()
        final[name] = heldout_loss(
            folder, weights["table"], weights["kernel"], weights["bias"]
        )
        result[name] = {
            "steps_per_s": spread(rates),
            "gradient_bytes_per_s": spread([r * STEP_BYTES for r in rates]),
            "final_heldout_loss": final[name],
        }
    ratios = [
        t / o
        for o, t in zip(
            result["seconds"]["adamax-ps"], result["seconds"]["tensorflow"], strict=True
        )
    ]
    result["speedup"] = spread(ratios)  # per round: TensorFlow's time over ours
    result["loss_relative_difference"] = abs(
        final["adamax-ps"] - final["tensorflow"]
    ) / max(final["tensorflow"], 1e-12)


def markdown(results: dict, settings: dict) -> str:
    lines = [
        "End to end against TensorFlow ParameterServerStrategy (same model, data, "
        f"initial values and Keras 2 Adamax; 2 workers; {settings['rounds']} "
        f"interleaved rounds of {settings['steps']} steps, medians [min-max]; "
        "`python bench/training.py`)",
        "",
        "| servers | system | steps/s | gradient MB/s | x TensorFlow | "
        "held-out loss after "
        f"{settings['lockstep'] + settings['rounds'] * settings['steps']} steps |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for n, r in results["servers"].items():
        for name in ("tensorflow", "adamax-ps"):
            s = r[name]["steps_per_s"]
            mb = r[name]["gradient_bytes_per_s"]["median"] / 1e6
            ratio = "1.00" if name == "tensorflow" else f"{r['speedup']['median']:.2f}"
            label = "TensorFlow PS strategy" if name == "tensorflow" else "adamax-ps"
            lines.append(
                f"| {n} | {label} | {s['median']:.1f} [{s['min']:.1f}-{s['max']:.1f}]"
                f" | {mb:.1f} | {ratio} | {r[name]['final_heldout_loss']:.4f} |"
            )
    lines.append("")
    for n, r in results["servers"].items():
        lock = r["lockstep"]
        verdict = "identical" if lock["identical"] else "DIFFERENT"
        lines.append(
            f"- {n} server(s): the first {lock['steps']} steps taken one at a time "
            f"gave {verdict} weights ({lock['differing']} values differ, max "
            f"{lock['max_abs']:.2g}) and "
            f"{'identical' if lock['losses_identical'] else 'different'} losses; "
            f"after asynchronous training the held-out losses differ by "
            f"{r['loss_relative_difference']:.2%} (from "
            f"{results['initial_heldout_loss']:.4f} at the start)."
        )
    lines.append(
        f"- Threads: TensorFlow's in-process servers intra-op {TF_THREADS['intra_op']}"
        f", inter-op {TF_THREADS['inter_op']}; adamax-ps workers compute gradients "
        f"with TensorFlow at intra-op {WORKER_THREADS['intra_op']}, inter-op "
        f"{WORKER_THREADS['inter_op']} each. A step's gradient is "
        f"{STEP_BYTES / 1e6:.2f} MB ({BATCH * IDS} rows x {DIM} float32 + int64 ids"
        " + the dense layer)."
    )
    return "\n".join(lines) + "\n"


def headline(results: dict) -> dict:
    first = results["servers"][min(results["servers"])]
    return {
        "speedup_vs_tensorflow": first["speedup"]["median"],
        "adamax_ps_steps_per_s": first["adamax-ps"]["steps_per_s"]["median"],
        "tensorflow_steps_per_s": first["tensorflow"]["steps_per_s"]["median"],
        "lockstep_identical": all(
            r["lockstep"]["identical"] and r["lockstep"]["losses_identical"]
            for r in results["servers"].values()
        ),
        "loss_relative_difference": max(
            r["loss_relative_difference"] for r in results["servers"].values()
        ),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--tf-runner":
        tensorflow_runner(Path(sys.argv[2]), int(sys.argv[3]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        adamax_ps_worker(Path(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="1 server, few steps")
    parser.add_argument("--servers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200, help="steps per round")
    parser.add_argument("--lockstep", type=int, default=20)
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS, help="output folder")
    args = parser.parse_args()
    if args.quick:
        args.servers, args.rounds, args.steps, args.lockstep = [1], 1, 40, 4
    settings = {k: getattr(args, k) for k in ("servers", "rounds", "steps", "lockstep")}
    folder = Path(tempfile.mkdtemp(prefix="adamax-ps-training-"))
    try:
        results = run(args.servers, args.lockstep, args.rounds, args.steps, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    head = headline(results)
    table = markdown(results, settings)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "training.md").write_text(table)
    document = {
        "headline": head,
        "settings": settings,
        "threads": {"tensorflow": TF_THREADS, "adamax_ps_workers": WORKER_THREADS},
        "machine": machine(),
        "versions": versions("tensorflow", "tf-keras", "adamax-ps"),
        **results,
    }
    (args.results / "training.json").write_text(json.dumps(document, indent=1) + "\n")
    if args.update_readme:
        from report import build

        build(args.results, update=True)
    print(json.dumps(head) if args.json else table)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
