"""The servers the rescale tests start: a cluster, a spare waiting to be
taken in, and the state one server reaches with the same calls."""

from __future__ import annotations

import time
from pathlib import Path

from adamax_ps.client import connect
from helpers.rescale_model import SPLIT, Model, state
from helpers.servers import Server, addresses, start_cluster

EXTRA = ["--cluster-split-bytes", str(SPLIT), "--eviction-interval", "0"]


def cluster_of(count: int, folder: Path, *extra: str) -> list[Server]:
    folder.mkdir(parents=True)
    return start_cluster(count, folder, *EXTRA, *extra)


def spare(folder: Path, index: int, of: int, *extra: str) -> Server:
    """A server beyond its cluster, with a folder: waits to be taken in."""
    args = ["--grpc-port", "0", "--http-port", "0", "--shards", "2", *EXTRA, *extra]
    args += ["--server-index", str(index), "--num-servers", str(of)]
    args += ["--checkpoint-dir", str(folder / f"server-{index}")]
    return Server(args, folder / f"server-{index}.log").start()


def train(address: str, steps: range) -> None:
    """A worker connected to ``address`` makes the calls of ``steps``."""
    with connect(address) as cluster:
        model = Model.on(cluster)
        for step in steps:
            model.step(step)


def two_and_a_spare(folder: Path, *extra: str) -> list[Server]:
    """A 2-server cluster and a spare (index 2) beside it, in ``folder``."""
    servers = cluster_of(2, folder, *extra)
    servers.append(spare(folder, 2, 2, *extra))
    return servers


def expected_after(tmp_path: Path, steps: int) -> dict:
    """What one server holds after the calls of ``range(steps)``."""
    single = cluster_of(1, tmp_path / "single")
    try:
        train(addresses(single), range(steps))
        return state(addresses(single))
    finally:
        single[0].stop()


def until(condition, what: str, seconds: float = 120) -> None:
    """Poll ``condition`` (a server's state, observed) until it holds."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
