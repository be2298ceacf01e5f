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
``bench/results/training.json`` and its rendering ``training.md``
(``bench/tables_peers.py``).
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
import training_systems
from measure import Child, machine, spread, versions
from readme import save
from training_systems import (
    BATCH,
    DIM,
    IDS,
    STEP_BYTES,
    TF_THREADS,
    WORKER_THREADS,
    AdamaxPsSystem,
    TensorFlowSystem,
    heldout_loss,
    initial_heldout_loss,
    make_problem,
)

RESULTS = Path(__file__).resolve().parent / "results"


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
    initial = initial_heldout_loss(folder)
    print(f"training: data ready, {total} steps", file=sys.stderr)
    systems = {}
    workers = []
    try:
        for n in server_counts:
            systems[("tensorflow", n)] = TensorFlowSystem(folder, n)
        workers = [
            Child(
                training_systems.__file__,
                "--worker",
                str(folder),
                log=folder / f"worker-{k}.log",
            )
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
    document = {
        "headline": head,
        "settings": settings,
        "threads": {"tensorflow": TF_THREADS, "adamax_ps_workers": WORKER_THREADS},
        "model": {"step_bytes": STEP_BYTES, "rows": BATCH * IDS, "dim": DIM},
        "machine": machine(),
        "versions": versions("tensorflow", "tf-keras", "adamax-ps"),
        **results,
    }
    table = save("training", document, args.results)
    if args.update_readme:
        from report import build

        build(args.results, update=True)
    print(json.dumps(head) if args.json else table)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
