"""Hash-keyed tables in checkpoints: each part's used rows (keys, liveness,
last update, update count, value, slots), its admission sketch, tombstones
and counters; and back into a store of any shard count.

A part is written from its own arrays (rows ``[0, high)``, no copy). A
restore reads a saved part and inserts its live rows into the parts that
hold their keys now, with their exact bits; on the same layout the sketch,
tombstones and counters come back as they were. On another layout the
admission counts start afresh (sketches of other widths do not merge) and
tombstones before the restore are gone (a delta export from before it is
refused).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from adamax_ps.common.keys import server_of, shard_of
from adamax_ps.server.checkpoint import CheckpointReader, DataFile
from adamax_ps.server.store import Shard, ShardedStore
from adamax_ps.server.table_config import TableConfig
from adamax_ps.server.table_part import TablePart
from adamax_ps.server.tables import TableRecord

_ROW_FIELDS = ("keys", "live", "updated", "count", "version", "value")
_COUNTERS = ("admitted", "evicted", "filtered", "latest", "tomb_total")


def write_parts(shard: Shard, data_file: DataFile) -> tuple[list[dict], list[dict]]:
    """Write a shard's table parts (its lock held): (array entries, parts)."""
    entries, parts = [], []
    for name, part in shard.tables.items():
        arrays = [(f, getattr(part, f)[: part.high]) for f in _ROW_FIELDS]
        arrays += [
            (f"slot:{key[0]}:{key[1]}", array[: part.high])
            for key, array in part.slots.items()
        ]
        if part.filter is not None:
            arrays.append(("sketch", part.filter.sketch))
        arrays += [("tomb_keys", part.tomb_keys), ("tomb_versions", part.tomb_versions)]
        for field, array in arrays:
            entry = data_file.write(np.ascontiguousarray(array))
            entry.update(kind="table", table=name, shard=shard.index, field=field)
            entries.append(entry)
        counters = {c: int(getattr(part, c)) for c in _COUNTERS}
        counters["dropped_through"] = int(part.dropped_through)
        counters["counted"] = part.filter.counted if part.filter is not None else 0
        parts.append({"table": name, "shard": shard.index, **counters})
    return entries, parts


def load(
    store: ShardedStore,
    reader: CheckpointReader,
    server_index: int = 0,
    num_servers: int = 1,
    own: bool = True,
) -> int:
    """Recreate the checkpoint's tables in ``store`` (server ``server_index``
    of ``num_servers``), or add the rows that are this server's to tables
    made from another checkpoint (``own`` False: one of a resized cluster's
    old servers); bytes read."""
    manifest = reader.manifest
    saved_servers = manifest.get("num_servers", 1)
    same = (
        own
        and manifest.get("num_shards") == store.num_shards
        and saved_servers == num_servers
    )
    arrays: dict[tuple[str, int], dict[str, dict]] = {}
    for entry in manifest["arrays"]:
        if entry["kind"] == "table":
            arrays.setdefault((entry["table"], entry["shard"]), {})[entry["field"]] = (
                entry
            )
    nbytes = 0
    for item in manifest.get("tables", []):
        config = TableConfig.from_json(item["config"])
        parts = [
            TablePart(
                item["name"],
                s.index,
                config,
                num_servers * store.num_shards,
                config.seed,
            )
            for s in store.shards
        ]
        record = TableRecord(item["name"], config, store.num_shards)
        record = store.add_table(record, parts)  # or the one made already
        # Change numbers go on from the highest any old server reached.
        record.versions.take(int(item.get("version", 0)))
        for saved in item["parts"]:
            entries = arrays[(item["name"], saved["shard"])]
            counts = own or server_index == 0  # a resized cluster counts once
            nbytes += _load_part(
                store,
                reader,
                record,
                entries,
                saved,
                same,
                server_index,
                num_servers,
                counts,
            )
    return nbytes


def _load_part(
    store, reader, record, entries, saved, same, server_index, num_servers, counts
):
    """One saved part's rows (this server's) into the new parts; ``counts``:
    its admitted/evicted/filtered totals go to this server (once a cluster)."""
    fields = {f: reader.read(e) for f, e in entries.items()}
    nbytes = sum(e["nbytes"] for e in entries.values())
    live = fields["live"].astype(bool)
    if num_servers > 1:
        live &= server_of(fields["keys"], num_servers) == server_index
    rows = np.flatnonzero(live)
    keys = fields["keys"][rows]
    slots = {
        tuple(f.split(":", 2)[1:]): array[rows]
        for f, array in fields.items()
        if f.startswith("slot:")
    }
    shards = shard_of(keys, store.num_shards)
    for index, shard in enumerate(store.shards):
        part: TablePart = shard.tables[record.name]
        mine = np.flatnonzero(shards == index)
        if len(mine):
            part.restore_rows(
                keys[mine],
                fields["value"][rows[mine]],
                {key: array[mine] for key, array in slots.items()},
                fields["updated"][rows[mine]],
                fields["count"][rows[mine]],
                fields["version"][rows[mine]],
            )
        if same and index == saved["shard"]:
            _restore_counters(part, fields, saved)
        elif not same:  # tombstones from before are gone: no delta from then
            part.latest = max(part.latest, saved["latest"])
            part.dropped_through = max(part.dropped_through, record.versions.current)
            if index == 0 and counts:
                for counter in ("admitted", "evicted", "filtered"):
                    setattr(part, counter, getattr(part, counter) + saved[counter])
    return nbytes


def _restore_counters(part: TablePart, fields: dict[str, np.ndarray], saved) -> None:
    for counter in (*_COUNTERS, "dropped_through"):
        setattr(part, counter, int(saved[counter]))
    part.tomb_keys = fields["tomb_keys"]
    part.tomb_versions = fields["tomb_versions"]
    if part.filter is not None and "sketch" in fields:
        part.filter.sketch[...] = fields["sketch"]
        part.filter.counted = int(saved["counted"])


def manifest_tables(
    records: list[TableRecord], parts: list[dict]
) -> list[dict[str, Any]]:
    """The manifest's ``tables``: each table's config and its parts' counters."""
    return [
        {
            **r.to_json(),
            "version": r.versions.current,
            "parts": [p for p in parts if p["table"] == r.name],
        }
        for r in records
    ]
