"""Hash-keyed tables at scale: memory per row, and pushes at a table's capacity.

Parts 3 and 4 of ``bench/embedding_tables.py`` (which runs them and renders
them), with the helpers every part shares:

- memory per row at 1e6 and 1e7 rows (dim 64 float32, one optimizer's m and
  v): the table's ``bytes_per_row`` and the process's RSS growth, against
  768 B (w, m, v). A child process (``python bench/embedding_capacity.py
  ROWS,ROWS``) fills a table by pushes of 65536 new keys and stops early when
  the machine's free memory would not hold the next growth;
- 8192-key pushes into tables at their capacity (200,000 rows, LRU), cases
  interleaved round by round: a Zipf stream over 1e8 keys (new keys at every
  push) with the background evictor and with inline eviction only, all-new
  keys with the evictor, and held keys only; push p50/p99 and the time each
  eviction batch held a shard's lock (``evictor.longest``, the histogram).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
from measure import percentile
from measure import spread as _spread

DIM, BATCH, HELD, SPACE, EXPONENT = 64, 8192, 1_000_000, 100_000_000, 1.1
SEED, CHUNK, CAPACITY = 7, 1 << 16, 200_000
IDEAL = 3 * 4 * DIM  # w, m, v in float32: 768 B per row
RESERVE = 2 << 30  # free memory the memory child always leaves
PAGE = os.sysconf("SC_PAGE_SIZE")


def spread(values) -> dict:
    """A spread that keeps its samples (for ratios taken round by round)."""
    return _spread(values) | {"samples": [float(v) for v in values]}


def zipf_ranks(rng, n: int, limit: int) -> np.ndarray:
    """``n`` Zipf ranks (exponent 1.1) below ``limit``, from 0."""
    ranks = rng.zipf(EXPONENT, size=n * 8)
    return (ranks[ranks <= limit][:n] - 1).astype(np.int64)


def interleave(rows: dict[str, Callable[[int], float]], rounds: int) -> dict:
    """Each row once per round (round ``r`` starts at row ``r``), after a
    warm round (``-1``); each call returns the round's figure."""
    for run in rows.values():
        run(-1)
    names, samples = list(rows), {name: [] for name in rows}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            samples[name].append(rows[name](r))
    return samples


def fill(push: Callable[[np.ndarray, np.ndarray], object], keys) -> None:
    """Push ``keys`` in chunks of 65536 (each gets a row and slots)."""
    values = np.full((CHUNK, DIM), 0.01, np.float32)
    for start in range(0, len(keys), CHUNK):
        chunk = keys[start : start + CHUNK]
        push(chunk, values[: len(chunk)])


def service(**settings):
    """A ParameterService with the optimizer ``Adamax``."""
    from adamax_ps.server.service import ParameterService, ServiceSettings

    s = ParameterService(ServiceSettings(**settings))
    s.create_optimizer({"name": "Adamax"})
    return s


def pusher(s, table: str) -> Callable[[np.ndarray, np.ndarray], object]:
    from adamax_ps.server.gradients import Gradient

    return lambda keys, values: s.apply(
        "Adamax", [Gradient.sparse(table, keys, values)]
    )


# Part 3: memory per row -------------------------------------------------------------


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def memory_child(targets: list[int]) -> dict:
    """Fill a table by pushes of 65536 new keys up to each target in turn."""
    from adamax_ps.common.malloc import tune_malloc
    from adamax_ps.server import hash_index
    from adamax_ps.server.errors import ResourceExhaustedError

    tune_malloc()  # as adamax-ps serve does
    s = service()
    s.create_table("t", dim=DIM)
    push = pusher(s, "t")
    g = np.full((CHUNK, DIM), 0.01, np.float32)
    offsets = np.random.default_rng(SEED).integers(0, 10, max(targets))
    push(offsets[:1], g[:1])  # warm: kernels loaded, slots made (the first key)
    base, done, started, found, stopped = rss(), 0, time.perf_counter(), [], None
    parts = [shard.tables["t"] for shard in s.store.shards]
    for target in targets:
        while done < target and stopped is None:
            n = min(CHUNK, target - done)
            need = sum(  # what a growth touches: copies of the used rows, the index
                p.high * p.row_bytes(2) + 4 * hash_index.buckets_for(2 * p.alloc)
                for p in parts
                if p.size + n > p.alloc
            )
            if mem_available() - need < RESERVE:
                free = mem_available() / 1e9
                stopped = f"{free:.1f} GB free, the next growth needs {need / 1e9:.1f}"
                break
            try:  # distinct keys of [0, 1e8)
                push(np.arange(done, done + n) * 10 + offsets[done : done + n], g[:n])
            except ResourceExhaustedError as e:
                stopped = f"refused: {str(e).splitlines()[0]}"
                break
            done += n
        info, grown = s.table_info("t"), rss() - base
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        found.append(
            {
                "rows": info["size"],
                "allocated": info["allocated"],
                "bytes_per_row": info["bytes_per_row"],
                "rss_bytes_per_row": grown / max(info["size"], 1),
                "rss_growth_gb": grown / 1e9,
                "peak_rss_gb": peak / 1e9,
                "seconds": time.perf_counter() - started,
            }
        )
        if stopped:
            break
    return {"milestones": found, "stopped": stopped, "budget_gb": s.memory.limit / 1e9}


def memory(quick: bool) -> dict:
    """Part 3, in a child process (its RSS is the table's alone)."""
    targets = [100_000, 300_000] if quick else [HELD, 10 * HELD]
    free = mem_available()
    result = subprocess.run(
        [sys.executable, __file__, ",".join(map(str, targets))],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != 0:
        raise RuntimeError(f"memory child failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1]) | {
        "targets": targets,
        "free_gb_before": free / 1e9,
        "ideal_bytes_per_row": IDEAL,
    }


# Part 4: pushes at capacity -----------------------------------------------------------

CASES = {  # name: (evictor running, the stream)
    "Zipf stream over 1e8 keys, background evictor": (True, "zipf"),
    "Zipf stream over 1e8 keys, inline eviction only": (False, "zipf"),
    "all 8192 keys new at each push, background evictor": (True, "new"),
    "held keys only (no eviction)": (False, "held"),
}


def eviction(rounds: int, seconds: float) -> dict:
    """Each case, its own service and table, pushes for ``seconds`` a round."""
    from adamax_ps.server.gradients import Gradient

    rng = np.random.default_rng(SEED + 1)
    held = int(0.9 * CAPACITY)  # where the evictor leaves a table (its LOW)
    streams = {  # keys from 1: rank 1 is the hottest
        "zipf": [zipf_ranks(rng, BATCH, SPACE) + 1 for _ in range(256)],
        "held": [zipf_ranks(rng, BATCH, held) + 1 for _ in range(64)],
    }
    g = np.full((BATCH, DIM), 0.01, np.float32)
    services, locks, latencies, counts = {}, {}, {}, {}
    for name, (evictor, _) in CASES.items():
        s = services[name] = service()
        s.create_table("t", dim=DIM, capacity=CAPACITY, eviction={"policy": "lru"})
        fill(pusher(s, "t"), np.arange(1, held + 1, dtype=np.int64))
        locks[name], latencies[name], counts[name] = [], [], 0
        if evictor:  # every batch's lock time, as the histogram sees it
            observe, note = s.evictor.observe, locks[name].append
            s.evictor.observe = lambda t, o=observe, a=note: (a(t), o(t))
            s.start_eviction()

    def keys_of(name: str) -> np.ndarray:
        stream, i = CASES[name][1], counts[name]
        if stream == "new":
            return 2 * SPACE + i * BATCH + np.arange(BATCH, dtype=np.int64)
        return streams[stream][i % len(streams[stream])]

    def one_round(name: str) -> Callable[[int], float]:
        def run(r: int) -> float:
            stop, taken = time.perf_counter() + (0.2 if r < 0 else seconds), []
            while time.perf_counter() < stop:
                gradient = [Gradient.sparse("t", keys_of(name), g)]
                counts[name] += 1
                start = time.perf_counter()
                services[name].apply("Adamax", gradient)
                taken.append(time.perf_counter() - start)
            latencies[name].extend(taken if r >= 0 else [])
            return statistics.median(taken)

        return run

    p50 = interleave({name: one_round(name) for name in CASES}, rounds)
    out = {}
    for name, (evictor, _) in CASES.items():
        s, ordered, lock = services[name], sorted(latencies[name]), sorted(locks[name])
        info = s.table_info("t")
        out[name] = {
            "pushes": len(ordered),
            "pushes_per_s": len(ordered) / sum(ordered),
            "p50_ms": percentile(ordered, 0.5) * 1e3,
            "p99_ms": percentile(ordered, 0.99) * 1e3,
            "max_ms": ordered[-1] * 1e3,
            "p50_rounds_ms": spread([x * 1e3 for x in p50[name]]),
            "admitted_per_push": (info["admitted"] - held) / counts[name],
            "evicted": info["evicted"],
            "size": info["size"],
            "lock_batches": len(lock),
            "lock_longest_ms": s.evictor.longest * 1e3 if evictor else None,
            "lock_p99_ms": percentile(lock, 0.99) * 1e3 if lock else None,
            "lock_histogram": _histogram(s) if evictor else None,
        }
        s.close()
    return {"rounds": rounds, "seconds": seconds, "capacity": CAPACITY, "cases": out}


def _histogram(s) -> dict:
    """Count, sum and buckets of ``adamax_ps_table_eviction_lock_seconds``."""
    found = {"count": 0, "sum_s": 0.0, "le": {}}
    for metric in s.metrics.eviction_lock_seconds.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                found["count"] = int(sample.value)
            elif sample.name.endswith("_sum"):
                found["sum_s"] = sample.value
            elif sample.name.endswith("_bucket"):
                found["le"][sample.labels["le"]] = int(sample.value)
    return found


if __name__ == "__main__":
    print(json.dumps(memory_child([int(x) for x in sys.argv[1].split(",")])))
