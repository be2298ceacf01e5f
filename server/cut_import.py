"""Starting a server of a resized cluster from the old cluster's checkpoints.

Checkpoints describe their content by global coordinates: each variable's
whole shape and the first row its server held (``row_offset``), each saved
array's row range, each table row's key. So server ``k`` of a cluster of
``M`` finds, in the newest checkpoint of every server of an old cluster of
``N``, exactly what it now owns (the rows the cluster's placement rule gives
it for ``M`` servers, the table keys ``common.keys`` gives it) and reads
those byte ranges straight into its arrays, each saved array checked against
its crc32. Optimizer configs, ``iterations`` and Keras's ``weights`` order
come from the old coordinator (server 0), which counts the steps; the
exactly-once ledgers of all old servers are merged, so a push acknowledged
before the resize is never applied again.

The old checkpoints must be one cut: the old cluster stopped (each server
writes a final checkpoint at SIGTERM) or paused by ``adamax-ps rescale``. An
old server whose write-ahead log holds changes after its newest checkpoint
is refused (start it once to replay and checkpoint it).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from adamax_ps.common.placement import place_rows
from adamax_ps.server import checkpoint, kept_rows, table_snapshot, wal
from adamax_ps.server.checkpoint import CheckpointReader
from adamax_ps.server.errors import CheckpointError
from adamax_ps.server.optimizer_state import OptimizerState
from adamax_ps.server.store import ShardedStore, VariableRecord

log = logging.getLogger("adamax_ps.service")

CLUSTER_SPLIT_BYTES = 64 << 20  # the clients' rule (client/placement.py)


def old_checkpoints(paths: list[Path]) -> list[CheckpointReader]:
    """The newest checkpoint of each old server, found under ``paths`` (its
    checkpoint folders, or folders holding them), one per server index."""
    roots: list[Path] = []
    for path in map(Path, paths):
        if checkpoint.checkpoints(path):
            roots.append(path)
        elif path.is_dir():
            roots += [p for p in sorted(path.iterdir()) if checkpoint.checkpoints(p)]
    if not roots:
        raise CheckpointError(f"no checkpoint under {', '.join(map(str, paths))}")
    readers = {}
    for root in roots:
        reader = CheckpointReader(checkpoint.latest(root))
        _check_log(root, reader)
        index = reader.manifest.get("server_index", 0)
        if index in readers:
            raise CheckpointError(
                f"{root} and {readers[index].path.parent} both hold server {index}"
            )
        readers[index] = reader
    sizes = {r.manifest.get("num_servers", 1) for r in readers.values()}
    count = sizes.pop() if len(sizes) == 1 else None
    if count is None or sorted(readers) != list(range(count)):
        found = sorted(
            (i, r.manifest.get("num_servers", 1)) for i, r in readers.items()
        )
        raise CheckpointError(
            "--restore-from needs the checkpoints of every server of one cluster; "
            f"found (server, of servers): {found}"
        )
    return [readers[i] for i in range(count)]


def _check_log(root: Path, reader: CheckpointReader) -> None:
    """Refuse an old server whose log holds changes its checkpoint lacks."""
    folder = root / "wal"
    if not folder.is_dir():
        return
    since = int(reader.manifest.get("wal_segment", 0))
    for _ in wal.read(folder, since):
        raise CheckpointError(
            f"{folder} holds changes made after checkpoint {reader.path}: start "
            "that server once (it replays its log) and stop it, then restore"
        )


def import_cut(
    store: ShardedStore,
    readers: list[CheckpointReader],
    server_index: int,
    num_servers: int,
    split_bytes: int = CLUSTER_SPLIT_BYTES,
    held: dict[str, kept_rows.Held] | None = None,
) -> tuple[dict[str, OptimizerState], dict[str, Any], int]:
    """Fill an empty store with what server ``server_index`` of
    ``num_servers`` owns of the old cluster's cut; returns (optimizers,
    merged ledger, bytes read). ``held``: the variables this server held in
    the cut, still in memory (an old server of an online rescale): the rows
    it keeps stay where they are (``kept_rows``)."""
    nbytes = 0
    saved: dict[str, list[tuple[CheckpointReader, dict]]] = {}
    records: dict[str, dict] = {}
    for reader in readers:
        for item in reader.manifest["variables"]:
            records.setdefault(item["name"], item)
        for entry in reader.manifest["arrays"]:
            if entry["kind"] in ("value", "slot"):
                saved.setdefault(entry["variable"], []).append((reader, entry))
    offsets = {  # the first global row each old server held of a variable
        (id(r), v["name"]): int(v.get("row_offset", 0))
        for r in readers
        for v in r.manifest["variables"]
    }
    for name, item in records.items():
        nbytes += _import_variable(
            store,
            item,
            saved.get(name, []),
            offsets,
            (server_index, num_servers, split_bytes),
            (held or {}).get(name),
        )
    for reader in readers:
        nbytes += table_snapshot.load(
            store, reader, server_index, num_servers, own=False
        )
    coordinator = readers[0]
    weights: dict[str, dict[str, np.ndarray]] = {}
    for entry in coordinator.manifest["arrays"]:
        if entry["kind"] == "weight":
            weights.setdefault(entry["optimizer"], {})[entry["name"]] = (
                coordinator.read(entry)
            )
    optimizers = {}
    for data in coordinator.manifest["optimizers"]:
        state = OptimizerState.from_json(data, weights.get(data["config"]["name"], {}))
        state.slotted = _slotted_here(store, state.name)
        state.next_step = state.iterations
        optimizers[state.name] = state
    ledgers = [r.manifest["ledger"] for r in readers]
    return optimizers, merged_ledger(ledgers, split_bytes), nbytes


def _import_variable(store, item, entries, offsets, layout, held=None) -> int:
    """Create this server's slices of one variable (``layout``: its index,
    the cluster's size, the split rule) and read their rows; bytes read.
    Rows ``held`` in memory (``kept_rows.Held``) stay there."""
    server_index, num_servers, split = layout
    global_shape = tuple(item["global_shape"])
    dtype = np.dtype(item["dtype"])
    row_bytes = dtype.itemsize * math.prod(global_shape[1:])
    nbytes = 0
    for owner, lo, hi in place_rows(
        item["name"], global_shape, dtype.itemsize, num_servers, split
    ):
        if owner != server_index:
            continue
        shape = (hi - lo, *global_shape[1:]) if global_shape else ()
        parts = kept_rows.layout(held, global_shape, dtype, (lo, hi), store.num_shards)
        record = VariableRecord(
            item["name"],
            shape,
            dtype,
            tuple(p[:3] for p in parts)
            if parts
            else store.placement(item["name"], shape, dtype),
            item["initializer"],
            int(item["seed"]),
            global_shape,
            lo,
        )
        given = {i: p[3][1] for i, p in enumerate(parts or []) if p[3] is not None}
        store.add(record, lambda out, first: None, given=given)
        if parts:
            released = kept_rows.release_outside(parts)
            log.info(
                "kept %d of %s's rows in place (%d bytes of the rows that left "
                "handed back)",
                sum(p[2] - p[1] for p in parts if p[3] is not None),
                item["name"],
                released,
            )
        for reader, entry in entries:
            key = (
                None
                if entry["kind"] == "value"
                else (entry["optimizer"], entry["slot"])
            )
            base = offsets[(id(reader), item["name"])] + entry["lo"]  # global rows
            ranges = []
            for index, part in enumerate(store.parts(record)):
                if index in given:
                    continue  # kept in place: the cut holds the same bytes
                if key is not None and key not in part.slots:
                    part.slots[key] = np.zeros(part.value.shape, part.value.dtype)
                array = part.value if key is None else part.slots[key]
                if not global_shape:
                    ranges.append((0, memoryview(array.reshape(-1)).cast("B")))
                    continue
                first = max(lo + part.lo, base)
                last = min(lo + part.hi, base + entry["hi"] - entry["lo"])
                if last > first:
                    rows = part.rows(array)[first - lo - part.lo : last - lo - part.lo]
                    view = memoryview(rows.reshape(-1)).cast("B")
                    ranges.append(((first - base) * row_bytes, view))
            if ranges:
                reader.read_ranges(entry, ranges)
                nbytes += sum(len(view) for _, view in ranges)
    return nbytes


def _slotted_here(store: ShardedStore, optimizer: str) -> dict[str, set[str]]:
    """The slots of ``optimizer`` this server holds now, by variable."""
    found: dict[str, set[str]] = {}
    for record in store.records():
        for part in store.parts(record):
            for opt, slot in part.slots:
                if opt == optimizer:
                    found.setdefault(record.name, set()).add(slot)
    return found


def merged_ledger(snapshots: list[dict[str, Any]], split_bytes: int) -> dict[str, Any]:
    """One exactly-once memory from the old servers' (``snapshots`` in server
    order), below the highest point any of them forgot. A push every old
    server answered is answered; one that only some answered (a call cut in
    the middle, or one that had no share on the others) is *inherited* with
    the old servers that applied theirs: a retry applies only the rest
    (``inherited.py``). One push id names the same step everywhere."""
    clients: dict[str, dict[str, Any]] = {}
    holders: dict[tuple[str, int], set[int]] = {}
    forgotten = 0
    for index, snapshot in enumerate(snapshots):
        forgotten = max(forgotten, int(snapshot.get("forgotten", 0)))
        for name, entry in snapshot["clients"].items():
            merged = clients.setdefault(name, {"floor": -1, "answers": {}})
            merged["floor"] = max(merged["floor"], int(entry["floor"]))
            for answer in entry["answers"]:
                merged["answers"].setdefault((answer[0], answer[1]), answer)
                if answer[1] == "push":
                    holders.setdefault((name, answer[0]), set()).add(index)
    inherited = []
    for name, c in clients.items():
        for (seq, kind), answer in list(c["answers"].items()):
            held = holders.get((name, seq), set())
            if seq <= c["floor"]:
                del c["answers"][(seq, kind)]
            elif kind == "push" and len(held) < len(snapshots):
                del c["answers"][(seq, kind)]
                inherited.append([name, seq, *answer[2:], sorted(held)])
    return {
        "clients": {
            name: {"floor": c["floor"], "answers": sorted(c["answers"].values())}
            for name, c in clients.items()
        },
        "forgotten": forgotten,
        "inherited": inherited,
        "old_layout": {"num_servers": len(snapshots), "split_bytes": split_bytes},
    }
