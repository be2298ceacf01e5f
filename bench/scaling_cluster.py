"""What bench/scaling.py pushes, its worker processes and its clusters.

Workers are this script started with ``--worker INDEX``: each connects with the
client on request, builds its gradient, and pushes with
``Adamax.apply_gradients`` for a given time from a given instant, timing every
push. A cluster is ``adamax-ps serve`` processes holding the variables pushed.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from measure import Child, percentile, serve_commands

PAGE = os.sysconf("SC_PAGE_SIZE")
TABLE = ("embedding", (1_000_000, 64))
SPARSE_ROWS = 8192


@dataclass(frozen=True)
class Push:
    """What one worker pushes: dense ``size`` floats, or 8192 sparse rows."""

    kind: str  # "dense" | "sparse"
    size: int = 0

    @property
    def variable(self) -> str:
        return TABLE[0] if self.kind == "sparse" else f"dense-{self.size}"

    @property
    def shape(self) -> tuple[int, ...]:
        return TABLE[1] if self.kind == "sparse" else (self.size,)

    @property
    def payload(self) -> int:
        """Bytes of gradient a push carries (sparse: rows before summing, + ids)."""
        if self.kind == "sparse":
            return SPARSE_ROWS * (TABLE[1][1] * 4 + 8)
        return self.size * 4

    @property
    def label(self) -> str:
        if self.kind == "sparse":
            return f"sparse {SPARSE_ROWS} x {TABLE[1][1]} rows"
        return f"dense {size_text(self.size * 4)}"


def size_text(nbytes: int) -> str:
    for unit, scale in (("MB", 1 << 20), ("KB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:g} {unit}"
    return f"{nbytes} B"


# Worker processes. -----------------------------------------------------------------


def worker_process(index: int) -> None:
    from adamax_ps.client import Adamax, IndexedSlices, connect

    clusters: dict[str, tuple] = {}
    gradients: dict[tuple[str, int], object] = {}
    current: list = []
    rng = np.random.default_rng(index)

    def gradient(push: Push):
        key = (push.kind, push.size)
        if key not in gradients:
            if push.kind == "sparse":
                rows, width = TABLE[1]
                ranks = rng.zipf(1.2, size=SPARSE_ROWS * 4)
                ranks = ranks[ranks <= rows][:SPARSE_ROWS] - 1
                ids = rng.permutation(rows)[ranks].astype(np.int64)
                values = rng.normal(0, 0.01, (SPARSE_ROWS, width)).astype(np.float32)
                gradients[key] = IndexedSlices(values, ids, TABLE[1])
            else:
                gradients[key] = rng.normal(0, 0.01, push.size).astype(np.float32)
        return gradients[key]

    def prepare(addresses: str, kind: str, size: int) -> dict:
        """Connect, attach and build the gradient: nothing of it is timed."""
        if addresses not in clusters:
            cluster = connect(addresses)
            clusters[addresses] = (cluster, Adamax(cluster=cluster))
        cluster, optimizer = clusters[addresses]
        push = Push(kind, size)
        variable = cluster.variable(push.variable, shape=push.shape)
        current[:] = [optimizer, variable, gradient(push)]
        return {"prepared": push.label}

    def run(start: float, seconds: float) -> dict:
        optimizer, variable, g = current
        while time.monotonic() < start:  # every worker starts at the same instant
            time.sleep(min(0.01, max(0.0, start - time.monotonic())))
        stop = start + seconds
        latencies = []
        began = time.perf_counter()
        while not latencies or time.monotonic() < stop:
            t0 = time.perf_counter()
            optimizer.apply_gradients([(g, variable)])
            latencies.append(time.perf_counter() - t0)
        return {"latencies": latencies, "elapsed": time.perf_counter() - began}

    serve_commands({"prepare": prepare, "run": run})


class Workers:
    def __init__(self, count: int, folder: Path) -> None:
        self.children: list[Child] = []
        try:  # a worker that fails to start stops those already started
            for k in range(count):
                log = folder / f"worker-{k}.log"
                self.children.append(Child(__file__, "--worker", str(k), log=log))
            for child in self.children:
                child.receive()
        except BaseException:
            self.close()
            raise

    def measure(self, addresses: str, push: Push, count: int, seconds: float):
        """``count`` workers push at once for ``seconds``: pushes/s, latencies."""
        chosen = self.children[:count]
        for child in chosen:
            child.send("prepare", addresses=addresses, kind=push.kind, size=push.size)
        for child in chosen:
            child.receive()
        start = time.monotonic() + 0.05
        for child in chosen:
            child.send("run", start=start, seconds=seconds)
        replies = [child.receive() for child in chosen]
        latencies = sorted(x for r in replies for x in r["latencies"])
        rate = sum(len(r["latencies"]) / r["elapsed"] for r in replies)
        return {
            "pushes_per_s": rate,
            "bytes_per_s": rate * push.payload,
            "p50_ms": percentile(latencies, 0.50) * 1e3,
            "p99_ms": percentile(latencies, 0.99) * 1e3,
        }

    def close(self) -> None:
        for child in self.children:
            child.close()


# Clusters. ----------------------------------------------------------------------


class Cluster:
    """``servers`` adamax-ps processes with ``shards`` each, holding the variables
    of ``pushes`` (each pushed once, so its slots exist)."""

    def __init__(self, folder: Path, servers: int, shards: int, pushes) -> None:
        from adamax_ps.server.launcher import addresses, start_cluster

        folder.mkdir(parents=True)
        self.processes = start_cluster(
            servers, folder, "--shards", str(shards), checkpoints=False
        )
        self.addresses = addresses(self.processes)
        self.servers, self.shards = servers, shards
        self.params = 0
        try:
            self._create(pushes)
        except BaseException:
            self.close()
            raise

    def _create(self, pushes) -> None:
        """Each variable created and pushed once (its slots exist)."""
        from adamax_ps.client import Adamax, connect

        with connect(self.addresses) as client:
            optimizer = Adamax(cluster=client)
            for push in {p.variable: p for p in pushes}.values():
                variable = client.variable(
                    push.variable, shape=push.shape, initializer="random_normal"
                )
                optimizer.apply_gradients(
                    [(np.zeros(push.shape, np.float32), variable)]
                )
                self.params += int(np.prod(push.shape))

    def resident_bytes(self) -> int:
        total = 0
        for server in self.processes:
            with open(f"/proc/{server.process.pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        return total

    def close(self) -> None:
        for server in self.processes:
            server.stop()


if __name__ == "__main__":
    worker_process(int(sys.argv[2]))
