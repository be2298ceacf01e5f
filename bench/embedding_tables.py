"""Embedding-table benchmark: hash-keyed tables against fixed rows and hash maps.

Side by side in one run, interleaved round by round in a rotated order
(medians with the [min-max] of the rounds, ratios taken round by round):

1. gather and push of 8192 Zipf keys (exponent 1.1) x 64 float32 into a keyed
   table holding 1e6 of 1e8 possible keys (every pushed key already has a
   row), against the same rows of a fixed 1e6 x 64 variable by row id: over
   gRPC to a real ``adamax-ps serve`` and in-process (``ParameterService``);
2. the same keys looked up in a table of 1e6 keys: TensorFlow's
   MutableHashTable and DenseHashTable (eager ops on int64 tensors, in a
   child process), a Python dict (list comprehension, ``np.fromiter``) and
   the server's numba index (``TablePart.rows_of``); the insert of 8192 new
   keys; the gather of 64 floats per key;
3. and 4. (``bench/embedding_capacity.py``): memory per row at 1e6 and 1e7
   rows against 768 B, and pushes into tables at their capacity while the
   background evictor runs.

Usage: ``python bench/embedding_tables.py [--json] [--quick] [--update-readme]``;
writes ``bench/results/embedding_tables.json`` and its rendering
``embedding_tables.md`` (``bench/tables_embedding.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from embedding_capacity import (
    BATCH,
    CHUNK,
    DIM,
    HELD,
    SEED,
    SPACE,
    eviction,
    fill,
    interleave,
    memory,
    pusher,
    service,
    spread,
    zipf_ranks,
)
from measure import Child, machine, quiet_tensorflow, serve_commands

RESULTS = Path(__file__).resolve().parent / "results"
NBATCH = 8
NORMAL = "random_normal"  # the fixed rows' pages are real, as a table's rows are


def inputs() -> dict:
    """Held keys (1e6 of [0, 1e8)), the batches' row ids and keys, 8192 new
    keys, one gradient and the rows' values: the same in every process."""
    rng = np.random.default_rng(SEED)
    drawn = np.unique(rng.integers(0, SPACE, size=HELD + HELD // 8))
    held = rng.permutation(drawn)[:HELD]
    order = rng.permutation(HELD)  # rank -> row: hot rows are not adjacent
    rows = [order[zipf_ranks(rng, BATCH, HELD)] for _ in range(NBATCH)]
    new = rng.permutation(np.unique(rng.integers(SPACE, 2 * SPACE, 2 * BATCH)))
    return {
        "held": held,
        "rows": rows,
        "ids": {"fixed": rows, "keyed": [held[r] for r in rows]},
        "new": new[:BATCH],
        "g": rng.standard_normal((BATCH, DIM), dtype=np.float32) * np.float32(0.01),
        "values": rng.standard_normal((HELD, DIM), dtype=np.float32),
    }


def run_reps(op: Callable, undo: Callable | None, reps: int, r: int) -> float:
    """Median seconds of ``reps`` calls of ``op(batch)`` (``undo`` untimed)."""
    times = []
    for i in range(reps):
        k = (max(r, 0) * reps + i) % NBATCH
        start = time.perf_counter()
        op(k)
        times.append(time.perf_counter() - start)
        if undo is not None:
            undo()
    return statistics.median(times)


def timed(op: Callable, reps: int, undo: Callable | None = None):
    return lambda r: run_reps(op, undo, reps, r)


# Part 1: pushes and gathers, fixed rows against keys ----------------------------------


def push_rows(address: str, data: dict, reps: int) -> tuple[dict, list, int]:
    """``{transport} {fixed|keyed} {push|gather}`` rows, what to close, and
    the shards of each server."""
    from adamax_ps.client import Adamax, IndexedSlices, connect

    cluster = connect(address)
    opt = Adamax(cluster=cluster)
    local = service()
    remote = {
        "fixed": cluster.variable("fixed", shape=(HELD, DIM), initializer=NORMAL),
        "keyed": cluster.embedding_table("keyed", DIM),
    }
    local.create_variable("fixed", shape=(HELD, DIM), initializer=NORMAL)
    local.create_table("keyed", dim=DIM)
    local_push = {name: pusher(local, name) for name in remote}
    pushes = {
        "grpc": lambda name, ids, g: opt.apply_gradients(
            [(IndexedSlices(g, ids), remote[name])]
        ),
        "local": lambda name, ids, g: local_push[name](ids, g),
    }
    gathers = {
        "grpc": lambda name, ids: remote[name].gather(ids),
        "local": lambda name, ids: (
            local.gather(name, ids) if name == "fixed" else local.gather_keys(name, ids)
        ),
    }
    rows = {}
    for transport, push in pushes.items():
        fill(lambda k, v, p=push: p("keyed", k, v), data["held"])
        for name, ids in data["ids"].items():
            push(name, ids[0], data["g"])  # the fixed rows' slots
            rows[f"{transport} {name} push"] = timed(
                lambda k, p=push, n=name, i=ids: p(n, i[k], data["g"]), reps
            )
            rows[f"{transport} {name} gather"] = timed(
                lambda k, f=gathers[transport], n=name, i=ids: f(n, i[k]), reps
            )
    return rows, [cluster.close, local.close], local.store.num_shards


# Part 2: the same keys in hash maps ---------------------------------------------------


def anchor_rows(data: dict, reps: int) -> tuple[dict, list]:
    """A dict, numpy and our index, on a one-shard table of the held keys."""
    from adamax_ps.server import hash_index

    s = service(shards=1)
    s.create_table("anchor", dim=DIM)
    held, values, new = data["held"], data["values"], data["new"]
    keys = data["ids"]["keyed"]
    for start in range(0, HELD, 4 * CHUNK):
        part = slice(start, start + 4 * CHUNK)
        s.assign_keys("anchor", held[part], values[part])
    part = s.store.shards[0].tables["anchor"]
    part.grow(part.high + BATCH)
    spare, out = np.arange(part.high, part.high + BATCH), np.empty(BATCH, np.int64)
    d = dict(zip(held.tolist(), range(HELD), strict=True))
    new_rows = list(zip(new.tolist(), range(HELD, HELD + BATCH), strict=True))

    def from_iter(k: int) -> np.ndarray:
        return np.fromiter((d.get(x, -1) for x in keys[k].tolist()), np.int64, BATCH)

    def insert(k: int) -> None:
        part.keys[spare] = new
        hash_index.insert_rows(part.index, part.keys, spare)

    def comprehension(k: int) -> np.ndarray:
        return np.array([d.get(x, -1) for x in keys[k].tolist()])

    ops = {
        "dict lookup, np.fromiter": (from_iter, None),
        "dict lookup, list comprehension": (comprehension, None),
        "adamax-ps lookup (TablePart.rows_of)": (lambda k: part.rows_of(keys[k]), None),
        "dict insert (dict.update)": (
            lambda k: d.update(new_rows),
            lambda: [d.pop(x) for x, _ in new_rows],
        ),
        "adamax-ps insert (hash_index.insert_rows)": (
            insert,
            lambda: hash_index.remove_keys(part.index, part.keys, new, out),
        ),
        "dict lookup + value[rows]": (lambda k: values[from_iter(k)], None),
        "numpy value[rows] by row id (fixed rows, no hashing)": (
            lambda k: values[data["rows"][k]],
            None,
        ),
        "adamax-ps gather (gather_keys, 1 shard)": (
            lambda k: s.gather_keys("anchor", keys[k]),
            None,
        ),
    }
    return {n: timed(op, reps, undo) for n, (op, undo) in ops.items()}, [s.close]


TF_ROWS = {
    "mutable_lookup": "TF MutableHashTable lookup",
    "dense_lookup": "TF DenseHashTable lookup",
    "mutable_insert": "TF MutableHashTable insert",
    "dense_insert": "TF DenseHashTable insert",
    "mutable_gather": "TF MutableHashTable lookup of float32[64]",
    "dense_gather": "TF DenseHashTable lookup of float32[64]",
}


def tf_child() -> None:
    """Child: TensorFlow's hash tables of the held keys, timed on command."""
    quiet_tensorflow()
    import tensorflow as tf

    data = inputs()
    held, lookup = tf.constant(data["held"]), tf.lookup.experimental
    empty = {"empty_key": -1, "deleted_key": -2}
    zeros = tf.zeros([DIM])
    ids = lookup.MutableHashTable(tf.int64, tf.int64, default_value=-1)
    dense = lookup.DenseHashTable(tf.int64, tf.int64, default_value=-1, **empty)
    vec = lookup.MutableHashTable(tf.int64, tf.float32, default_value=zeros)
    dvec = lookup.DenseHashTable(tf.int64, tf.float32, default_value=zeros, **empty)
    for table in (ids, dense):
        table.insert(held, tf.range(HELD, dtype=tf.int64))
    for start in range(0, HELD, 4 * CHUNK):
        part = slice(start, start + 4 * CHUNK)
        for table in (vec, dvec):
            table.insert(held[part], tf.constant(data["values"][part]))
    batches = [tf.constant(k) for k in data["ids"]["keyed"]]
    new = tf.constant(data["new"])
    new_ids = tf.range(HELD, HELD + BATCH, dtype=tf.int64)
    ops = {
        "mutable_lookup": (lambda k: ids.lookup(batches[k]), None),
        "dense_lookup": (lambda k: dense.lookup(batches[k]), None),
        "mutable_insert": (lambda k: ids.insert(new, new_ids), lambda: ids.remove(new)),
        "dense_insert": (
            lambda k: dense.insert(new, new_ids),
            lambda: dense.erase(new),
        ),
        "mutable_gather": (lambda k: vec.lookup(batches[k]), None),
        "dense_gather": (lambda k: dvec.lookup(batches[k]), None),
    }

    def time_row(row: str, reps: int, r: int) -> dict:
        return {"seconds": run_reps(*ops[row], reps, r)}

    serve_commands({"time": time_row, "version": lambda: {"tf": tf.__version__}})


# The run ------------------------------------------------------------------------------


def code() -> dict:
    """The commit measured, and the files of the package changed since."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        run = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return run.stdout.strip()

    changed = git("status", "--porcelain", "--", "server", "client", "common")
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "changed": [line.split(maxsplit=1)[-1] for line in changed.splitlines()],
    }


def measure(quick: bool) -> dict:
    from adamax_ps.common.malloc import tune_malloc
    from adamax_ps.server.launcher import start_cluster

    tune_malloc()
    rounds, reps, ev_rounds, ev_seconds = (3, 4, 2, 0.3) if quick else (9, 16, 4, 2.0)
    mem = memory(quick)  # first: nothing else holds memory yet
    data = inputs()
    closers: list[Callable[[], object]] = []
    with tempfile.TemporaryDirectory() as folder:
        try:
            (server,) = start_cluster(1, Path(folder), checkpoints=False)
            closers.append(server.stop)
            tf = Child(__file__, "--child", log=Path(folder) / "tf.log")
            closers.append(tf.close)
            tf.receive()
            rows, close, shards = push_rows(server.grpc_address, data, reps)
            closers += close
            pushes = interleave(rows, rounds)
            rows, close = anchor_rows(data, reps)
            closers += close
            for row, label in TF_ROWS.items():
                rows[label] = lambda r, row=row: tf.call(
                    "time", row=row, reps=reps, r=r
                )["seconds"]
            anchors = interleave(rows, rounds)
            versions = tf.call("version")
        finally:
            for close in reversed(closers):
                close()
    return {
        "machine": machine(),
        "code": code(),
        "tensorflow": versions["tf"],
        "shards": shards,
        "rounds": rounds,
        "reps": reps,
        "unique_keys": statistics.mean(len(np.unique(k)) for k in data["rows"]),
        "pushes": {name: spread(s) for name, s in pushes.items()},
        "anchors": {name: spread(s) for name, s in anchors.items()},
        "memory": mem,
        "eviction": eviction(ev_rounds, ev_seconds),
    }


def main() -> None:
    if sys.argv[1:] == ["--child"]:
        tf_child()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the headline")
    parser.add_argument("--quick", action="store_true", help="few rounds, small sizes")
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS, help="output folder")
    args = parser.parse_args()
    from readme import save, update_readme
    from tables_embedding import headline

    results = measure(args.quick)
    head = headline(results)
    table = save("embedding_tables", {"headline": head, **results}, args.results)
    if args.update_readme:
        update_readme("embedding_tables", args.results)
    print(json.dumps(head) if args.json else table)


if __name__ == "__main__":
    main()
