"""RemoteTable: a hash-keyed embedding table held by the cluster.

Any int64 key (negative ones too) names a row of ``dim`` values. Keys are
spread over the servers by a stable hash (``common.keys``), the same on
every worker. An unseen key reads as its initial row (a function of the key
and the table's seed); a push of an admitted key gives it a row and Adamax
slots. Admission, eviction and capacity are the table's settings (see the
README); the servers apply them.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from adamax_ps.client.placement import check_rows, place_table

if TYPE_CHECKING:
    from adamax_ps.client.cluster import Cluster


@dataclass(frozen=True)
class TableExport:
    """A table's rows for serving: ``keys`` [n] and ``values`` [n, dim];
    a delta also lists ``evicted`` keys (delete them first). ``through``: per
    server, the table's change number the rows are complete through (each
    server numbers its own changes): the next delta's ``since``."""

    name: str
    keys: np.ndarray
    values: np.ndarray
    evicted: np.ndarray
    through: list[int]
    since: list[int] | None


class RemoteTable:
    """A hash-keyed table (``name``, ``dim``, ``dtype``); push it with
    ``IndexedSlices(values, keys)`` in ``Adamax.apply_gradients``."""

    def __init__(self, cluster: Cluster, name: str, dim: int, dtype: Any) -> None:
        self.cluster = cluster
        self.name = name
        self.dim = int(dim)
        self.dtype = np.dtype(dtype)
        self.shape = (None, self.dim)

    def gather(self, keys: Any) -> np.ndarray:
        """The keys' rows (an unseen or not yet admitted key: its initial row)."""
        return self.cluster.gather(self.name, keys)

    def gather_slot(self, keys: Any, optimizer: str, slot: str) -> np.ndarray:
        """The keys' rows of an optimizer's slot (``m``, ``v``); zeros for keys
        without a row."""
        return self.cluster.gather(self.name, keys, optimizer=optimizer, slot=slot)

    def assign(self, keys: Any, values: Any) -> None:
        """Set the rows of unique ``keys`` (new keys get rows and zero slots,
        without an admission test)."""
        keys = check_rows(keys, self.cluster.placement(self.name))
        values = np.asarray(values, dtype=self.dtype)
        if values.shape != (len(keys), self.dim):
            raise ValueError(
                f"values for table {self.name!r} must have shape "
                f"{(len(keys), self.dim)}. Received: {values.shape}"
            )
        if len(np.unique(keys)) != len(keys):
            raise ValueError(f"keys assigned to table {self.name!r} repeat")
        placement = self.cluster.placement(self.name)

        def put(item) -> None:
            server, where, local = item
            self.cluster.transports[server].assign_keys(
                self.cluster.view(server), self.name, local, values[where]
            )

        self.cluster.map(put, placement.locate(keys))

    def info(self, top_keys: int = 0) -> dict[str, Any]:
        """Rows, memory and admission/eviction counts over every server (and
        the ``top_keys`` most updated keys)."""
        infos = self.cluster.map(
            lambda t: t.describe_table(self.name, top_keys), self.cluster.transports
        )
        total = {"name": self.name, "config": infos[0]["config"]}
        for field in ("size", "allocated", "bytes", "admitted", "evicted", "filtered"):
            total[field] = sum(int(i[field]) for i in infos)
        total["latest_step"] = max(int(i["latest_step"]) for i in infos)
        # Each server's rows, slots, bookkeeping and index, by row held.
        held = sum(float(i["bytes_per_row"]) * int(i["size"]) for i in infos)
        total["bytes_per_row"] = held / total["size"] if total["size"] else 0.0
        if top_keys:
            found = [k for i in infos for k in i.get("top_keys", [])]
            found.sort(key=lambda k: (-k["updates"], k["key"]))
            total["top_keys"] = found[:top_keys]
        return total

    def size(self) -> int:
        """Rows the table holds (keys admitted and not evicted)."""
        return self.info()["size"]

    def export(self, since: Sequence[int] | None = None) -> TableExport:
        """Every row from every server, for serving; or, given ``since`` (an
        earlier export's ``through``, one number per server), the rows
        changed after it and the keys evicted after it."""
        servers = self.cluster.size
        if since is not None:
            since = [int(s) for s in since]
            if len(since) != servers:
                raise ValueError(
                    f"since holds one change number per server ({servers}), as an "
                    f"export's through does. Received: {since}"
                )
        parts = self.cluster.map(
            lambda i: self.cluster.transports[i].export_table(
                self.name, None if since is None else since[i]
            ),
            range(servers),
        )
        return TableExport(
            self.name,
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]).reshape(-1, self.dim),
            np.concatenate([p[2] for p in parts]),
            [int(p[3]) for p in parts],
            since,
        )

    def __repr__(self) -> str:
        return f"<RemoteTable {self.name!r} dim={self.dim} dtype={self.dtype.name}>"


def create_table(
    cluster: Cluster,
    name: str,
    dim: int,
    *,
    dtype: Any = "float32",
    initializer: str | dict = "zeros",
    admission: dict | None = None,
    eviction: dict | None = None,
    capacity: int | None = None,
) -> RemoteTable:
    """Create the table on every server (or attach to it with the same
    settings); a random initializer is seeded by the name unless its config
    names a seed."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a table name is a non-empty string. Received: {name!r}")
    seed = zlib.crc32(name.encode())
    if isinstance(initializer, dict):
        given = (initializer.get("config") or {}).get("seed")
        seed = seed if given is None else int(given)
    config = {
        "dim": dim,
        "dtype": np.dtype(dtype).name,
        "initializer": initializer,
        "seed": seed,
        "capacity": capacity,
        "admission": admission,
        "eviction": eviction,
    }
    cluster.map(
        lambda i: cluster.transports[i].create_table(cluster.view(i), name, config),
        range(cluster.size),
    )
    cluster.add_placement(place_table(name, dim, dtype, cluster.size))
    return RemoteTable(cluster, name, dim, dtype)


def discover_tables(cluster: Cluster) -> None:
    """Placements of the tables other workers created (server 0 has them all)."""
    for info in cluster.transports[0].list_tables():
        config = info["config"]
        cluster.add_placement(
            place_table(info["name"], config["dim"], config["dtype"], cluster.size)
        )


def existing_table(cluster: Cluster, name: str) -> RemoteTable:
    """A table other workers created (``ValueError`` if ``name`` is a variable)."""
    placement = cluster.placement(name)
    if not placement.keyed:
        raise ValueError(f"{name!r} is a variable, not a hash-keyed table")
    return RemoteTable(cluster, name, placement.shape[1], placement.dtype)
