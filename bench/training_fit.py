"""Training as users write it: Keras model.fit and PyTorch loops, against
TensorFlow's ParameterServerStrategy under model.fit.

The model, data and initial values of bench/training.py (1,000,000 x 64
embedding, 8 Zipf ids per example averaged, a dense layer, MSE, batches of
1024), 2 workers, 1 and 2 servers, run side by side (bench/fit_systems.py):

- ``tf fit``: TensorFlow ParameterServerStrategy, tf_keras ``model.fit`` with
  the default ``steps_per_execution`` (1), and ``tf fit x10`` tuned: 10 steps
  per execution and a tuned tf.data pipeline (no autotuning, one thread);
- ``adamax-ps keras``: ``adamax_ps.keras`` layer and optimizer under Keras 3's
  ``model.fit`` on numpy arrays, two worker processes; ``adamax-ps keras
  tuned`` on the same tuned tf.data pipeline (and with ``prefetch=1``);
  ``adamax-ps tf_keras`` under tf_keras;
- ``adamax-ps torch``: ``adamax_ps.torch`` module and optimizer in a PyTorch
  loop, two worker processes (exact, with ``prefetch=1``, and with the
  bfloat16 wire).

One untimed warm-up round (tracing, first calls), then rounds interleaved
system by system (the order rotates). Steps/s counts both workers' steps;
after the same number of steps every system's held-out loss is computed by
the same numpy code.

Usage: ``python bench/training_fit.py [--quick] [--rounds R] [--steps S]``;
writes ``bench/results/training_fit.json``, ``training_fit.md`` and the
held-out loss curves, ``training_fit.png`` (measured between rounds, untimed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import fit_systems
import numpy as np
from measure import Child, machine, spread, versions
from readme import save
from training_systems import (
    DIM,
    ROWS,
    TF_THREADS,
    WORKER_THREADS,
    heldout_loss,
    initial_heldout_loss,
    make_problem,
)

RESULTS = Path(__file__).resolve().parent / "results"
SCRIPT = fit_systems.__file__
SYSTEMS = (
    "tf fit",
    "tf fit x10",
    "adamax-ps keras",
    "adamax-ps keras tuned",
    "adamax-ps tf_keras",
    "adamax-ps keras tuned prefetch",
    "adamax-ps torch",
    "adamax-ps torch prefetch",
    "adamax-ps torch bfloat16",
)
BASELINE = "tf fit"


class TensorFlowFit:
    def __init__(self, folder: Path, servers: int, steps_per_execution: int) -> None:
        self.folder, self.tag = folder, f"tf-{servers}-{steps_per_execution}"
        self.child = Child(
            SCRIPT,
            "--tf-fit",
            str(folder),
            str(servers),
            str(steps_per_execution),
            log=folder / f"{self.tag}.log",
        )

    def ready(self) -> None:
        self.child.receive()

    def train(self, start: int, stop: int) -> None:
        self.child.call("train", start=start, stop=stop)

    def weights(self) -> tuple:
        path = self.folder / f"{self.tag}.npz"
        self.child.call("save", path=str(path))
        with np.load(path) as saved:
            return saved["table"], saved["kernel"], saved["bias"]

    def close(self) -> None:
        self.child.close()


class AdamaxPsWorkers:
    """Fresh servers holding the initial table, and two worker processes."""

    def __init__(
        self,
        folder: Path,
        servers: int,
        kind: str,
        legacy: bool = False,
        tuned: bool = False,
        prefetch: bool = False,
        wire_dtype: str = "",
    ) -> None:
        from adamax_ps.client import connect
        from adamax_ps.server.launcher import addresses, start_cluster

        tag = (
            f"{kind}{'-legacy' if legacy else ''}{'-tuned' if tuned else ''}"
            f"{'-prefetch' if prefetch else ''}{'-' + wire_dtype if wire_dtype else ''}"
            f"-{servers}"
        )
        logs = folder / tag
        logs.mkdir()
        self.servers = start_cluster(servers, logs, checkpoints=False)
        self.addresses = addresses(self.servers)
        self.cluster = connect(self.addresses)
        table = np.load(folder / "table.npy")
        self.cluster.variable(fit_systems.TABLE, shape=table.shape).assign(table)
        env = {"TF_USE_LEGACY_KERAS": "1" if legacy else "0"}
        if tuned:
            env[fit_systems.TUNED_DATA] = "1"
        if prefetch:
            env[fit_systems.PREFETCH] = "1"
        if wire_dtype:
            env["ADAMAX_PS_WIRE_DTYPE"] = wire_dtype
        self.workers = [
            Child(
                SCRIPT,
                "--worker",
                kind,
                str(folder),
                str(rank),
                "2",
                log=logs / f"worker-{rank}.log",
                env=env,
            )
            for rank in range(2)
        ]
        self.names: dict = {}

    def ready(self) -> None:
        for worker in self.workers:
            worker.receive()
        for worker in self.workers:
            self.names = worker.call("attach", addresses=self.addresses)

    def train(self, start: int, stop: int) -> None:
        for worker in self.workers:
            worker.send("train", start=start, stop=stop)
        for worker in self.workers:
            worker.receive()

    def weights(self) -> tuple:
        kernel = self.cluster.read(self.names["kernel"])
        if kernel.shape == (1, DIM):  # torch's Linear holds the kernel transposed
            kernel = kernel.T
        bias = self.cluster.read(self.names["bias"])
        return self.cluster.read(fit_systems.TABLE), kernel, bias

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        self.cluster.close()
        for server in self.servers:
            server.stop()


def start(name: str, folder: Path, servers: int):
    if name.startswith("tf fit"):
        return TensorFlowFit(folder, servers, 10 if name.endswith("x10") else 1)
    kind = "torch" if "torch" in name else "keras"
    return AdamaxPsWorkers(
        folder,
        servers,
        kind,
        legacy=name.endswith("tf_keras"),
        tuned="tuned" in name,
        prefetch=name.endswith("prefetch"),
        wire_dtype="bfloat16" if name.endswith("bfloat16") else "",
    )


def run_servers(
    n: int, names: list[str], rounds: int, steps: int, warmup: int, folder: Path
) -> dict:
    systems = {}
    try:
        for name in names:
            systems[name] = start(name, folder, n)
        for system in systems.values():
            system.ready()
        for system in systems.values():
            system.train(0, warmup)
        initial = initial_heldout_loss(folder)
        curves = {name: [[0, initial]] for name in names}

        def measure_losses(done: int) -> None:  # between rounds, untimed
            for name in names:
                loss = heldout_loss(folder, *systems[name].weights())
                curves[name].append([done, loss])

        measure_losses(warmup)
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            first = warmup + r * steps
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                began = time.perf_counter()
                systems[name].train(first, first + steps)
                seconds[name].append(time.perf_counter() - began)
            measure_losses(first + steps)
            print(
                f"training_fit: {n} server(s), round {r + 1}/{rounds}", file=sys.stderr
            )
        result: dict = {}
        for name in names:
            rates = [steps / s for s in seconds[name]]
            ratios = [
                b / s for b, s in zip(seconds[BASELINE], seconds[name], strict=True)
            ]
            result[name] = {
                "seconds": seconds[name],
                "steps_per_s": spread(rates),
                "x_tf_fit": spread(ratios),
                "final_heldout_loss": curves[name][-1][1],
                "heldout_curve": curves[name],  # [steps taken, held-out loss]
            }
        return result
    finally:
        for system in systems.values():
            system.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 server, few steps")
    parser.add_argument("--servers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200, help="steps per round")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--results", type=Path, default=RESULTS, help="output folder")
    args = parser.parse_args()
    if args.quick:
        args.servers, args.rounds, args.steps, args.warmup = [1], 1, 40, 10
    total = args.warmup + args.rounds * args.steps
    folder = Path(tempfile.mkdtemp(prefix="adamax-ps-training-fit-"))
    try:
        make_problem(folder, total)
        initial = initial_heldout_loss(folder)
        results = {
            str(n): run_servers(
                n, list(SYSTEMS), args.rounds, args.steps, args.warmup, folder
            )
            for n in args.servers
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    document = {
        "settings": {
            "servers": args.servers,
            "rounds": args.rounds,
            "steps": args.steps,
            "warmup": args.warmup,
            "total_steps": total,
            "rows": ROWS,
            "dim": DIM,
        },
        "threads": {"tensorflow": TF_THREADS, "adamax_ps_workers": WORKER_THREADS},
        "initial_heldout_loss": initial,
        "machine": machine(),
        "versions": versions("tensorflow", "tf-keras", "keras", "torch", "adamax-ps"),
        "servers": results,
    }
    print(save("training_fit", document, args.results))
    plot_curves(document, args.results / "training_fit.png")


def plot_curves(document: dict, path: Path) -> None:
    """Held-out loss against steps taken, one panel per server count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers = document["servers"]
    figure, axes = plt.subplots(1, len(servers), figsize=(5 * len(servers), 3.6))
    axes = [axes] if len(servers) == 1 else list(axes)
    for axis, (n, systems) in zip(axes, servers.items(), strict=True):
        for name, result in systems.items():
            steps, losses = zip(*result["heldout_curve"], strict=True)
            style = "-" if name.startswith("adamax-ps") else "--"
            axis.plot(steps, losses, style, marker="o", markersize=3, label=name)
        axis.set_yscale("log")
        axis.set_xlabel("training steps (both workers)")
        axis.set_ylabel("held-out MSE")
        axis.set_title(f"{n} server(s), 2 workers")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
