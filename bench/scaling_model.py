"""Scaling model: 100-server placement simulated; checkpoint and resize rates measured.

Simulated with the real ``common.keys`` and ``common.placement`` (no servers):
10^10 keys over 100 servers and shards from samples, Zipf load, a step's
calls and bytes, the data moved when 10 servers join 100. Measured in-process
(2 shards): checkpoint write and restore of 1 GB of variables with slots
(beside a plain file) and of a 1e6-row table, a push's wait during a write; a
2-server cut imported by 3 servers, bytes read against bytes kept; the
exactly-once ledger's size and merge cost. ``python bench/scaling_model.py
[--quick] [--results DIR]`` writes ``bench/results/scaling_model.{json,md}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from measure import machine, spread
from service import evict, plain_file, rss

from adamax_ps.common.keys import server_of, shard_of
from adamax_ps.common.placement import place_rows
from adamax_ps.proto import codec
from adamax_ps.proto.v1 import parameter_server_pb2 as pb
from adamax_ps.server.checkpoint import CheckpointReader
from adamax_ps.server.cut_import import CLUSTER_SPLIT_BYTES as SPLIT
from adamax_ps.server.cut_import import merged_ledger
from adamax_ps.server.gradients import Gradient
from adamax_ps.server.ledger import PUSH, PushId
from adamax_ps.server.service import ParameterService, ServiceSettings

RESULTS = Path(__file__).resolve().parent / "results"
KEYS, SERVERS, ADDED, DIM, GB = 10**10, 100, 10, 64, 1e9
SPREAD = {"median", "min", "max", "n"}  # measure.spread's keys
BATCH_IDS = 1024 * 8  # the training benchmark's batch: 1024 examples x 8 ids
STEPS = [(1, 10**6, BATCH_IDS)] + [(SERVERS, KEYS, n) for n in (512, BATCH_IDS, 65536)]


def ratio(counts: np.ndarray, random: bool = False) -> dict:
    """max/mean and min/mean (with ``random``: and random placement's max/mean)."""
    mean = counts.mean()
    found = {"max_over_mean": counts.max() / mean, "min_over_mean": counts.min() / mean}
    return found | ({"random": random_max(mean, len(counts))} if random else {})


def random_max(per_owner: float, owners: int) -> float:
    """max/mean of counts placed at random: mean + 2.5 sd (the largest of 100)."""
    return 1 + 2.5 * float(np.sqrt((1 - 1 / owners) / per_owner))


def zipf(rng, a: float, n: int, top: int = KEYS) -> np.ndarray:
    """``n`` Zipf(a) ranks at most ``top``, as keys ``rank - 1``."""
    out = rng.zipf(a, int(n * 1.1) + 1000)
    return (out[out <= top][:n] - 1).astype(np.int64)


def per_server(keys: np.ndarray, servers: int = SERVERS) -> np.ndarray:
    return np.bincount(server_of(keys, servers), minlength=servers)


# Simulation ---------------------------------------------------------------------


def balance(rng, sample: int) -> dict:
    """Keys per server and per shard of a server, ``sample`` keys for 10^10."""
    keys = rng.integers(-(2**63), 2**63 - 1, sample, dtype=np.int64)
    cases = {
        "uniform random int64 keys": per_server(keys),
        "sequential ids 0..n-1": per_server(np.arange(sample, dtype=np.int64)),
        "distinct Zipf(1.2) ids": per_server(np.unique(zipf(rng, 1.2, sample))),
    }
    found = {name: ratio(counts, True) for name, counts in cases.items()}
    mine = keys[server_of(keys, SERVERS) == 0]
    for n in (2, 4, 16, 64):
        counts = np.bincount(shard_of(mine, n), minlength=n)
        found[f"server 0's {len(mine):,} keys over {n} shards"] = {
            **ratio(counts, True),
            "random_at_1e8_keys": random_max(KEYS / SERVERS / n, n),
        }
    return found


def access_load(explicit: int) -> dict:
    """Each server's share of all accesses when key ``r`` is accessed with
    probability ~ r^-a over 10^10 keys: the top ``explicit`` keys placed by
    ``server_of``, the tail (tiny weights each) spread evenly."""
    ranks = np.arange(1, explicit + 1, dtype=np.float64)
    owner = server_of(np.arange(explicit, dtype=np.int64), SERVERS)
    found = {}
    for a in (1.1, 1.2):
        head = ranks**-a
        tail = ((explicit + 0.5) ** (1 - a) - (KEYS + 0.5) ** (1 - a)) / (a - 1)
        load = np.bincount(owner, weights=head, minlength=SERVERS) + tail / SERVERS
        found[f"a={a}"] = {"hottest_key_share": head[0] / load.sum(), **ratio(load)}
    return found


def call_overhead(rows: int, servers: int) -> int:
    """Protobuf bytes beyond the tensors' of one server's share of a step: an
    ApplyRequest (``rows`` gradients, ``rows`` to read) and its answer."""
    zero, ids = np.zeros((rows, DIM), np.float32), np.arange(rows, dtype=np.int64)
    request = pb.ApplyRequest(
        view=pb.ClusterView(server_index=servers - 1, num_servers=servers),
        optimizer="Adamax",
        push_id=pb.PushId(client="0" * 32, sequence=10**6),
        gradients=[pb.Gradient(variable="items", values=codec.encode(zero))],
        step=10**7,
        call_variables=["items", "dense/kernel", "dense/bias"],
        reads=[pb.ReadRequest(variable="items", rows=codec.encode(ids))],
    )
    request.gradients[0].indices.CopyFrom(codec.encode(ids))
    answer = pb.ApplyResponse(step=10**7, iterations=10**7, next_step=10**7)
    answer.values.append(codec.encode(zero))
    return request.ByteSize() + answer.ByteSize() - 2 * rows * (DIM * 4 + 8)


def batches(rng, count: int) -> dict:
    """A step's Zipf(1.2) ids (the client sums duplicates first): unique rows,
    servers touched, the busiest server's rows against the mean, the
    coordinator's calls (it is in every step) against an average server's, and
    the protobuf bytes (each row's gradient and index out, its next read back)."""
    found = {}
    for servers, top, ids in STEPS:
        steps = []
        for _ in range(count):
            counts = per_server(np.unique(zipf(rng, 1.2, ids, top)), servers)
            touched = np.count_nonzero(counts)
            steps.append((counts.sum(), touched, counts.max() / counts.mean()))
        unique, touched, busiest = np.mean(steps, axis=0)
        overhead = call_overhead(int(unique / touched), servers)
        found[f"{ids} ids, {servers} server(s)"] = {
            "unique_rows": unique,
            "servers_touched": touched,
            "busiest_over_mean_rows": busiest,
            "coordinator_calls_over_mean": servers / touched,
            "overhead_bytes_per_call": overhead,
            "bytes_per_step": 2 * unique * (DIM * 4 + 8) + touched * overhead,
        }
    return found


def kept(old, new) -> int:
    """Rows with the same owner in two row-range placements."""
    return sum(
        max(0, min(hi, hi2) - max(lo, lo2))
        for owner, lo, hi in old
        for owner2, lo2, hi2 in new
        if owner == owner2
    )


def moves(rng, sample: int) -> dict:
    """Fraction of the data whose owner changes from 100 to 110 servers."""
    grown = SERVERS + ADDED
    keys = rng.integers(-(2**63), 2**63 - 1, sample, dtype=np.int64)
    after = server_of(keys, grown)
    moved = server_of(keys, SERVERS) != after
    old = place_rows("items", (KEYS, DIM), 4, SERVERS, SPLIT)
    new = place_rows("items", (KEYS, DIM), 4, grown, SPLIT)
    crc = np.array([zlib.crc32(f"layer_{i}/kernel".encode()) for i in range(10_000)])
    # The fix: a variable's rows in 65536 fixed blocks, each placed like a key.
    blocks = (zlib.crc32(b"items") << 20) + np.arange(1 << 16, dtype=np.int64)
    return {
        "ideal": {"moved": ADDED / grown},
        "jump hash keys (tables)": {
            "moved": moved.mean(),
            "moved_between_old_servers": np.count_nonzero(moved & (after < SERVERS)),
        },
        "split variable row ranges (place_rows)": {
            "moved": 1 - kept(old, new) / KEYS,
            "old_owners_keeping_rows": sum(bool(kept([o], new)) for o in old),
        },
        "whole variables, crc32(name) % n": {"moved": np.mean(crc % 100 != crc % 110)},
        "fix: 65536 row blocks by jump hash": {
            "moved": np.mean(server_of(blocks, SERVERS) != server_of(blocks, grown)),
            **ratio(per_server(blocks, grown), True),
        },
    }


# Measurements -------------------------------------------------------------------


def new_service(folder: Path, index=0, servers=1, optimizer=True) -> ParameterService:
    where = {"server_index": index, "num_servers": servers}
    service = ParameterService(ServiceSettings(2, checkpoint_dir=folder, **where))
    if optimizer:
        service.create_optimizer({})
    return service


def fill(service: ParameterService, gigabytes: float, keys: int, step=None) -> None:
    """About ``gigabytes`` of state in 4 row-indexed (rows, 64) variables with
    slots, and a table "items" holding ``keys`` (rows and slots)."""
    rows = int(gigabytes * GB / 3 / 4 / (DIM * 4))
    gradient = np.full((max(rows, 65536), DIM), 0.01, np.float32)
    for k in range(4 if rows else 0):
        service.create_variable(f"emb{k}", shape=(rows, DIM))
        service.apply("Adamax", [Gradient.dense(f"emb{k}", gradient[:rows])])
    service.create_table("items", dim=DIM)
    for lo in range(0, len(keys), 65536):
        part = keys[lo : lo + 65536]
        grads = [Gradient.sparse("items", part, gradient[: len(part)])]
        service.apply("Adamax", grads, step=step)


def stall_during(service: ParameterService, run: Callable) -> tuple[dict, object]:
    """4096-row pushes from another thread for 1 s, then while ``run()`` runs."""
    rows = service.variable("emb0").shape[0]
    ids = np.unique(np.random.default_rng(1).integers(0, rows, 4096))
    grads = [Gradient.sparse("emb0", ids, np.full((len(ids), DIM), 0.01, np.float32))]
    times, stop = [], threading.Event()

    def push() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            service.apply("Adamax", grads)
            times.append((start, time.perf_counter()))

    (thread := threading.Thread(target=push)).start()
    time.sleep(1.0)
    began = time.perf_counter()
    result = run()
    stop.set()
    thread.join()
    during = [end - start for start, end in times if end > began]
    before = [end - start for start, end in times if end <= began]
    return {
        "p50_ms_before": statistics.median(before) * 1e3,
        "longest_ms_during": max(during) * 1e3,
        "pushes_during": len(during),
    }, result


def checkpoint_restore(folder: Path, gigabytes: float, rows: int, rounds: int) -> dict:
    """Checkpoint write and restore (page cache dropped) of each kind of state;
    for the variables also a plain file's and a push's time during a write."""
    found, where = {}, folder / "state"
    for kind, size, keys in (("variables", gigabytes, 0), ("table", 0, rows)):
        service, plain, times = new_service(where), [], {"write": [], "restore": []}
        fill(service, size, np.arange(keys, dtype=np.int64) * 7919)
        same = np.full(int(size * GB) // 4, 0.5, np.float32)
        for k in range(rounds):
            plain += [plain_file(folder, same)] if size else []
            if k == 0 and size:
                stall, info = stall_during(service, service.checkpoint)
            else:
                info = service.checkpoint()
            times["write"].append(info.seconds)
            evict(*where.rglob("*.bin"))  # the next read is the disk's
            restored = new_service(where, optimizer=False)
            started = time.perf_counter()
            restored.restore()
            times["restore"].append(time.perf_counter() - started)
            restored.close()
        service.close()
        found[kind] = {"state_bytes": info.nbytes}
        for step, seconds in times.items():
            found[kind][f"{step}_seconds"] = spread(seconds)
            found[kind][f"{step}_gb_per_s"] = info.nbytes / np.median(seconds) / GB
        if plain:
            for key in plain[0]:
                found[kind][f"plain_file_{key}"] = spread([p[key] for p in plain])
            found[kind] |= {f"push_{key}": value for key, value in stall.items()}
        shutil.rmtree(where, ignore_errors=True)
    return found


def count_reads(nbytes: dict) -> Callable[[], object]:
    """Count into ``nbytes`` (by kind) the bytes ``CheckpointReader`` reads
    and checks: the chunks holding the rows wanted (whole chunks, for their
    crc32s). Returns the undo."""
    saved = {m: getattr(CheckpointReader, m) for m in ("read_into", "read_ranges")}
    for name, method in saved.items():

        def read(reader, entry, targets, method=method):
            kind = "table" if entry.get("kind") == "table" else "variables"
            before = reader.bytes_read
            method(reader, entry, targets)
            nbytes[kind] = nbytes.get(kind, 0) + reader.bytes_read - before

        setattr(CheckpointReader, name, read)
    return lambda: [setattr(CheckpointReader, *item) for item in saved.items()]


def resize(folder: Path, rows: int, keys: int, rounds: int) -> dict:
    """A 2-server cut (a split (rows, 64) variable with slots, a hash-keyed
    table) imported by each server of a 3-server cluster in turn."""
    olds = [folder / f"old-{i}" for i in range(2)]
    ranges = place_rows("emb", (rows, DIM), 4, 2, SPLIT)
    all_keys = np.arange(keys, dtype=np.int64) * 7919
    owner = server_of(all_keys, 2)
    cut = 0
    for i, lo, hi in ranges:
        old, shape = new_service(olds[i], i, 2), (hi - lo, DIM)
        old.create_variable("emb", shape=shape, global_shape=(rows, DIM), row_offset=lo)
        share = [Gradient.dense("emb", np.full(shape, 0.01, np.float32))]
        old.apply("Adamax", share, PushId("w", 0), step=0)
        fill(old, 0, all_keys[owner == i], step=0)
        cut += old.checkpoint().nbytes
        old.close()
    moved_rows = rows - kept(ranges, place_rows("emb", (rows, DIM), 4, 3, SPLIT))
    moved_keys = np.count_nonzero(server_of(all_keys, 3) != owner)
    variables = rows * DIM * 4 * 3
    sums: list[dict] = []
    for _, index in itertools.product(range(rounds), range(3)):
        sums += [] if index else [{"held": 0, "seconds": 0, "import_seconds": 0}]
        evict(*folder.rglob("*.bin"))
        undo, service = count_reads(sums[-1]), new_service(folder / "new", index, 3, 0)
        try:
            started = time.perf_counter()
            info = service.import_cut(olds)
            seconds = time.perf_counter() - started
        finally:
            undo()
            service.close()
        sums[-1]["held"] += info.nbytes
        sums[-1]["seconds"] += seconds
        sums[-1]["import_seconds"] += seconds - info.seconds
        shutil.rmtree(folder / "new", ignore_errors=True)
    m = {key: statistics.median(s[key] for s in sums) for key in sums[0]}
    table = cut - variables
    return {
        "cut_bytes": cut,
        "variable_bytes": variables,
        "table_bytes": table,
        "moved_bytes": moved_rows * DIM * 12 + moved_keys * table / keys,
        "variable_rows_moved": moved_rows / rows,
        "keys_moved": moved_keys / keys,
        **{f"new_servers_{key}": value for key, value in m.items()},
        "table_read_over_table": m["table"] / table,
        "variable_read_over_variable": m["variables"] / variables,
        "read_gb_per_s": (m["table"] + m["variables"]) / m["import_seconds"] / GB,
        "held_gb_per_s": m["held"] / m["import_seconds"] / GB,
        "held_gb_per_s_with_checkpoint": m["held"] / m["seconds"] / GB,
        "import_seconds": spread([s["import_seconds"] for s in sums]),
    }


def ledger(clients: int, copies: int) -> dict:
    """The exactly-once memory of ``clients`` workers (1024 answers each) as a
    checkpoint's manifest holds it; the merge of ``copies`` servers' of it."""
    answers = [[10**6 + s, PUSH, "Adamax", 10**7 + s, 10**7 + s] for s in range(1024)]
    entry = {"floor": 10**6, "answers": answers}
    text = json.dumps({"clients": {f"{c:032x}": entry for c in range(clients)}})
    before, started = rss(), time.perf_counter()
    loaded = [{**json.loads(text), "forgotten": 0} for _ in range(copies)]
    loads, parsed = time.perf_counter() - started, rss() - before
    started, each = time.perf_counter(), clients * 1024 * copies
    merged_ledger(loaded, SPLIT)
    return {
        "answers_per_server": clients * 1024,
        "json_bytes_per_answer": len(text) / (clients * 1024),
        "parsed_bytes_per_answer": parsed / each,
        "loads_us_per_answer": loads / each * 1e6,
        "merge_us_per_answer": (time.perf_counter() - started) / each * 1e6,
    }


# Output -------------------------------------------------------------------------


def text(value) -> str:
    if isinstance(value, dict):  # a spread: median [min-max] of the rounds
        return "{median:.4g} [{min:.4g}-{max:.4g}]".format(**value)
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.5g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def render(doc: dict) -> str:
    """Every figure of the JSON: a table for each group of like records."""
    out = [f"Scaling model ({doc['machine']['cores']} cores, {doc['seconds']:.0f} s"]
    out[0] += "; `python bench/scaling_model.py`). Spreads: median [min-max].\n"

    def scalar(value) -> bool:
        return not isinstance(value, dict) or set(value) == SPREAD

    def walk(title: str, node: dict) -> None:
        nested = {k: v for k, v in node.items() if not scalar(v)}
        if len(nested) < len(node):
            pairs = [f"{k} {text(v)}" for k, v in node.items() if scalar(v)]
            out.append(f"**{title}**: " + "; ".join(pairs) + "\n")
        columns = list(dict.fromkeys(c for v in nested.values() for c in v))
        flat = all(scalar(x) for v in nested.values() for x in v.values())
        if nested and flat and len(columns) <= 2 + max(map(len, nested.values())):
            out.append(f"| {title} | " + " | ".join(columns) + " |")
            out.append("|---" + "|---:" * len(columns) + "|")
            for name, row in nested.items():
                cells = [text(row[c]) if c in row else "" for c in columns]
                out.append(f"| {name} | " + " | ".join(cells) + " |")
            out.append("")
        else:
            for name, child in nested.items():
                walk(f"{title}: {name}", child)

    for part in ("simulation", "measured"):
        for name, node in doc[part].items():
            walk(name, node)
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller samples, state")
    parser.add_argument("--results", type=Path, default=RESULTS, help="output folder")
    args = parser.parse_args()
    gigabytes, sample = (0.25, 10**6) if args.quick else (1.0, 10**7)
    rows, resize_rows = int(gigabytes * 10**6), max(int(gigabytes * 10**6), 300_000)
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GB
    if free < 7 * gigabytes:
        raise SystemExit(f"{free:.1f} GB free: this run needs {7 * gigabytes:.0f} GB")
    rng, started = np.random.default_rng(0), time.perf_counter()
    simulation = {
        "balance over 100 servers and over shards": balance(rng, sample),
        "Zipf access load over 100 servers": access_load(sample),
        "a training step over the servers": batches(rng, 30),
        "data moved, 100 -> 110 servers": moves(rng, sample),
    }
    folder = Path(tempfile.mkdtemp(prefix="adamax-ps-scaling-"))
    try:
        measured = {
            "exactly-once ledger": ledger(100, 4),
            "checkpoint": checkpoint_restore(folder, gigabytes, rows, 3),
            "resize 2 -> 3 servers": resize(folder, resize_rows, rows // 2, 2),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    doc = {"machine": machine(), "seconds": time.perf_counter() - started}
    doc |= {"free_gb": free, "simulation": simulation, "measured": measured}
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / "scaling_model.json"
    path.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    markdown = render(json.loads(path.read_text()))
    (args.results / "scaling_model.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
