"""The online rescale of bench/rescale.py: ``adamax-ps rescale`` of a running
cluster, 2 servers and a spare, to 3.

The old cluster's two servers and a spare (``--server-index 2 --num-servers
2``: it waits to be taken in) start empty; the state is pushed once by Adamax,
as for the offline resize. Then ``client.rescale.rescale`` drives the
servers, no process starting or stopping: freeze (each old server closes its
gate and writes its cut), adopt (each new server imports the rows it did
not hold from the cuts, by direct reads from the other servers: on one
machine each server hands its peers the cut's files over its local socket,
with ``--transfer-port-only`` they come over the transfer port as between
machines; an old server keeps the rows it still owns in place), commit. The pause runs
from the freeze call until the commit answered (the driver's report splits
it by phase; the floor is measured right before the freeze and right after
the commit, while the servers hold their state); settle (each new server's
first checkpoint of the new layout, while workers could push) and release
come after it and are reported apart.
The servers' log lines give each import's bytes and seconds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from adamax_ps.server.launcher import LocalServer, addresses

IMPORTED = re.compile(
    r"imported (\d+) bytes of the \d+-server cluster's cut in ([\d.]+) s"
)


def online(
    folder: Path,
    rows: int,
    keys: np.ndarray,
    dim: int,
    split: int,
    floor: Callable[[], dict] | None = None,
    extra: tuple[str, ...] = (),
) -> dict:
    """One online rescale of ``rows`` x ``dim`` and ``keys``; its pause and
    parts in seconds, and each new server's import (bytes, seconds).
    ``floor()`` runs right before the freeze and right after the settle,
    the servers up and holding their state (``floor_before``,
    ``floor_after``). ``extra``: more flags for every server."""
    from adamax_ps.client import Adamax, connect
    from adamax_ps.client.rescale import rescale

    folder.mkdir(parents=True)
    cluster = []
    for index in range(3):
        args = ["--grpc-port", "0", "--http-port", "0", "--server-index", str(index)]
        args += ["--num-servers", "2", "--cluster-split-bytes", str(split)]
        args += ["--checkpoint-dir", str(folder / f"server-{index}"), *extra]
        cluster.append(LocalServer(args, folder / f"server-{index}.log"))
    try:
        for server in cluster:
            server.start()
        push_state(addresses(cluster[:2]), rows, keys, dim)
        around = {"floor_before": floor()} if floor else {}
        report = rescale(addresses(cluster), 3)
        if floor:
            around["floor_after"] = floor()
        with connect(addresses(cluster)) as client:
            steps = int(Adamax(cluster=client).iterations)
        if steps != 1:
            raise RuntimeError(f"the new cluster counts {steps} steps, not 1")
        imports = [_logged(server, IMPORTED) for server in cluster]
    finally:
        for server in cluster:
            server.kill()
    return {
        **around,
        "pause": report.paused,
        **{name: seconds for name, seconds in report.seconds.items()},
        "imports": [{"bytes": b, "seconds": s} for b, s in imports],
    }


def push_state(address: str, rows: int, keys: np.ndarray, dim: int) -> None:
    """The benchmark's state: ``emb`` (``rows`` x ``dim``, split by rows) and
    table ``ids`` (``keys``), pushed once by Adamax so ``m`` and ``v`` exist."""
    from adamax_ps.client import Adamax, IndexedSlices, connect

    with connect(address) as client:
        emb = client.variable("emb", shape=(rows, dim))
        ids = client.embedding_table("ids", dim)
        opt = Adamax(cluster=client)
        grads = np.full((rows, dim), 1e-3, np.float32)
        values = IndexedSlices(np.full((len(keys), dim), 1e-3, np.float32), keys)
        opt.apply_gradients([(grads, emb), (values, ids)])


def _logged(server: LocalServer, pattern: re.Pattern) -> tuple[int, float]:
    for line in reversed(server.log.read_text().splitlines()):
        found = pattern.search(line)
        if found:
            return int(found[1]), float(found[2])
    raise RuntimeError(f"{server.log}: no line matching {pattern.pattern!r}")
