"""``adamax-ps export``: a hash-keyed table's keys and values, for serving.

The file is an uncompressed NumPy ``.npz`` (a zip of ``.npy`` arrays):
``keys`` int64 [n], ``values`` [n, dim] in the table's dtype, ``evicted``
int64 [k] (a delta's tombstones: delete these keys first, then upsert the
rows), ``through`` int64 [servers] (each server's change number the rows
are complete through: the next delta's ``--since``, written as
``a,b,...``), ``since`` (the same, empty for a whole export) and ``table``. Why this
format: ``.npy`` is a documented, versioned layout with readers for C/C++,
Rust, Java and Go and no dependency beyond NumPy in Python; it holds int64
keys and float rows exactly (no text round trip); and a serving process
loads it straight into its own lookup structure (a ``dict``, a TensorFlow
``DenseHashTable`` via ``insert(keys, values)``, a Faiss or Redis index). The
optimizer slots are left out: serving needs only the rows.

The file is written to a temporary name, fsynced and renamed into place, so a
reader never sees half an export.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def export(
    address: str, table: str, out: Path, since: str | None, token: str | None
) -> int:
    """Export ``table`` of the cluster at ``address`` to ``out``; exit status."""
    from adamax_ps.client import connect
    from adamax_ps.client.tables import existing_table

    numbers = None
    if since is not None:
        try:
            numbers = [int(x) for x in since.split(",")]
        except ValueError:
            raise SystemExit(
                f"adamax-ps export: --since is an export's through, one number per "
                f"server (a,b,...). Received: {since!r}"
            ) from None
    with connect(address, token=token) as cluster:
        exported = existing_table(cluster, table).export(numbers)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(
            f,
            keys=exported.keys,
            values=exported.values,
            evicted=exported.evicted,
            through=np.array(exported.through, np.int64),
            since=np.array(numbers or [], np.int64),
            table=np.str_(table),
        )
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    kind = "whole" if since is None else f"delta since {since}"
    print(
        f"exported {table!r} ({kind}): {len(exported.keys)} rows, "
        f"{len(exported.evicted)} evicted keys, through "
        f"{','.join(map(str, exported.through))} "
        f"-> {out}"
    )
    return 0
