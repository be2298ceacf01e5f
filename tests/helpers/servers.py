"""Real ``adamax-ps serve`` processes for the tests (see server/launcher.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from adamax_ps.server import launcher
from adamax_ps.server.launcher import LocalServer as Server
from adamax_ps.server.launcher import addresses

SCRIPT = Path(sys.executable).parent / "adamax-ps"

__all__ = ["SCRIPT", "Server", "addresses", "start_cluster", "start_fuzz_target"]


def start_cluster(
    count: int,
    folder: Path,
    *extra: str,
    checkpoints: bool = True,
    env: dict[str, str] | None = None,
) -> list[Server]:
    """``count`` servers of one cluster, two shards each, logs under ``folder``."""
    return launcher.start_cluster(
        count, folder, "--shards", "2", *extra, checkpoints=checkpoints, env=env
    )


def start_fuzz_target(folder: Path) -> Server:
    """The server the fuzz tests attack: 2 shards, 4 MB request limit, 8 MB in
    flight, 1000 rows per read, and a
    small model pushed once (``emb`` 50 x 4 float32 and ``w`` 6 float64, both
    with slots, optimizer ``Adamax``)."""
    import numpy as np

    from adamax_ps.client import Adamax, IndexedSlices, connect

    args = ["--grpc-port", "0", "--http-port", "0", "--shards", "2"]
    args += ["--max-request-bytes", str(4 << 20), "--max-inflight-bytes", "8M"]
    args += ["--max-request-rows", "1000"]
    server = Server(args, folder / "server.log").start()
    try:
        with connect(server.grpc_address) as cluster:
            opt = Adamax(cluster=cluster)
            emb = cluster.variable("emb", shape=(50, 4), initializer="glorot_uniform")
            w = cluster.variable("w", shape=(6,), dtype="float64", initializer="ones")
            rows = IndexedSlices(np.ones((3, 4), np.float32), [1, 1, 7])
            opt.apply_gradients([(rows, emb), (np.ones(6), w)])
    except BaseException:
        server.kill()
        raise
    return server
