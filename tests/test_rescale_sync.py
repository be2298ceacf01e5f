"""A rescale of a cluster in synchronous mode (``--replicas 2``): the freeze
lands while one replica's push waits in its round for the other; the other's
push still passes the closing gate and completes the round (a freeze drains
the round rather than waiting for it to time out), then both replicas follow
the new layout. The result is bit-identical to one server applying the sum
of both replicas' gradients each step."""

from __future__ import annotations

import re
import threading

import httpx
import numpy as np
import pytest
from helpers.rescale_cluster import cluster_of, two_and_a_spare, until
from helpers.rescale_model import SPLIT
from helpers.servers import Server, addresses

from adamax_ps.client import Adamax, connect, placement
from adamax_ps.client.rescale import Phase, _Servers, rescale

STEPS = 6  # the freeze lands in step STEPS // 2
SHAPE = (256, 8)  # 8 KB: split by rows over the servers
SYNC = ["--replicas", "2", "--sync-timeout", "60"]
WAITS = re.compile(r"^adamax_ps_sync_waits_total (\S+)$", re.MULTILINE)


@pytest.fixture(autouse=True)
def _split(monkeypatch):
    monkeypatch.setattr(placement, "SPLIT_BYTES", SPLIT)  # as the servers place rows


def gradient(replica: int, step: int) -> np.ndarray:
    rng = np.random.default_rng(1000 * replica + step)
    return rng.normal(size=SHAPE).astype(np.float32)


class Replica(threading.Thread):
    """One synchronous replica's ``STEPS`` steps; before the push of step
    ``hold_at`` it waits for ``go`` (when given)."""

    def __init__(self, address: str, k: int, hold_at: int, go=None) -> None:
        super().__init__(daemon=True)
        self.address, self.k, self.hold_at, self.go = address, k, hold_at, go
        self.at = -1  # the step being pushed
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with connect(self.address) as cluster:
                cluster.rescale_wait = 120
                w = cluster.variable("w", shape=SHAPE, initializer="ones")
                opt = Adamax(learning_rate=0.01, cluster=cluster)
                for step in range(STEPS):
                    if step == self.hold_at and self.go is not None:
                        assert self.go.wait(120)
                    self.at = step
                    opt.apply_gradients([(gradient(self.k, step), w)])
        except BaseException as e:
            self.error = e


def sync_waits(server: Server) -> float:
    text = httpx.get(f"{server.http_address}/metrics", timeout=30).text
    found = WAITS.search(text)
    return float(found[1]) if found else 0.0


@pytest.mark.slow
def test_a_synchronous_round_cut_by_the_freeze_completes_and_training_follows(
    tmp_path,
):
    servers = two_and_a_spare(tmp_path / "c", *SYNC)
    everyone = addresses(servers)
    middle = STEPS // 2
    go = threading.Event()
    replicas = [
        Replica(addresses(servers[:2]), 0, middle),
        Replica(addresses(servers[:2]), 1, middle, go),
    ]
    try:
        for replica in replicas:
            replica.start()
        # Replica 0's push of the middle step waits in its round on both
        # servers (one wait per round and server before it).
        until(
            lambda: all(sync_waits(s) >= middle + 1 for s in servers[:2]),
            "replica 0 waiting in its round",
        )
        done: dict = {}
        driver = threading.Thread(
            target=lambda: done.update(report=rescale(everyone, 3)), daemon=True
        )
        driver.start()
        status = _Servers([servers[0].grpc_address], None)
        try:
            until(
                lambda: (
                    status.call(0, phase=Phase.STATUS).state
                    in ("freezing", "frozen", "adopted")
                ),
                "the freeze",
            )
        finally:
            status.close()
        go.set()  # replica 1 pushes into the closing gate: it joins the round
        driver.join(300)
        assert "report" in done, "the rescale did not finish"
        for replica in replicas:
            replica.join(300)
            assert replica.error is None, replica.error
        assert [r.at for r in replicas] == [STEPS - 1] * 2
        reference = cluster_of(1, tmp_path / "single")
        try:
            with connect(addresses(reference)) as single:
                ref = single.variable("w", shape=SHAPE, initializer="ones")
                opt = Adamax(learning_rate=0.01, cluster=single)
                for step in range(STEPS):
                    opt.apply_gradients([(gradient(0, step) + gradient(1, step), ref)])
                expected = (ref.numpy().tobytes(), int(opt.iterations))
        finally:
            reference[0].stop()
        with connect(everyone) as cluster:
            assert cluster.size == 3
            w = cluster.variable("w", shape=SHAPE, initializer="ones")
            opt = Adamax(learning_rate=0.01, cluster=cluster)
            assert (w.numpy().tobytes(), int(opt.iterations)) == expected
    finally:
        for server in servers:
            server.stop()
