"""Service benchmark: pushes per second, resident memory, checkpoint speed.

In one run, in-process (no transport; the transports have their own bench):

- pushes/s through ``ParameterService.apply`` from 1, 2 and 4 threads, for a
  dense 1M-parameter variable and for 4096-row Zipf sparse pushes into a
  1,000,000 x 64 table, all threads pushing the same variables;
- resident memory of a service holding 1 GB of float32 variables with their
  slots (3 GB of state), at rest and while a checkpoint is written, against
  the issue's limits (3.15 GB + 200 MB; plus one shard's share while writing);
- checkpoint write and restore speed of that state, against a plain write
  (with fsync) and read of one file of the same size on the same disk.

The memory part runs in a child process so its numbers are its own.
Usage: ``python bench/service.py [--json] [--quick] [--update-readme]``;
writes ``bench/results/service.json`` and its rendering ``service.md``
(``bench/tables.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from measure import run_threads, spread
from readme import save, update_readme

from adamax_ps.server.durable import start_writeback
from adamax_ps.server.gradients import Gradient
from adamax_ps.server.ledger import PushId
from adamax_ps.server.service import ParameterService, ServiceSettings

RESULTS = Path(__file__).resolve().parent / "results"
PAGE = os.sysconf("SC_PAGE_SIZE")
GB = 1e9
ROUNDS = 3


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def zipf_rows(rng, rows: int, n: int) -> np.ndarray:
    ranks = rng.zipf(1.2, size=n * 4)
    return (rng.permutation(rows)[ranks[ranks <= rows][:n] - 1]).astype(np.int64)


def push_rate(
    service: ParameterService, make_push, threads: int, seconds: float, label: str
):
    """Pushes per second and p50/p99 latency with ``threads`` pushing at once."""

    def push(k: int, sequence: int):
        gradients = make_push(k, sequence)
        push_id = PushId(f"{label}-{threads}-{k}", sequence)
        return lambda: service.apply("Adamax", gradients, push_id)

    every, elapsed = run_threads(threads, seconds, push)
    return {
        "pushes_per_s": len(every) / elapsed,
        "p50_ms": every[len(every) // 2] * 1e3,
        "p99_ms": every[int(len(every) * 0.99)] * 1e3,
    }


def throughput(seconds: float) -> dict:
    service = ParameterService(ServiceSettings())
    service.create_optimizer({})
    normal = {"initializer": "random_normal", "seed": 1}
    service.create_variable("dense", shape=(1_000_000,), **normal)
    service.create_variable("emb", shape=(1_000_000, 64), **normal)
    rng = np.random.default_rng(0)
    dense = [rng.normal(size=1_000_000).astype(np.float32) for _ in range(4)]
    rows = [zipf_rows(rng, 1_000_000, 4096) for _ in range(16)]
    values = rng.normal(size=(4096, 64)).astype(np.float32)
    cases = {
        "dense 1M params (4 MB)": lambda k, i: [Gradient.dense("dense", dense[k % 4])],
        "sparse 4096 x 64 rows": lambda k, i: [
            Gradient.sparse("emb", rows[(k * 7 + i) % 16], values)
        ],
    }
    results: dict[str, dict[int, dict]] = {}
    for name, make in cases.items():
        make(0, 0)
        service.apply("Adamax", make(0, 0))  # warm: slots exist, pages faulted
        results[name] = {
            t: push_rate(service, make, t, seconds, name) for t in (1, 2, 4)
        }
    service.close()
    return {"shards": service.store.num_shards, "cases": results}


def memory_child(folder: str, gigabytes: float, shards: int) -> dict:
    """Runs in its own process: 1 GB of variables with slots, then a checkpoint."""
    baseline = rss()
    settings = ServiceSettings(shards=shards, checkpoint_dir=Path(folder))
    service = ParameterService(settings)
    service.create_optimizer({})
    per_variable = 32_000_000  # 128 MB each
    count = round(gigabytes * GB / (per_variable * 4))
    gradient = np.full(per_variable, 0.01, np.float32)
    for k in range(count):
        service.create_variable(f"v{k}", shape=(per_variable,), initializer="zeros")
        service.apply("Adamax", [Gradient.dense(f"v{k}", gradient)])  # slots resident
    del gradient
    state = count * per_variable * 4 * 3
    at_rest = rss() - baseline
    plain, writes, restores, peaks = [], [], [], []
    same_size = np.full(state // 4, 0.5, np.float32)  # allocated after at_rest
    for _ in range(ROUNDS):  # interleaved: this disk's pace drifts a lot
        plain.append(plain_file(Path(folder), same_size))
        before = rss()
        peak, info = peak_rss_during(service.checkpoint, before)
        peaks.append(at_rest + peak)  # growth during the checkpoint, over at rest
        writes.append(info.seconds)
        evict(*info.path.iterdir())
        restored = ParameterService(ServiceSettings(shards=shards))
        started = time.perf_counter()
        restored.restore(Path(folder))
        restores.append(time.perf_counter() - started)
        restored.close()
        del restored
    service.close()
    median = statistics.median
    return {
        "rounds": ROUNDS,
        "plain": {key: median(p[key] for p in plain) for key in plain[0]},
        "state_bytes": state,
        "variables_bytes": state // 3,
        "shards": shards,
        "rss_at_rest": at_rest,
        "rss_baseline": baseline,
        "rss_peak_checkpoint": max(peaks),
        "checkpoint_bytes": info.nbytes,
        "checkpoint_seconds": median(writes),
        "restore_seconds": median(restores),
        "checkpoint_seconds_rounds": spread(writes),
        "restore_seconds_rounds": spread(restores),
        "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def peak_rss_during(call, baseline: int):
    """Peak resident memory (above ``baseline``) while ``call()`` runs."""
    peak = [rss() - baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            peak[0] = max(peak[0], rss() - baseline)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = call()
    finally:
        done.set()
        sampler.join()
    return peak[0], result


def evict(*paths: Path) -> None:
    """Drop files from the page cache so the next read comes from the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def plain_file(folder: Path, data: np.ndarray) -> dict:
    """Write (each chunk's writeback started at once, then fsync) and read
    back one file holding ``data``: the disk's pace for the same bytes from
    distinct memory, as a checkpoint writes them.

    Measured before each checkpoint round, in the same process."""
    view = memoryview(data.reshape(-1)).cast("B")
    path = folder / "plain.bin"
    start = time.perf_counter()
    with open(path, "wb") as f:
        for offset in range(0, len(view), 16 << 20):
            f.write(view[offset : offset + (16 << 20)])
            start_writeback(f.fileno(), offset, 16 << 20)  # as a checkpoint does
        f.flush()
        os.fsync(f.fileno())
    write = time.perf_counter() - start
    evict(path)
    start = time.perf_counter()
    with open(path, "rb") as f:
        for offset in range(0, len(view), 16 << 20):
            f.readinto(view[offset : offset + (16 << 20)])
    read = time.perf_counter() - start
    path.unlink()
    return {"write_seconds": write, "read_seconds": read}


def memory_and_checkpoint(gigabytes: float, shards: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="adamax-ps-bench-"))
    try:
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-child",
                str(folder),
                str(gigabytes),
                str(shards),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=1800,
        )
        return json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        folder, gigabytes, shards = sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
        print(json.dumps(memory_child(folder, gigabytes, shards)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="shorter, 0.25 GB")
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS, help="output folder")
    args = parser.parse_args()
    seconds, gigabytes = (0.3, 0.25) if args.quick else (4.0, 1.0)
    results = {
        "throughput": throughput(seconds),
        "memory": memory_and_checkpoint(gigabytes, shards=4),
    }
    table = save("service", results, args.results)
    if args.update_readme:
        update_readme("service", args.results)
    summary = {
        "dense_pushes_per_s_1_thread": results["throughput"]["cases"][
            "dense 1M params (4 MB)"
        ][1]["pushes_per_s"],
        "rss_at_rest_gb": results["memory"]["rss_at_rest"] / GB,
        "checkpoint_gb_per_s": results["memory"]["checkpoint_bytes"]
        / results["memory"]["checkpoint_seconds"]
        / GB,
    }
    print(json.dumps(summary) if args.json else table)


if __name__ == "__main__":
    main()
