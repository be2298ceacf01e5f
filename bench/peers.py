"""Kernel benchmark against the peers: TensorFlow, Keras 3 and PyTorch Adamax.

One process, every implementation given the same thread budget (``--threads``,
default the machine's cores: TensorFlow intra-op and inter-op pools, torch's
``set_num_threads``, adamax-ps's kernel split over that many threads as the
store splits a large variable over shards), interleaved round by round so a
noisy neighbour hits all alike; medians with their spread, and each peer's time
over ours taken round by round (a ratio measured side by side). The inputs are
drawn once from fixed seeds and shared: in every round each implementation is
given the same gradient (dense) or the same index batch and row values
(sparse). The peers run as their users run them, and the first call (tracing,
XLA or inductor compilation, slot creation) is timed apart from the warm steps:

- dense float32, 1e5 to 5e7 parameters: ``adamax_ps.server.adamax.dense_update``
  (1 thread and split), ``tf_keras.optimizers.legacy.Adamax.apply_gradients``
  (the Keras 2 class, in a ``tf.function`` with a fixed input signature),
  ``tf.raw_ops.ResourceApplyAdaMax`` (eager: the kernel that class calls),
  Keras 3 ``keras.optimizers.Adamax`` in a ``tf.function`` without and with
  ``jit_compile=True`` (XLA: opt-in on a CPU-only machine, where Keras's
  "auto" leaves it off), ``torch.optim.Adamax`` with foreach off and on and through
  ``torch.compile``; against the machine's copy bandwidth (``numpy.copyto``) and
  a probe with the update's exact memory traffic (read 4 arrays, write 3);
- sparse: a 1,000,000 x 64 float32 table, 8192 Zipf indices per push (many
  duplicates): ``sparse_update`` against tf_keras legacy with
  ``tf.IndexedSlices`` (there is no sparse AdaMax kernel in TensorFlow: the
  class sums duplicates with ``Unique`` + ``UnsortedSegmentSum``, then
  ``ResourceGather``, ``ResourceScatterUpdate`` and ``ResourceScatterAdd``), in a
  ``tf.function`` with and without an input signature and, as a diagnostic,
  without the three reads of whole tables its scatter helpers make; Keras 3
  (not lazy: it moves every row) with and without XLA. torch.optim.Adamax
  refuses sparse gradients.

Before timing, every implementation takes the same 3 steps as ours from the
same start, and the largest difference from ours is reported (TensorFlow's
Keras 2 paths must be bit-identical). An implementation that fails (say XLA or
torch.compile cannot build here) keeps its row, with the error.

Usage: ``python bench/peers.py [--json] [--quick] [--results DIR]``; writes
``bench/results/peers.json`` and its rendering ``peers.md``
(``bench/tables_peers.py``). Gradients are already in each library's own
tensor type; converting them is not timed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from kernels import zipf_indices
from measure import CORES, machine, spread, versions
from peer_updates import (
    Copy,
    Keras3,
    Libraries,
    Ours,
    Probe,
    RawAdaMax,
    SparseOurs,
    SparseTf,
    TfKerasLegacy,
    Torch,
    torch_sparse_refusal,
)
from readme import save
from tables_peers import SPARSE, peer_names

RESULTS = Path(__file__).resolve().parent / "results"
BYTES_PER_PARAM = 28  # read w, m, v, g and write w, m, v: 7 x 4 bytes
SPARSE_ROWS, SPARSE_WIDTH, SPARSE_BATCH = 1_000_000, 64, 8192
WARM = 2  # calls before timing: the first (timed apart) and one more


def dense_factories(lib: Libraries, w0, gradients) -> dict[str, Callable[[], object]]:
    names = peer_names(lib.threads)
    return {
        names["ours_1"]: lambda: Ours(w0, gradients, 1),
        names["ours_n"]: lambda: Ours(w0, gradients, lib.threads),
        names["tf_keras"]: lambda: TfKerasLegacy(lib, w0, gradients),
        names["raw"]: lambda: RawAdaMax(lib, w0, gradients),
        names["keras3"]: lambda: Keras3(lib, w0, gradients, jit_compile=False),
        names["keras3_xla"]: lambda: Keras3(lib, w0, gradients, jit_compile=True),
        names["torch"]: lambda: Torch(lib, w0, gradients, foreach=False),
        names["torch_foreach"]: lambda: Torch(lib, w0, gradients, foreach=True),
        names["torch_compile"]: lambda: Torch(
            lib, w0, gradients, foreach=None, compiled=True
        ),
    }


def sparse_factories(lib: Libraries, table, batches, values) -> dict:
    def tf(legacy: bool, how: str) -> Callable[[], object]:
        return lambda: SparseTf(lib, table, batches, values, legacy, how)

    return {
        SPARSE["ours"]: lambda: SparseOurs(table, batches, values),
        SPARSE["tf_keras"]: tf(True, "signature"),
        SPARSE["tf_keras_plain"]: tf(True, "plain"),
        SPARSE["tf_keras_no_reads"]: tf(True, "no reads"),
        SPARSE["keras3"]: tf(False, "signature"),
        SPARSE["keras3_xla"]: tf(False, "xla"),
    }


def failure(error: BaseException) -> str:
    """An error's type and the first line of its message, for a table cell."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:160] if lines else ''}".strip()


def build(factories: dict[str, Callable[[], object]]) -> tuple[dict, dict]:
    """Every implementation made; one whose maker raises gets an error."""
    made, errors = {}, {}
    for name, make in factories.items():
        try:
            made[name] = make()
        except Exception as error:
            errors[name] = failure(error)
    return made, errors


# Agreement with ours, before any timing. ------------------------------------


def stepped(implementations: dict, steps: range) -> dict[str, str]:
    """Take ``steps`` with each; the ones that raise are dropped, with the error."""
    errors = {}
    for name, implementation in list(implementations.items()):
        try:
            for k in steps:
                implementation.step(k)
        except Exception as error:
            errors[name] = failure(error)
            del implementations[name]
    return errors


def dense_agreement(lib: Libraries, n: int = 10_000, steps: int = 3) -> dict:
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal(n, dtype=np.float32)
    gradients = [
        rng.standard_normal(n, dtype=np.float32) * np.float32(s)
        for s in (1.0, 1e-3, 10.0)
    ][:steps]
    factories = dense_factories(lib, w0, gradients)
    implementations, errors = build(factories)
    errors |= stepped(implementations, range(steps))
    reference = implementations.pop(peer_names(lib.threads)["ours_1"]).weights()
    return {
        name: {"error": errors[name]}
        if name in errors
        else max_difference(implementations[name].weights(), reference)
        for name in factories
        if name in errors or name in implementations
    }


def max_difference(a: np.ndarray, b: np.ndarray) -> dict:
    return {
        "max_abs": float(np.max(np.abs(a.astype(np.float64) - b))),
        "identical": bool(np.array_equal(a, b)),
    }


def sparse_agreement(lib: Libraries) -> dict:
    """Two pushes with repeated indices into a small table: the difference from
    ours, and whether rows the second push did not name kept their weights."""
    rng = np.random.default_rng(4)
    table = rng.standard_normal((50, 4), dtype=np.float32)
    batches = [np.array([3, 7, 3, 11, 7, 3]), np.array([20, 21, 20, 22, 23, 24])]
    values = rng.standard_normal((6, 4), dtype=np.float32)
    implementations, errors = build(sparse_factories(lib, table, batches, values))
    errors |= stepped(implementations, range(1))
    first = {name: i.weights().copy() for name, i in implementations.items()}
    errors |= stepped(implementations, range(1, 2))
    reference = implementations.pop(SPARSE["ours"]).weights()
    untouched = np.setdiff1d(np.arange(len(table)), batches[1])
    results = {name: {"error": error} for name, error in errors.items()}
    for name, implementation in implementations.items():
        weights = implementation.weights()
        results[name] = max_difference(weights, reference) | {
            "lazy": bool(np.array_equal(weights[untouched], first[name][untouched]))
        }
    return results | {"torch.optim.Adamax": torch_sparse_refusal(lib)}


# Timing. -------------------------------------------------------------------------


@dataclass
class Timing:
    samples: dict[str, list[float]]  # seconds per call, one per round
    first: dict[str, float]  # the first call (trace, compile, slots)
    errors: dict[str, str]
    retraces: dict[str, int]  # traces after warming up (tf.function only)


def interleave(implementations: dict, rounds: int, repeats: int) -> Timing:
    """Seconds per call of each implementation, once per round, in turn (the
    order reversed every other round). Call ``k`` of every implementation gets
    input ``k``: in each round all of them get the same gradients or batches."""
    first, errors, traced = {}, {}, {}
    for name, implementation in implementations.items():
        try:
            start = time.perf_counter()
            implementation.step(0)
            first[name] = time.perf_counter() - start
            for k in range(1, WARM):
                implementation.step(k)
        except Exception as error:
            errors[name] = failure(error)
            continue
        if hasattr(implementation, "traces"):
            traced[name] = implementation.traces()
    live = [name for name in implementations if name not in errors]
    samples: dict[str, list[float]] = {name: [] for name in live}
    for r in range(rounds):
        for name in live if r % 2 == 0 else live[::-1]:
            step = implementations[name].step
            start = time.perf_counter()
            for k in range(WARM + r * repeats, WARM + (r + 1) * repeats):
                step(k)
            samples[name].append((time.perf_counter() - start) / repeats)
    retraces = {
        name: implementations[name].traces() - count for name, count in traced.items()
    }
    return Timing(samples, first, errors, retraces)


def per_round_ratio(samples: dict[str, list[float]], base: str) -> dict:
    return {
        name: spread([s / b for s, b in zip(times, samples[base], strict=True)])
        for name, times in samples.items()
    }


def rows_of(factories: dict, errors: dict, timing: Timing, base: str, figures):
    """One row per implementation: its spread, first call and ratio to ``base``,
    plus ``figures(median seconds)``; or the error that stopped it."""
    ratios = per_round_ratio(timing.samples, base)
    rows = {}
    for name in factories:
        error = errors.get(name) or timing.errors.get(name)
        if error:
            rows[name] = {"error": error}
            continue
        seconds = spread(timing.samples[name])
        rows[name] = {
            "seconds": seconds,
            **figures(name, seconds["median"]),
            "time_over_ours": ratios[name],
            "first_call_seconds": timing.first[name],
        }
        if name in timing.retraces:
            rows[name]["retraces"] = timing.retraces[name]
    return rows


def dense_run(lib: Libraries, n: int, rounds: int) -> dict:
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(n, dtype=np.float32)
    gradient = rng.standard_normal(n, dtype=np.float32) * np.float32(0.01)
    factories = {
        "copy bandwidth (numpy.copyto, 8 B/param)": lambda: Copy(w0),
        "probe 4R3W, 1 thread (ceiling)": lambda: Probe(w0, 1),
        f"probe 4R3W, {lib.threads} threads (ceiling)": lambda: Probe(w0, lib.threads),
        **dense_factories(lib, w0, [gradient]),
    }
    implementations, errors = build(factories)
    timing = interleave(implementations, rounds, max(1, 2_000_000 // n))
    del implementations

    def figures(name: str, median: float) -> dict:
        bytes_per_param = 8 if name.startswith("copy") else BYTES_PER_PARAM
        return {
            "params_per_s": n / median,
            "gb_per_s": n * bytes_per_param / median / 1e9,
        }

    ours = peer_names(lib.threads)["ours_n"]
    return rows_of(factories, errors, timing, ours, figures)


def sparse_run(lib: Libraries, rounds: int) -> dict:
    rng = np.random.default_rng(1)
    table = rng.standard_normal((SPARSE_ROWS, SPARSE_WIDTH), dtype=np.float32)
    batches = [zipf_indices(rng, SPARSE_ROWS, SPARSE_BATCH) for _ in range(8)]
    values = rng.standard_normal((SPARSE_BATCH, SPARSE_WIDTH), dtype=np.float32)
    factories = sparse_factories(lib, table, batches, values)
    implementations, errors = build(factories)
    timing = interleave(implementations, rounds, 1)
    del implementations

    def figures(name: str, median: float) -> dict:
        return {"rows_per_s": SPARSE_BATCH / median}

    return {
        "unique_rows": float(np.mean([len(np.unique(b)) for b in batches])),
        "cases": rows_of(factories, errors, timing, SPARSE["ours"], figures),
    }


def run(sizes: list[int], rounds: int, sparse_rounds: int, threads: int) -> dict:
    lib = Libraries(threads)
    results: dict = {
        "threads": threads,
        "agreement": {
            "dense": dense_agreement(lib),
            "sparse": sparse_agreement(lib),
        },
        "dense": {},
    }
    print("peers: agreement checked", file=sys.stderr)
    for n in sizes:
        results["dense"][n] = dense_run(lib, n, rounds)
        print(f"peers: dense n={n:.0e} done", file=sys.stderr)
    results["sparse"] = sparse_run(lib, sparse_rounds)
    return results


# Report. ---------------------------------------------------------------------------


def headline(results: dict) -> dict:
    """Medians of the per-round ratios (time over ours; None when that peer
    failed here), at the largest dense size and for the sparse push."""
    names = peer_names(results["threads"])
    big = results["dense"][max(results["dense"])]

    def slower(rows: dict, name: str) -> float | None:
        ratio = rows.get(name, {}).get("time_over_ours")
        return None if ratio is None else ratio["median"]

    probe = f"probe 4R3W, {results['threads']} threads (ceiling)"
    sparse = results["sparse"]["cases"]
    torch = [slower(big, names[k]) for k in ("torch", "torch_foreach")]
    return {
        "dense_size": max(results["dense"]),
        "dense_ours_params_per_s": big[names["ours_n"]]["params_per_s"],
        # the probe's time over ours: our GB/s as a fraction of the probe's
        "dense_ours_fraction_of_probe": slower(big, probe),
        "dense_speedup_vs_tf_keras_legacy": slower(big, names["tf_keras"]),
        "dense_speedup_vs_resource_apply_adamax": slower(big, names["raw"]),
        "dense_speedup_vs_keras3": slower(big, names["keras3"]),
        "dense_speedup_vs_keras3_xla": slower(big, names["keras3_xla"]),
        "dense_speedup_vs_torch": min(t for t in torch if t is not None),
        "dense_speedup_vs_torch_compile": slower(big, names["torch_compile"]),
        "sparse_ours_ms": sparse[SPARSE["ours"]]["seconds"]["median"] * 1e3,
        "sparse_speedup_vs_tf_keras_legacy": slower(sparse, SPARSE["tf_keras"]),
        "sparse_speedup_vs_tf_keras_legacy_without_reads": slower(
            sparse, SPARSE["tf_keras_no_reads"]
        ),
        "tf_keras_bit_identical": results["agreement"]["dense"][names["tf_keras"]].get(
            "identical", False
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="small sizes, few rounds")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=CORES)
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS, help="output folder")
    args = parser.parse_args()
    sizes = [100_000, 1_000_000, 10_000_000, 50_000_000]
    rounds, sparse_rounds = args.rounds, 7
    if args.quick:
        sizes, rounds, sparse_rounds = [100_000, 1_000_000], 3, 3
    results = run(sizes, rounds, sparse_rounds, args.threads)
    head = headline(results)
    document = {
        "headline": head,
        "machine": machine(),
        "versions": versions(
            "tensorflow", "tf-keras", "keras", "torch", "numpy", "numba", "adamax-ps"
        ),
        **results,
    }
    table = save("peers", document, args.results)
    if args.update_readme:
        from report import build

        build(args.results, update=True)
    print(json.dumps(head) if args.json else table)


if __name__ == "__main__":
    main()
