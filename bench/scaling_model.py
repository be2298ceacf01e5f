"""Scaling model: 100-server placement simulated; checkpoint and resize rates measured.

Simulated with the real ``common.keys.server_of``/``shard_of`` and
``common.placement.place_rows`` (no servers): 10^10 hash keys over 100
servers from a 10^7-key sample, the load of Zipf accesses (whole and per
training batch), the data moved when 10 servers join 100, keys over shards.
Measured in-process (``ParameterService``, 2 shards): checkpoint write and
restore of about 1 GB of variables with slots (beside a plain file) and of a
1e6-row table, a push's longest wait during the write; a 2-server cut
imported by 3 servers (``import_cut``), bytes read against bytes kept; the
exactly-once ledger's size and merge cost; the protobuf bytes of a step.

Usage: ``python bench/scaling_model.py [--quick] [--results DIR]``; writes
``bench/results/scaling_model.json`` and ``scaling_model.md`` (from the JSON).
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
from adamax_ps.server.cut_import import CLUSTER_SPLIT_BYTES, merged_ledger
from adamax_ps.server.gradients import Gradient
from adamax_ps.server.ledger import PUSH, PushId
from adamax_ps.server.service import ParameterService, ServiceSettings

RESULTS = Path(__file__).resolve().parent / "results"
KEYS, SERVERS, ADDED, DIM, GB = 10**10, 100, 10, 64, 1e9
BATCH_IDS = 1024 * 8  # the training benchmark's batch: 1024 examples x 8 ids
SPLIT = CLUSTER_SPLIT_BYTES


def ratio(counts: np.ndarray) -> dict:
    mean = counts.mean()
    return {"max_over_mean": counts.max() / mean, "min_over_mean": counts.min() / mean}


def random_max(per_owner: float, owners: int) -> float:
    """max/mean of ``owners`` counts of ``per_owner`` each placed at random:
    mean + 2.5 standard deviations (about the largest of 100)."""
    return 1 + 2.5 * float(np.sqrt((1 - 1 / owners) / per_owner))


def zipf(rng, a: float, n: int, top: int = KEYS) -> np.ndarray:
    """``n`` Zipf(a) ranks at most ``top``, as keys ``rank - 1``."""
    out = rng.zipf(a, int(n * 1.1) + 1000)
    return (out[out <= top][:n] - 1).astype(np.int64)


def uniform(rng, n: int) -> np.ndarray:
    return rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)


def per_server(keys: np.ndarray, servers: int = SERVERS) -> np.ndarray:
    return np.bincount(server_of(keys, servers), minlength=servers)


# Simulation ---------------------------------------------------------------------


def balance(rng, sample: int) -> dict:
    """Keys and accesses per server, ``sample`` keys standing in for 10^10."""
    draws = zipf(rng, 1.2, sample)
    cases = {
        "uniform random int64 keys": per_server(uniform(rng, sample)),
        "sequential ids 0..n-1": per_server(np.arange(sample, dtype=np.int64)),
        "Zipf(1.2) ids: distinct keys": per_server(np.unique(draws)),
        "Zipf(1.2) ids: accesses": per_server(draws),
    }
    return {
        "sample_keys": sample,
        "cases": {name: ratio(counts) for name, counts in cases.items()},
        "random_sample": random_max(sample / SERVERS, SERVERS),
        "random_1e10": random_max(KEYS / SERVERS, SERVERS),
    }


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


def batches(rng, count: int) -> dict:
    """Per training step (the client sums duplicate ids first): unique rows,
    servers touched, the busiest server's rows against the mean, and the
    coordinator's calls (it is in every step) against an average server's."""
    found = {}
    for ids in (512, BATCH_IDS, 65536):
        steps = []
        for _ in range(count):
            counts = per_server(np.unique(zipf(rng, 1.2, ids)))
            touched = np.count_nonzero(counts)
            steps.append((counts.sum(), touched, counts.max() / counts.mean()))
        unique, touched, busiest = np.mean(steps, axis=0)
        found[str(ids)] = {
            "unique_rows": unique,
            "servers_touched": touched,
            "busiest_over_mean_rows": busiest,
            "coordinator_calls_over_mean": SERVERS / touched,
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
    keys = uniform(rng, sample)
    after = server_of(keys, grown)
    moved = server_of(keys, SERVERS) != after
    old = place_rows("items", (KEYS, DIM), 4, SERVERS, SPLIT)
    new = place_rows("items", (KEYS, DIM), 4, grown, SPLIT)
    crc = np.array([zlib.crc32(f"layer_{i}/kernel".encode()) for i in range(10_000)])
    # The fix: a variable's rows in 65536 fixed blocks, each placed like a key.
    blocks = (zlib.crc32(b"items") << 20) + np.arange(1 << 16, dtype=np.int64)
    return {
        "ideal": ADDED / grown,
        "jump hash keys (tables)": {
            "moved": moved.mean(),
            "between_old_servers": int(np.count_nonzero(moved & (after < SERVERS))),
        },
        "split variable row ranges (place_rows)": {
            "moved": 1 - kept(old, new) / KEYS,
            "owners_keeping_rows": sum(bool(kept([o], new)) for o in old),
        },
        "whole variables, crc32(name) % n": {"moved": np.mean(crc % 100 != crc % 110)},
        "fix: 65536 fixed row blocks, jump hash": {
            "moved": np.mean(server_of(blocks, SERVERS) != server_of(blocks, grown)),
            **ratio(per_server(blocks, grown)),
        },
    }


def shards(rng, sample: int) -> dict:
    """One server's keys over its shards (``shard_of``)."""
    keys = uniform(rng, sample)
    mine = keys[server_of(keys, SERVERS) == 0]
    found = {}
    for n in (2, 4, 16, 64):
        found[str(n)] = {
            **ratio(np.bincount(shard_of(mine, n), minlength=n)),
            "random_sample": random_max(len(mine) / n, n),
            "random_1e8_per_server": random_max(KEYS / SERVERS / n, n),
        }
    return {"keys_on_server": len(mine), "shards": found}


# Measurements -------------------------------------------------------------------


def drop_cache(folder: Path) -> None:
    """Drop a folder's files from the page cache: the next read is the disk's."""
    evict(*(path for path in folder.rglob("*") if path.is_file()))


def new_service(folder: Path, index=0, servers=1, optimizer=True) -> ParameterService:
    where = {"server_index": index, "num_servers": servers}
    service = ParameterService(ServiceSettings(2, checkpoint_dir=folder, **where))
    if optimizer:
        service.create_optimizer({})
    return service


def fill(service: ParameterService, gigabytes: float, keys, step=None) -> None:
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


def table_keys(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) * 7919 - 10**12


def stall_during(service: ParameterService, run) -> tuple[dict, object]:
    """4096-row pushes from another thread for 1 s, then while ``run()`` runs."""
    rng = np.random.default_rng(1)
    rows = service.variable("emb0").shape[0]
    ids = [np.unique(rng.integers(0, rows, 4096)) for _ in range(8)]
    values = np.full((4096, DIM), 0.01, np.float32)
    phase, times, stop = ["before"], {"before": [], "during": []}, threading.Event()

    def push() -> None:
        while not stop.is_set():
            rows = ids[len(times[phase[0]]) % 8]
            grads = [Gradient.sparse("emb0", rows, values[: len(rows)])]
            start = time.perf_counter()
            service.apply("Adamax", grads)
            times[phase[0]].append(time.perf_counter() - start)

    thread = threading.Thread(target=push)
    thread.start()
    time.sleep(1.0)
    phase[0] = "during"
    result = run()
    stop.set()
    thread.join()
    return {
        "p50_ms_before": statistics.median(times["before"]) * 1e3,
        "longest_ms_during": max(times["during"], default=0.0) * 1e3,
        "pushes_during": len(times["during"]),
    }, result


def checkpoint_restore(folder: Path, gigabytes: float, rows: int, rounds: int) -> dict:
    """Checkpoint write and restore (page cache dropped) of each kind of state;
    for the variables, a plain file of the same bytes written (fsync) and read
    in each round, and pushes timed during the first write."""
    found = {}
    for kind in ("variables", "table"):
        where = folder / kind
        service = new_service(where)
        if kind == "variables":
            fill(service, gigabytes, table_keys(0))
        else:
            fill(service, 0, table_keys(rows))
        writes, restores, plain, stall = [], [], [], None
        for k in range(rounds):
            if kind == "variables":
                same = np.full(int(gigabytes * GB) // 4, 0.5, np.float32)
                plain.append(plain_file(folder, same))
                del same
            if k == 0 and kind == "variables":
                stall, info = stall_during(service, service.checkpoint)
            else:
                info = service.checkpoint()
            writes.append(info.seconds)
            drop_cache(where)
            restored = new_service(where, optimizer=False)
            started = time.perf_counter()
            restored.restore()
            restores.append(time.perf_counter() - started)
            restored.close()
            del restored
        service.close()
        del service
        found[kind] = {
            "state_bytes": info.nbytes,
            "write_seconds": spread(writes),
            "restore_seconds": spread(restores),
            "write_gb_per_s": info.nbytes / statistics.median(writes) / GB,
            "restore_gb_per_s": info.nbytes / statistics.median(restores) / GB,
        }
        if plain:
            for key in plain[0]:
                found[kind][f"plain_{key}"] = spread([p[key] for p in plain])
            found[kind]["push_during_checkpoint"] = stall
        shutil.rmtree(where, ignore_errors=True)
    return found


def count_reads(nbytes: dict) -> Callable[[], object]:
    """Count into ``nbytes`` (by kind) the bytes ``CheckpointReader`` reads: a
    whole array even for part of it (its crc32). Returns the undo."""
    saved = {m: getattr(CheckpointReader, m) for m in ("read_into", "read_ranges")}
    for name, method in saved.items():

        def read(reader, entry, targets, method=method):
            kind = "table" if entry.get("kind") == "table" else "variables"
            nbytes[kind] = nbytes.get(kind, 0) + entry["nbytes"]
            return method(reader, entry, targets)

        setattr(CheckpointReader, name, read)
    return lambda: [setattr(CheckpointReader, *item) for item in saved.items()]


def resize(folder: Path, rows: int, keys: int, rounds: int) -> dict:
    """A 2-server cut (a split (rows, 64) variable with slots, a hash-keyed
    table) imported by each server of a 3-server cluster in turn."""
    olds = [folder / f"old-{i}" for i in range(2)]
    ranges = place_rows("emb", (rows, DIM), 4, 2, SPLIT)
    all_keys = table_keys(keys)
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
    sums = []
    for k, index in itertools.product(range(rounds), range(3)):
        total = sums[-1] if index else {}
        sums += [] if index else [total]
        drop_cache(folder)
        undo, service = (
            count_reads(total),
            new_service(folder / f"new-{k}", index, 3, 0),
        )
        try:
            started = time.perf_counter()
            info = service.import_cut(olds)
            seconds = time.perf_counter() - started
        finally:
            undo()
            service.close()
        for key, value in (("held", info.nbytes), ("seconds", seconds)):
            total[key] = total.get(key, 0) + value
        total["import_seconds"] = (
            total.get("import_seconds", 0) + seconds - info.seconds
        )
        shutil.rmtree(folder / f"new-{k}", ignore_errors=True)
    m = {key: statistics.median(s[key] for s in sums) for key in sums[0]}
    read = m["table"] + m["variables"]
    return {
        "cut_bytes": cut,
        "variable_bytes": variables,
        "table_bytes": cut - variables,
        "moved_bytes": moved_rows * DIM * 12 + moved_keys * (cut - variables) / keys,
        "moved_fraction": {
            "variable rows": moved_rows / rows,
            "keys": moved_keys / keys,
        },
        "all_new_servers": m,
        "read_over_held": read / m["held"],
        "table_read_over_table": m["table"] / (cut - variables),
        "variable_read_over_variable": m["variables"] / variables,
        "read_gb_per_s": read / m["import_seconds"] / GB,
        "held_gb_per_s": m["held"] / m["import_seconds"] / GB,
        "held_gb_per_s_with_checkpoint": m["held"] / m["seconds"] / GB,
        "import_seconds_rounds": spread([s["import_seconds"] for s in sums]),
    }


def ledger(clients: int, copies: int) -> dict:
    """The exactly-once memory of ``clients`` workers (1024 answers each) as a
    checkpoint's manifest holds it; the merge of ``copies`` servers' of it."""
    answers = [[10**6 + s, PUSH, "Adamax", 10**7 + s, 10**7 + s] for s in range(1024)]
    entry = {"floor": 10**6, "answers": answers}
    snapshot = {"clients": {f"{c:032x}": entry for c in range(clients)}}
    text = json.dumps({**snapshot, "forgotten": 0})
    before, started = rss(), time.perf_counter()
    loaded = [json.loads(text) for _ in range(copies)]
    loads, parsed = time.perf_counter() - started, rss() - before
    started = time.perf_counter()
    merged_ledger(loaded)
    each = clients * 1024 * copies
    return {
        "answers": clients * 1024,
        "json_bytes_per_answer": len(text) / (clients * 1024),
        "parsed_bytes_per_answer": parsed / each,
        "loads_us_per_answer": loads / each * 1e6,
        "merge_us_per_answer": (time.perf_counter() - started) / each * 1e6,
    }


def call(server: int, servers: int, push, read, dense: bool) -> tuple[int, int, int]:
    """(request, answer, tensor) bytes of one server's share of a step."""
    zero = np.zeros((max(len(push), len(read), DIM), DIM), np.float32)
    grads = [pb.Gradient(variable="items", values=codec.encode(zero[: len(push)]))]
    grads[0].indices.CopyFrom(codec.encode(push))
    reads = [pb.ReadRequest(variable="items", rows=codec.encode(read))]
    values = [codec.encode(zero[: len(read)])]
    for name, n in (("dense/kernel", DIM), ("dense/bias", 1))[: 2 * dense]:
        grads.append(pb.Gradient(variable=name, values=codec.encode(zero[:n, :1])))
        reads.append(pb.ReadRequest(variable=name))
        values.append(codec.encode(zero[:n, :1]))
    request = pb.ApplyRequest(
        view=pb.ClusterView(server_index=server, num_servers=servers),
        optimizer="Adamax",
        push_id=pb.PushId(client="0" * 32, sequence=10**6),
        gradients=grads,
        step=10**7,
        call_variables=["items", "dense/kernel", "dense/bias"],
        reads=reads,
        reserve_next=server == 0,
        step_reserved_ahead=server == 0,
    )
    answer = pb.ApplyResponse(step=10**7, iterations=10**7, values=values)
    if server == 0:
        answer.next_step = 10**7 + 1
    tensors = [t for g in grads for t in (g.values, g.indices)]
    tensors += values + [r.rows for r in reads]
    return request.ByteSize(), answer.ByteSize(), sum(len(t.data) for t in tensors)


def wire(rng, count: int) -> dict:
    """Protobuf bytes of a training step (1024 x 8 Zipf ids, 64 float32): each
    server's ApplyRequest (its unique rows' gradients, the dense layer's on its
    server, the next batch's rows to read) and its answer."""
    found = {}
    for servers, top in ((1, 10**6), (SERVERS, KEYS)):
        steps = []
        dense_on = zlib.crc32(b"dense/kernel") % servers
        for _ in range(count):
            push, read = (np.unique(zipf(rng, 1.2, BATCH_IDS, top)) for _ in range(2))
            on, read_on = server_of(push, servers), server_of(read, servers)
            sizes = [
                call(s, servers, push[on == s], read[read_on == s], s == dense_on)
                for s in range(servers)
            ]
            steps.append([len(push), len(sizes), *np.sum(sizes, axis=0)])
        unique, calls, request, answer, tensors = np.mean(steps, axis=0)
        found[str(servers)] = {
            "unique_rows": unique,
            "calls": calls,
            "request_bytes": request,
            "response_bytes": answer,
            "overhead_bytes_per_call": (request + answer - tensors) / calls,
        }
    return found


# Output -------------------------------------------------------------------------


def text(value) -> str:
    if isinstance(value, dict):  # a spread: median [min-max] of the rounds
        return "{median:.4g} [{min:.4g}-{max:.4g}]".format(**value)
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def render(doc: dict) -> str:
    """Every figure of the JSON: a table for each set of like records."""
    out = [
        f"Scaling model ({doc['machine']['cores']} cores, {doc['seconds']:.0f} s; "
        "`python bench/scaling_model.py`): simulation of 100 servers through the "
        "real placement code, and in-process measurements (2 shards, page cache "
        "dropped before reads; spreads are median [min-max] of the rounds).\n"
    ]

    def walk(title: str, node: dict) -> None:
        spread_keys = {"median", "min", "max", "n"}
        plain = {k: v for k, v in node.items() if not isinstance(v, dict)}
        plain |= {k: v for k, v in node.items() if set(v or ()) == spread_keys}
        nested = {k: v for k, v in node.items() if k not in plain}
        if plain:
            out.append(
                f"**{title}**: "
                + "; ".join(f"{k} {text(v)}" for k, v in plain.items())
                + "\n"
            )
        if nested and all(
            not isinstance(x, dict) or set(x) == spread_keys
            for v in nested.values()
            for x in v.values()
        ):
            columns = list(dict.fromkeys(c for v in nested.values() for c in v))
            out.append(f"| {title} | " + " | ".join(columns) + " |")
            out.append("|---" + "|---:" * len(columns) + "|")
            for name, row in nested.items():
                cells = [text(row[c]) if c in row else "" for c in columns]
                out.append(f"| {name} | " + " | ".join(cells) + " |")
            out.append("")
        else:
            for name, child in nested.items():
                walk(f"{title} / {name}", child)

    for part in ("simulation", "measured"):
        for name, node in doc[part].items():
            walk(f"{part} / {name}", node)
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller samples, state")
    parser.add_argument("--results", type=Path, default=RESULTS, help="output folder")
    args = parser.parse_args()
    sample, gigabytes, rows, resize_rows = (
        (10**6, 0.25, 200_000, 300_000) if args.quick else (10**7, 1.0, 10**6, 10**6)
    )
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GB
    if free < 7 * gigabytes:
        raise SystemExit(f"{free:.1f} GB free: this run needs {7 * gigabytes:.0f} GB")
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    simulation = {
        "balance": balance(rng, sample),
        "access_load": access_load(sample),
        "batches": batches(rng, 50),
        "moves": moves(rng, sample),
        "shards": shards(rng, sample),
    }
    folder = Path(tempfile.mkdtemp(prefix="adamax-ps-scaling-"))
    try:
        measured = {
            "ledger": ledger(100, 4),
            "checkpoint": checkpoint_restore(folder, gigabytes, rows, 3),
            "resize": resize(folder, resize_rows, rows // 2, 2),
            "wire": wire(rng, 10),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    doc = {
        "machine": machine(),
        "seconds": time.perf_counter() - started,
        "free_gb_before": free,
        "simulation": simulation,
        "measured": measured,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / "scaling_model.json"
    path.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    text = render(json.loads(path.read_text()))
    (args.results / "scaling_model.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
