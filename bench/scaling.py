"""Scaling of adamax-ps on one machine: workers, tensor size, shards, servers.

Real ``adamax-ps serve`` processes on loopback, pushed to by worker processes
using the client (``Adamax.apply_gradients``, as training code does). Every
cluster configuration is started once and kept; the measurements then run in
rounds, each round visiting every point, so the machine's drift hits every
point alike. Each point: pushes per second and p50/p99 latency over all
workers' pushes, median of the rounds with the spread:

- concurrent worker processes 1, 2, 4, 8, 16 against one server (default
  shards): 8192-row Zipf sparse pushes into a 1,000,000 x 64 table and dense
  pushes of 1M float32 (4 MB);
- tensor size: dense pushes of 4 KB to 64 MB, 1 and 4 workers;
- shards per server (``--shards`` 1, 2, 4) and servers (1, 2, 3; large
  variables split by rows over them), 4 workers, sparse and dense 64 MB;
- memory per parameter: the servers' resident bytes over the 12 bytes of
  float32 state (value, ``m``, ``v``) per parameter they hold;
- checkpoint write and restore speed against a plain file write and read of
  the same size, and resident memory of the service, with bench/service.py's
  functions.

Usage: ``python bench/scaling.py [--json] [--quick] [--results DIR]``; writes
``bench/results/scaling.json`` and its rendering ``scaling.md``
(``bench/tables.py``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from measure import machine, spread, versions
from readme import save
from scaling_cluster import Cluster, Push, Workers

RESULTS = Path(__file__).resolve().parent / "results"
STATE_BYTES = 12  # float32 value, m and v per parameter


# The run. ------------------------------------------------------------------------


def plan(quick: bool) -> dict:
    if quick:
        return {
            "workers": [1, 2],
            "sizes": [1 << 10, 1 << 20],
            "size_workers": [1],
            "shards": [2],
            "servers": [1, 2],
            "cluster_workers": 2,
            "memory_gb": [0.128],
        }
    return {
        "workers": [1, 2, 4, 8, 16],
        "sizes": [1 << 10, 1 << 14, 1 << 18, 1 << 20, 1 << 22, 1 << 24],
        "size_workers": [1, 4],
        "shards": [1, 2, 4],
        "servers": [1, 2, 3],
        "cluster_workers": 4,
        "memory_gb": [0.25, 1.0],
    }


def points(p: dict) -> list[tuple[str, tuple, Push, int]]:
    """Every measurement of a round: (sweep, cluster key, push, workers)."""
    base = (1, 2)  # one server, two shards: the default on this machine
    wide = [Push("sparse"), Push("dense", 1 << 24)]
    found = []
    for push in (Push("sparse"), Push("dense", 1 << 20)):
        found += [("workers", base, push, n) for n in p["workers"]]
    for n in p["size_workers"]:
        found += [("size", base, Push("dense", s), n) for s in p["sizes"]]
    for push in wide:
        found += [("shards", (1, k), push, p["cluster_workers"]) for k in p["shards"]]
        found += [("servers", (n, 2), push, p["cluster_workers"]) for n in p["servers"]]
    return found


def run(p: dict, rounds: int, seconds: float, folder: Path) -> dict:
    todo = points(p)
    clusters: dict[tuple, Cluster] = {}
    workers = None
    try:
        for key in dict.fromkeys(key for _, key, _, _ in todo):
            pushes = [push for _, k, push, _ in todo if k == key]
            clusters[key] = Cluster(folder / f"cluster-{key[0]}-{key[1]}", *key, pushes)
        workers = Workers(max(n for *_, n in todo), folder)
        print(f"scaling: {len(clusters)} clusters, {len(todo)} points", file=sys.stderr)
        samples: dict[tuple, list[dict]] = {}
        for r in range(rounds):
            for sweep, key, push, n in todo if r % 2 == 0 else reversed(todo):
                address = clusters[key].addresses
                measured = workers.measure(address, push, n, seconds)
                samples.setdefault((sweep, key, push, n), []).append(measured)
            print(f"scaling: round {r + 1}/{rounds} done", file=sys.stderr)
        memory = {
            f"{k[0]} server(s), {k[1]} shards": server_memory(c)
            for k, c in clusters.items()
        }
    finally:
        if workers is not None:
            workers.close()
        for cluster in clusters.values():
            cluster.close()
    return {"sweeps": collect(samples), "server_memory": memory}


def server_memory(cluster: Cluster) -> dict:
    resident = cluster.resident_bytes()
    return {
        "servers": cluster.servers,
        "shards": cluster.shards,
        "params": cluster.params,
        "resident_bytes": resident,
        "bytes_per_param": resident / cluster.params,
        "over_state": resident / (STATE_BYTES * cluster.params),
    }


def collect(samples: dict) -> dict:
    sweeps: dict = {}
    for (sweep, key, push, n), runs in samples.items():
        sweeps.setdefault(sweep, []).append(
            {
                "servers": key[0],
                "shards": key[1],
                "push": push.label,
                "kind": push.kind,
                "payload_bytes": push.payload,
                "workers": n,
                **{
                    field: spread([run[field] for run in runs])
                    for field in ("pushes_per_s", "bytes_per_s", "p50_ms", "p99_ms")
                },
                "rounds": [run["pushes_per_s"] for run in runs],
            }
        )
    for rows in sweeps.values():  # per round, over the first point of its push
        for row in rows:
            first = next(r for r in rows if r["push"] == row["push"])
            row["x_first"] = spread(
                [a / b for a, b in zip(row["rounds"], first["rounds"], strict=True)]
            )
    return sweeps


def _rounds_spread(m: dict) -> dict:
    """Write and restore GB/s over the rounds, when the child kept them."""
    found = {}
    for kind, key in (("write", "checkpoint_seconds"), ("restore", "restore_seconds")):
        rounds = m.get(f"{key}_rounds")
        if rounds:
            found[f"{kind}_gb_per_s_rounds"] = {
                "median": m["checkpoint_bytes"] / rounds["median"] / 1e9,
                "min": m["checkpoint_bytes"] / rounds["max"] / 1e9,
                "max": m["checkpoint_bytes"] / rounds["min"] / 1e9,
                "n": rounds["n"],
            }
    return found


def checkpoints(sizes_gb: list[float]) -> list[dict]:
    """bench/service.py's child: memory and checkpoint speed against a plain file."""
    from service import memory_and_checkpoint

    results = []
    for gigabytes in sizes_gb:
        m = memory_and_checkpoint(gigabytes, shards=4)
        state = m["checkpoint_bytes"]
        results.append(
            {
                "variables_gb": m["variables_bytes"] / 1e9,
                "state_bytes": m["state_bytes"],
                "over_state_service": m["rss_at_rest"] / m["state_bytes"],
                "over_state_process": (m["rss_at_rest"] + m["rss_baseline"])
                / m["state_bytes"],
                "write_gb_per_s": state / m["checkpoint_seconds"] / 1e9,
                "plain_write_gb_per_s": state / m["plain"]["write_seconds"] / 1e9,
                "restore_gb_per_s": state / m["restore_seconds"] / 1e9,
                "plain_read_gb_per_s": state / m["plain"]["read_seconds"] / 1e9,
                "rounds": m["rounds"],
                **_rounds_spread(m),
                "raw": m,
            }
        )
        print(f"scaling: checkpoint of {gigabytes} GB done", file=sys.stderr)
    return results


# Report. ---------------------------------------------------------------------------


def headline(results: dict) -> dict:
    workers = results["sweeps"]["workers"]
    sparse = [r for r in workers if r["kind"] == "sparse"]
    best = max(sparse, key=lambda r: r["pushes_per_s"]["median"])
    first = results["checkpoints"][-1]
    servers = [r for r in results["sweeps"]["servers"] if r["kind"] == "sparse"]
    return {
        "sparse_pushes_per_s_1_worker": sparse[0]["pushes_per_s"]["median"],
        "sparse_pushes_per_s_best": best["pushes_per_s"]["median"],
        "sparse_best_workers": best["workers"],
        "sparse_p99_ms_1_worker": sparse[0]["p99_ms"]["median"],
        "servers_sparse_x_1": servers[-1]["x_first"]["median"],
        "resident_over_state": min(
            m["over_state"] for m in results["server_memory"].values()
        ),
        "checkpoint_write_gb_per_s": first["write_gb_per_s"],
        "checkpoint_restore_gb_per_s": first["restore_gb_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="few points, short")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5, help="per point")
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS, help="output folder")
    args = parser.parse_args()
    p = plan(args.quick)
    if args.quick:
        args.rounds, args.seconds = 1, 0.5
    folder = Path(tempfile.mkdtemp(prefix="adamax-ps-scaling-"))
    try:
        results = run(p, args.rounds, args.seconds, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    results["checkpoints"] = checkpoints(p["memory_gb"])
    head = headline(results)
    document = {
        "headline": head,
        "plan": p,
        "rounds": args.rounds,
        "seconds_per_point": args.seconds,
        "machine": machine(),
        "versions": versions("adamax-ps", "grpcio", "numpy", "numba"),
        **results,
    }
    table = save("scaling", document, args.results)
    if args.update_readme:
        from report import build

        build(args.results, update=True)
    print(json.dumps(head) if args.json else table)


if __name__ == "__main__":
    main()
