"""Kernel benchmark: the Adamax updates against numpy and the machine's ceiling.

Measured side by side in one process, interleaved round by round (so a noisy
neighbour hits every implementation alike), medians reported with the spread:

- dense, float32, 1e5 to 5e7 parameters: naive numpy (temporaries), the best
  in-place numpy (``out=`` and one scratch buffer), our fused kernel on one
  thread and on two (the variable split in two row blocks, as the store splits
  a large variable over shards), and a streaming probe with the update's exact
  memory traffic and no arithmetic (read four arrays, write three): the ceiling;
- sparse, a 1,000,000 x 64 float32 table, 8192 Zipf-distributed indices per
  push (many duplicates): numpy (argsort + add.reduceat) against ours.

Usage: ``python bench/kernels.py [--json] [--quick] [--update-readme]``.
Writes ``bench/results/kernels.md`` and ``bench/results/kernels.json``.
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
from readme import update_readme

from adamax_ps.server import adamax, kernels
from adamax_ps.server.hyperparams import AdamaxConfig

RESULTS = Path(__file__).resolve().parent / "results"
BYTES_PER_PARAM = 28  # read w, m, v, g and write w, m, v: 7 x 4 bytes
POOL = ThreadPoolExecutor(2)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleave(cases: dict[str, Callable[[], object]], rounds: int) -> dict[str, list]:
    """Time each case once per round, in the same order every round."""
    for fn in cases.values():  # warm: page faults, caches, JIT
        fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            samples[name].append(timed(fn))
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


def dense_cases(n: int, step: adamax.StepScalars) -> dict[str, Callable[[], object]]:
    rng = np.random.default_rng(0)
    w = rng.standard_normal(n, dtype=np.float32)
    m = np.zeros(n, np.float32)
    v = np.zeros(n, np.float32)
    g = rng.standard_normal(n, dtype=np.float32) * np.float32(0.01)
    scratch = np.empty(n, np.float32)
    probe = [np.ones(n, np.float32) for _ in range(4)]
    c1, b2, lr, eps = step.one_minus_beta_1, step.beta_2, step.lr_hat, step.epsilon

    def naive() -> None:
        m[:] = m + (g - m) * c1
        v[:] = np.maximum(b2 * v, np.abs(g))
        w[:] = w - lr * (m / (v + eps))

    def numpy_inplace() -> None:
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

    def fused(w_, m_, v_, g_) -> None:
        kernels.dense_adamax(w_, m_, v_, g_, c1, b2, lr, eps)

    return {
        "numpy naive (temporaries)": naive,
        "numpy in-place (out=, scratch)": numpy_inplace,
        "probe 4R3W, 1 thread": lambda: kernels.stream_4r3w(*probe),
        "probe 4R3W, 2 threads": split2(kernels.stream_4r3w, *probe),
        "adamax-ps fused, 1 thread": lambda: adamax.dense_update(w, m, v, g, step),
        "adamax-ps fused, 2 threads": split2(fused, w, m, v, g),
    }


def zipf_indices(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    ranks = rng.zipf(1.2, size=n * 4)
    ranks = ranks[ranks <= rows][:n] - 1
    return rng.permutation(rows)[ranks].astype(np.int64)


def sparse_cases(rows: int, width: int, batch: int, step: adamax.StepScalars):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((rows, width), dtype=np.float32)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    batches = [zipf_indices(rng, rows, batch) for _ in range(8)]
    values = rng.standard_normal((batch, width), dtype=np.float32)
    counter = iter(range(1 << 62))

    def indices() -> np.ndarray:
        return batches[next(counter) % len(batches)]

    def numpy_reduceat() -> None:
        idx = indices()
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

    def ours() -> None:
        adamax.sparse_update(w, m, v, indices(), values, step)

    unique = statistics.mean(len(np.unique(b)) for b in batches)
    return {"numpy argsort + add.reduceat": numpy_reduceat, "adamax-ps": ours}, unique


def summarize(samples: list[float]) -> tuple[float, float, float]:
    return statistics.median(samples), min(samples), max(samples)


def run(sizes: list[int], rounds: int, sparse_rounds: int) -> dict:
    step = AdamaxConfig.from_keras().step_scalars(10, np.float32)
    dense: dict[int, dict[str, dict[str, float]]] = {}
    for n in sizes:
        samples = interleave(dense_cases(n, step), rounds)
        dense[n] = {}
        for name, s in samples.items():
            med, lo, hi = summarize(s)
            dense[n][name] = {
                "median_ms": med * 1e3,
                "min_ms": lo * 1e3,
                "max_ms": hi * 1e3,
                "params_per_s": n / med,
                "gb_per_s": n * BYTES_PER_PARAM / med / 1e9,
            }
        print(f"dense n={n:.0e} done", file=sys.stderr)
    cases, unique = sparse_cases(1_000_000, 64, 8192, step)
    sparse = {}
    for name, s in interleave(cases, sparse_rounds).items():
        med, lo, hi = summarize(s)
        sparse[name] = {
            "median_ms": med * 1e3,
            "min_ms": lo * 1e3,
            "max_ms": hi * 1e3,
            "rows_per_s": 8192 / med,
            "unique_rows_per_s": unique / med,
        }
    return {"dense": dense, "sparse": sparse, "sparse_unique_rows": unique}


def headline(results: dict) -> dict:
    dense = results["dense"]
    big = dense[max(dense)]
    ours = max(
        (big["adamax-ps fused, 1 thread"], big["adamax-ps fused, 2 threads"]),
        key=lambda r: r["params_per_s"],
    )
    probe = max(
        (big["probe 4R3W, 1 thread"], big["probe 4R3W, 2 threads"]),
        key=lambda r: r["gb_per_s"],
    )
    ten_m = dense.get(10_000_000, big)
    ours_10m = max(
        ten_m["adamax-ps fused, 1 thread"]["params_per_s"],
        ten_m["adamax-ps fused, 2 threads"]["params_per_s"],
    )
    return {
        "dense_params_per_s": ours["params_per_s"],
        "dense_bandwidth_fraction": ours["gb_per_s"] / probe["gb_per_s"],
        "dense_speedup_vs_numpy_inplace": ours_10m
        / ten_m["numpy in-place (out=, scratch)"]["params_per_s"],
        "sparse_rows_per_s": results["sparse"]["adamax-ps"]["rows_per_s"],
        "dense_size": max(dense),
    }


def markdown(results: dict, head: dict, rounds: int) -> str:
    lines = [
        f"Kernel benchmark ({platform.processor() or platform.machine()}, "
        f"{rounds} interleaved rounds, medians; `python bench/kernels.py`)",
        "",
        "| dense float32 | params | median ms | M params/s | GB/s (28 B/param) | "
        "x numpy in-place |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for n, row in results["dense"].items():
        base = row["numpy in-place (out=, scratch)"]["params_per_s"]
        for name, r in row.items():
            ratio = r["params_per_s"] / base
            lines.append(
                f"| {name} | {n:.0e} | {r['median_ms']:.3f} | "
                f"{r['params_per_s'] / 1e6:,.0f} | {r['gb_per_s']:.1f} | {ratio:.2f} |"
            )
    lines += [
        "",
        f"| sparse 1e6 x 64 float32, 8192 Zipf indices "
        f"(~{results['sparse_unique_rows']:.0f} unique) | median ms | M input rows/s |"
        " x numpy |",
        "|---|---:|---:|---:|",
    ]
    base = results["sparse"]["numpy argsort + add.reduceat"]["rows_per_s"]
    for name, r in results["sparse"].items():
        lines.append(
            f"| {name} | {r['median_ms']:.3f} | {r['rows_per_s'] / 1e6:.2f} | "
            f"{r['rows_per_s'] / base:.2f} |"
        )
    lines += [
        "",
        f"Headline: dense {head['dense_params_per_s'] / 1e9:.2f} G params/s at "
        f"{head['dense_size']:.0e} = {head['dense_bandwidth_fraction']:.0%} of the "
        f"4R3W probe; {head['dense_speedup_vs_numpy_inplace']:.1f}x the best in-place "
        f"numpy at 1e7; sparse {head['sparse_rows_per_s'] / 1e6:.1f} M input rows/s.",
    ]
    return "\n".join(lines) + "\n"


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
    table = markdown(results, head, rounds)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "kernels.md").write_text(table)
    (args.results / "kernels.json").write_text(
        json.dumps({"headline": head, **results}, indent=1, default=str) + "\n"
    )
    if args.update_readme:
        update_readme("kernels", table)
    print(json.dumps(head) if args.json else table)


if __name__ == "__main__":
    main()
