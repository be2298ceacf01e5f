"""The embedded default: a local cluster trains a small recommendation model.

Data is generated with a known ground truth (nothing is downloaded): each
example is a user id (a row of an embedding table, looked up with repeats,
Zipf-popular users first) plus dense features; the target is the sum of the
user's true embedding plus a linear function of the features, with noise.
Worker processes train an embedding table (sparse IndexedSlices pushes with
repeated ids) and a dense layer (dense pushes) through the real client,
asynchronously by default or in synchronous rounds. The model is judged on
held-out data against predicting the training mean.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PREFIX = "demo/"
EMBEDDING, KERNEL, BIAS = (
    PREFIX + "embedding",
    PREFIX + "dense/kernel",
    PREFIX + "dense/bias",
)


@dataclass(frozen=True)
class DemoData:
    ids: np.ndarray  # int64 [n]
    features: np.ndarray  # float32 [n, dense_dim]
    targets: np.ndarray  # float32 [n]

    def part(self, index: int, count: int) -> DemoData:
        """Every ``count``-th example from ``index``: a worker's shard."""
        return DemoData(
            self.ids[index::count],
            self.features[index::count],
            self.targets[index::count],
        )


@dataclass(frozen=True)
class DemoProblem:
    """Ground truth and generated train/test splits (the same for every seed)."""

    users: int
    embedding_dim: int
    dense_dim: int
    train: DemoData
    test: DemoData

    @classmethod
    def generate(
        cls,
        *,
        users: int = 5000,
        embedding_dim: int = 8,
        dense_dim: int = 16,
        examples: int = 60_000,
        seed: int = 0,
    ) -> DemoProblem:
        rng = np.random.default_rng(seed)
        true_embedding = rng.normal(0, 0.5, (users, embedding_dim)).astype(np.float32)
        true_kernel = rng.normal(0, 1, (dense_dim,)).astype(np.float32)
        popularity = rng.zipf(1.3, size=examples * 3)
        ids = (popularity[popularity <= users][:examples] - 1).astype(np.int64)
        ids = rng.permutation(users)[ids]  # popular users anywhere in the table
        features = rng.normal(0, 1, (len(ids), dense_dim)).astype(np.float32)
        targets = (
            true_embedding[ids].sum(axis=1)
            + features @ true_kernel
            + 0.5
            + rng.normal(0, 0.1, len(ids))
        ).astype(np.float32)
        cut = int(len(ids) * 0.9)
        return cls(
            users,
            embedding_dim,
            dense_dim,
            DemoData(ids[:cut], features[:cut], targets[:cut]),
            DemoData(ids[cut:], features[cut:], targets[cut:]),
        )


def predict(
    rows: np.ndarray, kernel: np.ndarray, bias: np.ndarray, features: np.ndarray
) -> np.ndarray:
    """The model: the sum of the user's embedding plus a linear layer."""
    return rows.sum(axis=1) + features @ kernel + bias


def gradients(rows, kernel, bias, batch: DemoData):
    """Mean squared error and its gradients: per-example embedding rows
    (repeated ids repeat), the dense kernel and the bias."""
    error = predict(rows, kernel, bias, batch.features) - batch.targets
    d = ((2.0 / len(error)) * error).astype(np.float32)
    row_grads = np.repeat(d[:, None], rows.shape[1], axis=1)
    return (
        float(np.mean(error**2)),
        row_grads,
        batch.features.T @ d,
        np.float32(d.sum()),
    )


def batches(data: DemoData, size: int, rng: np.random.Generator):
    """Endless shuffled mini-batches."""
    while True:
        order = rng.permutation(len(data.ids))
        for start in range(0, len(order) - size + 1, size):
            pick = order[start : start + size]
            yield DemoData(data.ids[pick], data.features[pick], data.targets[pick])


def train_worker(
    index: int,
    workers: int,
    address: str,
    steps: int,
    batch_size: int,
    token: str | None,
    progress,
) -> None:
    """One worker process: connect, create or attach the model, train."""
    from adamax_ps.client import Adamax, IndexedSlices, connect

    problem = DemoProblem.generate()
    with connect(address, token=token) as cluster:
        opt = Adamax(learning_rate=0.02, name=PREFIX + "adamax", cluster=cluster)
        emb = cluster.variable(EMBEDDING, shape=(problem.users, problem.embedding_dim))
        kernel = cluster.variable(KERNEL, shape=(problem.dense_dim,))
        bias = cluster.variable(BIAS, shape=())
        stream = batches(
            problem.train.part(index, workers),
            batch_size,
            np.random.default_rng(index + 1),
        )
        for step in range(steps):
            batch = next(stream)
            unique, inverse = np.unique(batch.ids, return_inverse=True)
            rows = emb.gather(unique)[inverse]
            loss, row_grads, kernel_grad, bias_grad = gradients(
                rows, kernel.numpy(), bias.numpy(), batch
            )
            opt.apply_gradients(
                [
                    (IndexedSlices(row_grads, batch.ids, emb.shape), emb),
                    (kernel_grad, kernel),
                    (np.asarray(bias_grad, np.float32), bias),
                ]
            )
            progress.put((index, step + 1, loss))
    progress.put((index, None, None))


def evaluate(address: str, token: str | None) -> tuple[float, float]:
    """Held-out mean squared error of the trained model, and of the baseline."""
    from adamax_ps.client import connect

    problem = DemoProblem.generate()
    with connect(address, token=token) as cluster:
        emb = cluster.read(EMBEDDING)
        kernel, bias = cluster.read(KERNEL), cluster.read(BIAS)
    test = problem.test
    mse = float(
        np.mean(
            (predict(emb[test.ids], kernel, bias, test.features) - test.targets) ** 2
        )
    )
    baseline = float(np.mean((test.targets - problem.train.targets.mean()) ** 2))
    return mse, baseline


class Progress:
    """One line for the whole run: a bar, steps done, the latest loss per worker."""

    def __init__(self, workers: int, steps: int) -> None:
        self.done = [0] * workers
        self.loss = [float("nan")] * workers
        self.total = workers * steps
        self.tty = sys.stdout.isatty()
        self.printed = -1
        self.first_loss: float | None = None

    def update(self, worker: int, step: int, loss: float) -> None:
        self.done[worker] = step
        self.loss[worker] = loss
        if self.first_loss is None:
            self.first_loss = loss
        done = sum(self.done)
        tenth = done * 10 // self.total
        if self.tty or tenth > self.printed:
            self.printed = tenth
            self.show(done, end="\r" if self.tty and done < self.total else "\n")

    def show(self, done: int, end: str) -> None:
        width = 30
        filled = width * done // self.total
        bar = "#" * filled + "-" * (width - filled)
        losses = " ".join(f"w{k}:{x:.3f}" for k, x in enumerate(self.loss))
        print(f"[{bar}] {done}/{self.total} steps  loss {losses}", end=end, flush=True)


def run_workers(
    address: str, workers: int, steps: int, batch_size: int, token: str | None
) -> Progress:
    """Start the worker processes, show their progress, wait for them."""
    context = mp.get_context("spawn")
    progress_queue = context.Queue()
    processes = [
        context.Process(
            target=train_worker,
            name=f"worker-{k}",
            args=(k, workers, address, steps, batch_size, token, progress_queue),
        )
        for k in range(workers)
    ]
    for process in processes:
        process.start()
    progress = Progress(workers, steps)
    running = workers
    while running:
        try:
            worker, step, loss = progress_queue.get(timeout=1.0)
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in processes):
                raise SystemExit("adamax-ps demo: a worker process failed") from None
            continue
        if step is None:
            running -= 1
        else:
            progress.update(worker, step, loss)
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise SystemExit(
                f"adamax-ps demo: {process.name} exited {process.exitcode}"
            )
    return progress


def run(
    servers: int = 2,
    workers: int = 4,
    steps: int = 400,
    batch_size: int = 128,
    sync: bool = False,
    checkpoint_dir: Path | None = None,
    address: str | None = None,
    token: str | None = None,
) -> int:
    """The demo; with ``address``, only the workers, against running servers."""
    from adamax_ps.server.launcher import addresses, start_cluster

    started = time.monotonic()
    cluster = []
    if address is None:
        folder = Path(checkpoint_dir or tempfile.mkdtemp(prefix="adamax-ps-demo-"))
        extra = ["--replicas", str(workers)] if sync else []
        print(
            f"starting {servers} servers (checkpoints and logs in {folder})", flush=True
        )
        cluster = start_cluster(servers, folder, *extra)
        address = addresses(cluster)
        print(f"dashboard: {cluster[0].http_address}/", flush=True)
    try:
        mode = "synchronous" if sync else "asynchronous"
        print(
            f"training with {workers} {mode} workers x {steps} steps on {address}",
            flush=True,
        )
        progress = run_workers(address, workers, steps, batch_size, token)
        mse, baseline = evaluate(address, token)
        print(
            f"loss {progress.first_loss:.4f} -> "
            f"{np.nanmean(progress.loss):.4f} (mean of the workers' last batches)"
        )
        print(
            f"held-out MSE {mse:.4f}  (predicting the mean: {baseline:.4f})", flush=True
        )
    finally:
        for server in cluster:
            server.stop()
            for line in server.output():
                if "final checkpoint" in line:
                    print(line.strip(), flush=True)
    print(f"done in {time.monotonic() - started:.1f} s", flush=True)
    return 0 if mse < baseline else 1
