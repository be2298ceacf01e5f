"""Consistent cuts of a service's state into checkpoint files, and back.

``write_cut`` locks every shard (ascending), snapshots the metadata (variables,
optimizers, remembered pushes), then writes shard by shard, releasing each
shard as soon as its bytes are on disk. A push holds all its shards' locks
while it takes its step and applies, so none is half inside the cut; pushes
to shards already written flow again while the rest is taken; no state is
copied (arrays are written from their own memory).

``load`` reads a checkpoint into an empty store with any shard count: saved
row ranges are read straight into the new placement's arrays.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from adamax_ps.server import table_snapshot
from adamax_ps.server.checkpoint import CheckpointReader, CheckpointWriter
from adamax_ps.server.optimizer_state import OptimizerState
from adamax_ps.server.store import ShardedStore, VariableRecord

Metadata = tuple[list[tuple[dict[str, Any], dict[str, np.ndarray]]], dict[str, Any]]


def write_cut(
    store: ShardedStore,
    snapshot: Callable[[], Metadata],
    writer: CheckpointWriter,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, Any], int]:
    """Write the state as one consistent cut; returns (manifest, bytes of arrays).

    ``snapshot()`` is called with every shard locked and returns the
    optimizers (JSON and extra weights) and the remembered pushes, taken under
    their own locks (the service also rotates its write-ahead log there).
    """
    entries: list[dict[str, Any]] = []
    nbytes = 0
    table_parts: list[dict[str, Any]] = []
    with store.all_locked() as release:
        records = store.records()
        tables = store.table_records()
        saved, remembered = snapshot()
        extra = writer.open("extra.bin")
        for data, weights in saved:
            for name, array in weights.items():
                entry = extra.write(np.asarray(array, order="C"))
                entry.update(kind="weight", optimizer=data["config"]["name"], name=name)
                entries.append(entry)
        writer.closed(extra)
        for shard in store.shards:
            data_file = writer.open(f"shard-{shard.index}.bin")
            for part in shard.parts.values():
                arrays = [("value", None, part.value)]
                arrays += [("slot", key, array) for key, array in part.slots.items()]
                for kind, key, array in arrays:
                    entry = data_file.write(array)
                    nbytes += entry["nbytes"]
                    entry.update(
                        kind=kind, variable=part.variable, lo=part.lo, hi=part.hi
                    )
                    if key is not None:
                        entry.update(optimizer=key[0], slot=key[1])
                    entries.append(entry)
            written, parts = table_snapshot.write_parts(shard, data_file)
            nbytes += sum(entry["nbytes"] for entry in written)
            entries += written
            table_parts += parts
            writer.closed(data_file)
            release(shard.index)
            if progress is not None:
                progress(shard.index)
    manifest = {
        "created": time.time(),
        "num_shards": store.num_shards,
        "variables": [_record_json(r) for r in records],
        "tables": table_snapshot.manifest_tables(tables, table_parts),
        "optimizers": [data for data, _ in saved],
        "ledger": remembered,
        "arrays": entries,
    }
    return manifest, nbytes


def load(
    store: ShardedStore,
    reader: CheckpointReader,
    server_index: int = 0,
    num_servers: int = 1,
) -> tuple[dict[str, OptimizerState], dict[str, Any], int]:
    """Fill an empty store (of server ``server_index`` of ``num_servers``);
    returns (optimizers, ledger snapshot, bytes read)."""
    manifest = reader.manifest
    records = {}
    for item in manifest["variables"]:
        shape, dtype = tuple(item["shape"]), np.dtype(item["dtype"])
        record = VariableRecord(
            item["name"],
            shape,
            dtype,
            store.placement(item["name"], shape, dtype),
            item["initializer"],
            int(item["seed"]),
            tuple(item.get("global_shape", shape)),
            int(item.get("row_offset", 0)),
        )
        records[record.name] = store.add(record, lambda out, lo: None)
    weights: dict[str, dict[str, np.ndarray]] = {}
    nbytes = 0
    for entry in manifest["arrays"]:
        if entry["kind"] == "table":
            continue  # table_snapshot.load reads them
        if entry["kind"] == "weight":
            weights.setdefault(entry["optimizer"], {})[entry["name"]] = reader.read(
                entry
            )
            continue
        key = None if entry["kind"] == "value" else (entry["optimizer"], entry["slot"])
        record = records[entry["variable"]]
        reader.read_into(entry, _targets(store, record, key, entry))
        nbytes += entry["nbytes"]
    nbytes += table_snapshot.load(store, reader, server_index, num_servers)
    optimizers = {}
    for data in manifest["optimizers"]:
        name = data["config"]["name"]
        optimizers[name] = OptimizerState.from_json(data, weights.get(name, {}))
    return optimizers, manifest["ledger"], nbytes


def _targets(
    store: ShardedStore, record: VariableRecord, key, entry
) -> list[memoryview]:
    """Byte views of the new parts' rows that a saved row range covers, in order."""
    targets = []
    for part in store.parts(record):
        if key is not None and key not in part.slots:
            part.slots[key] = np.zeros_like(part.value)
        array = part.value if key is None else part.slots[key]
        if not record.shape:
            targets.append(memoryview(array.reshape(-1)).cast("B"))
            continue
        lo, hi = max(part.lo, entry["lo"]), min(part.hi, entry["hi"])
        if hi > lo:
            rows = part.rows(array)[lo - part.lo : hi - part.lo]
            targets.append(memoryview(rows.reshape(-1)).cast("B"))
    return targets


def _record_json(record: VariableRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "shape": list(record.shape),
        "dtype": record.dtype.str,
        "initializer": record.initializer,
        "seed": record.seed,
        "global_shape": list(record.global_shape),
        "row_offset": record.row_offset,
    }
