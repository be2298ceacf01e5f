"""Kernel benchmark: the Adamax updates against numpy and the machine's ceiling.

Measured side by side in one process, interleaved round by round in a rotated
order (so a noisy neighbour hits every implementation alike), medians reported
with the spread of the rounds and ratios taken round by round. Every
implementation has its own copy of the same start state and is given the same
gradient (dense) or the same index batch (sparse) in the same round: the
inputs are drawn once from a fixed seed and shared.

- dense, float32, 1e5 to 5e7 parameters: naive numpy (temporaries), the best
  in-place numpy (``out=`` and one scratch buffer), our fused kernel on one
  thread and on two (the variable split in two row blocks, as the store splits
  a large variable over shards), and a streaming probe with the update's exact
  memory traffic and no arithmetic (read four arrays, write three): the ceiling;
- sparse, a 1,000,000 x 64 float32 table, 8192 Zipf-distributed indices per
  push (many duplicates): numpy (argsort + add.reduceat) against ours.

Usage: ``python bench/kernels.py [--json] [--quick] [--update-readme]``.
Writes ``bench/results/kernels.json`` and its rendering ``kernels.md``
(``bench/tables.py``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from probe import stream_4r3w
from readme import save, update_readme
from tables import fastest

from adamax_ps.server import adamax, kernels
from adamax_ps.server.hyperparams import AdamaxConfig

RESULTS = Path(__file__).resolve().parent / "results"
BYTES_PER_PARAM = 28  # read w, m, v, g and write w, m, v: 7 x 4 bytes
POOL = ThreadPoolExecutor(2)


def timed(fn: Callable[[int], object], r: int) -> float:
    start = time.perf_counter()
    fn(r)
    return time.perf_counter() - start


def interleave(
    cases: dict[str, Callable[[int], object]], rounds: int
) -> dict[str, list]:
    """Time each case once per round; round ``r`` starts at case ``r`` (a
    rotated order), and every case is called with the same round number, so
    cases that take an input per call get the same one in the same round."""
    for fn in cases.values():  # warm: page faults, caches, JIT
        fn(-1)
    names = list(cases)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(timed(cases[name], r))
    return samples


def split2(fn: Callable[..., None], *arrays: np.ndarray) -> Callable[[], None]:
    """Run ``fn`` on two halves of the arrays at once (nogil kernels)."""
    half = arrays[0].shape[0] // 2
    lo = [a[:half] for a in arrays]
    hi = [a[half:] for a in arrays]

    def run() -> None:
        a = POOL.submit(fn, *lo)
        b = POOL.submit(fn, *hi)
        a.result()
        b.result()

    return run


def dense_cases(n: int, step: adamax.StepScalars) -> dict[str, Callable[[int], None]]:
    """Each case updates its own copy of the same w, m, v with the same g."""
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(n, dtype=np.float32)
    g = rng.standard_normal(n, dtype=np.float32) * np.float32(0.01)

    def state() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return w0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)

    scratch = np.empty(n, np.float32)
    probe = [np.ones(n, np.float32) for _ in range(4)]
    c1, b2, lr, eps = step.one_minus_beta_1, step.beta_2, step.lr_hat, step.epsilon

    def naive(w, m, v) -> Callable[[int], None]:
        def run(_: int) -> None:
            m[:] = m + (g - m) * c1
            v[:] = np.maximum(b2 * v, np.abs(g))
            w[:] = w - lr * (m / (v + eps))

        return run

    def numpy_inplace(w, m, v) -> Callable[[int], None]:
        def run(_: int) -> None:
            np.subtract(g, m, out=scratch)
            np.multiply(scratch, c1, out=scratch)
            np.add(m, scratch, out=m)
            np.abs(g, out=scratch)
            np.multiply(v, b2, out=v)
            np.maximum(v, scratch, out=v)
            np.add(v, eps, out=scratch)
            np.divide(m, scratch, out=scratch)
            np.multiply(scratch, lr, out=scratch)
            np.subtract(w, scratch, out=w)

        return run

    def fused(w_, m_, v_, g_) -> None:
        kernels.dense_adamax(w_, m_, v_, g_, c1, b2, lr, eps)

    ours_1, ours_2 = state(), state()
    probe_2 = split2(stream_4r3w, *probe)
    fused_2 = split2(fused, *ours_2, g)
    return {
        "numpy naive (temporaries)": naive(*state()),
        "numpy in-place (out=, scratch)": numpy_inplace(*state()),
        "probe 4R3W, 1 thread": lambda _: stream_4r3w(*probe),
        "probe 4R3W, 2 threads": lambda _: probe_2(),
        "adamax-ps fused, 1 thread": lambda _: adamax.dense_update(*ours_1, g, step),
        "adamax-ps fused, 2 threads": lambda _: fused_2(),
    }


def zipf_indices(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    ranks = rng.zipf(1.2, size=n * 4)
    ranks = ranks[ranks <= rows][:n] - 1
    return rng.permutation(rows)[ranks].astype(np.int64)


def sparse_cases(rows: int, width: int, batch: int, step: adamax.StepScalars):
    """Each case updates its own copy of the same table; in round ``r`` both
    get index batch ``r`` (of 8, drawn once) and the same row values."""
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal((rows, width), dtype=np.float32)
    batches = [zipf_indices(rng, rows, batch) for _ in range(8)]
    values = rng.standard_normal((batch, width), dtype=np.float32)

    def state() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return w0.copy(), np.zeros_like(w0), np.zeros_like(w0)

    def numpy_reduceat(w, m, v) -> Callable[[int], None]:
        def run(r: int) -> None:
            idx = batches[r % len(batches)]
            order = np.argsort(idx, kind="stable")
            sorted_idx = idx[order]
            starts = np.flatnonzero(np.r_[True, sorted_idx[1:] != sorted_idx[:-1]])
            uniq = sorted_idx[starts]
            g = np.add.reduceat(values[order], starts, axis=0)
            m_rows = m[uniq] * step.beta_1 + g * step.one_minus_beta_1
            v_rows = np.maximum(v[uniq] * step.beta_2, np.abs(g))
            m[uniq] = m_rows
            v[uniq] = v_rows
            w[uniq] += step.neg_lr_hat * (m_rows / (v_rows + step.epsilon))

        return run

    def ours(w, m, v) -> Callable[[int], None]:
        def run(r: int) -> None:
            adamax.sparse_update(w, m, v, batches[r % len(batches)], values, step)

        return run

    unique = statistics.mean(len(np.unique(b)) for b in batches)
    cases = {
        "numpy argsort + add.reduceat": numpy_reduceat(*state()),
        "adamax-ps": ours(*state()),
    }
    return cases, unique


def summarize(samples: list[float]) -> tuple[float, float, float]:
    return statistics.median(samples), min(samples), max(samples)


def _row(samples: list[float]) -> dict:
    med, lo, hi = summarize(samples)
    return {
        "median_ms": med * 1e3,
        "min_ms": lo * 1e3,
        "max_ms": hi * 1e3,
        "samples_ms": [s * 1e3 for s in samples],
    }


def run(sizes: list[int], rounds: int, sparse_rounds: int) -> dict:
    step = AdamaxConfig.from_keras().step_scalars(10, np.float32)
    dense: dict[int, dict[str, dict]] = {}
    for n in sizes:
        samples = interleave(dense_cases(n, step), rounds)
        dense[n] = {}
        for name, s in samples.items():
            med = statistics.median(s)
            dense[n][name] = _row(s) | {
                "params_per_s": n / med,
                "gb_per_s": n * BYTES_PER_PARAM / med / 1e9,
            }
        print(f"dense n={n:.0e} done", file=sys.stderr)
    cases, unique = sparse_cases(1_000_000, 64, 8192, step)
    sparse = {}
    for name, s in interleave(cases, sparse_rounds).items():
        med = statistics.median(s)
        sparse[name] = _row(s) | {
            "rows_per_s": 8192 / med,
            "unique_rows_per_s": unique / med,
        }
    return {
        "rounds": rounds,
        "sparse_rounds": sparse_rounds,
        "processor": platform.processor() or platform.machine(),
        "dense": dense,
        "sparse": sparse,
        "sparse_unique_rows": unique,
    }


def headline(results: dict) -> dict:
    dense = results["dense"]
    big = dense[max(dense)]
    ours, probe = fastest(big, "adamax-ps fused"), fastest(big, "probe 4R3W")
    ten_m = dense.get(10_000_000, big)
    ours_10m = fastest(ten_m, "adamax-ps fused")["params_per_s"]
    return {
        "dense_params_per_s": ours["params_per_s"],
        "dense_bandwidth_fraction": ours["gb_per_s"] / probe["gb_per_s"],
        "dense_speedup_vs_numpy_inplace": ours_10m
        / ten_m["numpy in-place (out=, scratch)"]["params_per_s"],
        "sparse_rows_per_s": results["sparse"]["adamax-ps"]["rows_per_s"],
        "dense_size": max(dense),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="small sizes, few rounds")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS, help="output folder")
    args = parser.parse_args()
    sizes = [100_000, 1_000_000, 10_000_000, 50_000_000]
    rounds, sparse_rounds = args.rounds, 60
    if args.quick:
        sizes, rounds, sparse_rounds = [100_000, 1_000_000], 3, 10
    results = run(sizes, rounds, sparse_rounds)
    head = headline(results)
    table = save("kernels", {"headline": head, **results}, args.results)
    if args.update_readme:
        update_readme("kernels", args.results)
    print(json.dumps(head) if args.json else table)


if __name__ == "__main__":
    main()
