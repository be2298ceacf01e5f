"""Durability benchmark: what ``--durability wal`` costs against ``checkpoint``.

In one run, side by side, on the disk that holds the temporary folder:

- the disk's floor: appends of one record (4 KB, 4 MB) with an fsync each,
  from one thread (what a log without group commit could acknowledge);
- pushes/s through ``ParameterService.apply`` in each mode, from 1, 4 and 16
  threads, for a 1 KB dense push (256 float32), a 4 MB dense push (1M
  float32) and a 256-row sparse push into a 100,000 x 64 table; in wal mode
  also the pushes per fsync (group commit at work) and the log's MB/s;
- the same from gRPC workers to a real server process: 1 KB pushes from 8
  client threads.

Usage: ``python bench/durability.py [--quick] [--json] [--update-readme]``;
writes ``bench/results/durability.json`` and its rendering ``durability.md``
(``bench/tables.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from measure import run_threads, spread
from readme import save, update_readme

from adamax_ps.server.gradients import Gradient
from adamax_ps.server.ledger import PushId
from adamax_ps.server.service import ParameterService, ServiceSettings

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("checkpoint", "wal")
THREADS = (1, 4, 16)
MB = 1e6


def fsync_floor(folder: Path, seconds: float) -> dict:
    """Appends of one record followed by an fsync each, from one thread, for a
    4 KB and a 4 MB record: the disk's own pace for what a push logs."""
    out = {}
    for label, size in (("4 KB", 4096), ("4 MB", 4_000_000)):
        record = os.urandom(size)
        latencies = []
        with open(folder / "floor.log", "ab") as f:
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                f.write(record)
                f.flush()
                os.fsync(f.fileno())
                latencies.append(time.perf_counter() - start)
        (folder / "floor.log").unlink()
        out[label] = {
            "appends_per_s": len(latencies) / sum(latencies),
            "p50_ms": statistics.median(latencies) * 1e3,
            "mb_per_s": size * len(latencies) / sum(latencies) / MB,
        }
    return out


def cases() -> dict:
    rng = np.random.default_rng(0)
    small = [rng.normal(size=256).astype(np.float32) for _ in range(16)]
    large = [rng.normal(size=1_000_000).astype(np.float32) for _ in range(4)]
    rows = [rng.integers(0, 100_000, 256) for _ in range(16)]
    values = rng.normal(size=(256, 64)).astype(np.float32)
    return {
        "dense 1 KB": lambda k, i: [Gradient.dense("small", small[(k + i) % 16])],
        "dense 4 MB": lambda k, i: [Gradient.dense("large", large[k % 4])],
        "sparse 256 x 64 rows": lambda k, i: [
            Gradient.sparse("emb", rows[(k * 7 + i) % 16], values)
        ],
    }


def service_in(folder: Path, mode: str) -> ParameterService:
    service = ParameterService(
        ServiceSettings(shards=4, checkpoint_dir=folder, durability=mode)
    )
    service.restore()
    service.create_optimizer({})
    normal = {"initializer": "random_normal", "seed": 1}
    service.create_variable("small", shape=(256,), **normal)
    service.create_variable("large", shape=(1_000_000,), **normal)
    service.create_variable("emb", shape=(100_000, 64), **normal)
    return service


def push_rate(service, make_push, threads: int, seconds: float, label: str) -> dict:
    """Pushes/s, p50 latency and (wal) fsyncs with ``threads`` pushing at once."""
    log = service.journal.log
    syncs, written = (log.syncs, log.bytes_written) if log else (0, 0)

    def push(k: int, sequence: int):
        gradients, push_id = make_push(k, sequence), PushId(f"{label}-{k}", sequence)
        return lambda: service.apply("Adamax", gradients, push_id)

    every, elapsed = run_threads(threads, seconds, push)
    result = {
        "pushes_per_s": len(every) / elapsed,
        "p50_ms": every[len(every) // 2] * 1e3,
    }
    if log is not None:
        result["pushes_per_fsync"] = len(every) / max(1, log.syncs - syncs)
        result["log_mb_per_s"] = (log.bytes_written - written) / elapsed / MB
    return result


def in_process(folder: Path, seconds: float, rounds: int) -> dict:
    """The disk floor and both modes, interleaved round by round (this disk's
    pace drifts); the median round of each figure."""
    makers = cases()
    floors: list[dict] = []
    runs: dict = {mode: {c: {t: [] for t in THREADS} for c in makers} for mode in MODES}
    for round_ in range(rounds):
        floors.append(fsync_floor(folder, seconds))
        for mode in MODES:
            where = folder / f"{mode}-{round_}"
            service = service_in(where, mode)
            for name, make in makers.items():
                service.apply("Adamax", make(0, 0))  # warm: slots exist
                for threads in THREADS:
                    label = f"{mode}-{round_}-{name}-{threads}"
                    runs[mode][name][threads].append(
                        push_rate(service, make, threads, seconds, label)
                    )
            service.close()
            shutil.rmtree(where, ignore_errors=True)
    modes = {
        mode: {
            name: {t: _median_run(samples) for t, samples in by_threads.items()}
            for name, by_threads in by_case.items()
        }
        for mode, by_case in runs.items()
    }
    floor = {
        size: _median_run([f[size] for f in floors])
        | {"appends_per_s_rounds": spread([f[size]["appends_per_s"] for f in floors])}
        for size in floors[0]
    }
    return {"fsync_floor": floor, **modes}


def _median_run(samples: list[dict]) -> dict:
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


def over_grpc(folder: Path, seconds: float) -> dict:
    """1 KB pushes from 8 threads of one worker process to a real server."""
    from adamax_ps.server.launcher import LocalServer

    out = {}
    for mode in MODES:
        where = folder / f"grpc-{mode}"
        where.mkdir()
        args = ["--grpc-port", "0", "--http-port", "0", "--durability", mode]
        args += ["--checkpoint-dir", str(where / "ps")]
        server = LocalServer(args, where / "server.log").start()
        try:
            out[mode] = {"pushes_per_s": grpc_rate(server.grpc_address, seconds)}
        finally:
            server.kill()
    return out


def grpc_rate(address: str, seconds: float, threads: int = 8) -> float:
    from adamax_ps.client import Adamax, connect

    with connect(address) as cluster:
        opt = Adamax(cluster=cluster)
        w = cluster.variable("w", shape=(256,), initializer="ones")
        g = np.full(256, 0.01, np.float32)
        opt.apply_gradients([(g, w)])
        every, elapsed = run_threads(
            threads, seconds, lambda k, i: lambda: opt.apply_gradients([(g, w)])
        )
        return len(every) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS, help="output folder")
    args = parser.parse_args()
    seconds, rounds = (0.4, 1) if args.quick else (2.0, 3)
    folder = Path(tempfile.mkdtemp(prefix="adamax-ps-durability-"))
    try:
        results = {
            "in_process": in_process(folder, seconds, rounds),
            "grpc": over_grpc(folder, seconds * 2),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    table = save("durability", results, args.results)
    if args.update_readme:
        update_readme("durability", args.results)
    wal, plain = results["in_process"]["wal"], results["in_process"]["checkpoint"]
    summary = {
        "fsyncs_per_s": results["in_process"]["fsync_floor"]["4 KB"]["appends_per_s"],
        "wal_ratio_1kb_16_threads": wal["dense 1 KB"][16]["pushes_per_s"]
        / plain["dense 1 KB"][16]["pushes_per_s"],
        "wal_pushes_per_fsync_1kb_16_threads": wal["dense 1 KB"][16][
            "pushes_per_fsync"
        ],
        "grpc_wal_ratio": results["grpc"]["wal"]["pushes_per_s"]
        / results["grpc"]["checkpoint"]["pushes_per_s"],
    }
    print(json.dumps(summary) if args.json else table, file=sys.stdout)


if __name__ == "__main__":
    main()
