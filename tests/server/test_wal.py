"""--durability wal: acknowledged changes survive a crash, replayed bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import workload
from helpers.state import build_state, snapshot

from adamax_ps.server import wal
from adamax_ps.server.errors import CheckpointError
from adamax_ps.server.ledger import PushId
from adamax_ps.server.service import Gradient

F32 = np.float32
CHILD = Path(__file__).with_name("wal_child.py")


def wal_service(make_service, folder, **settings):
    service = make_service(checkpoint_dir=folder, durability="wal", **settings)
    service.restore()
    return service


def pushes(service, count, start=0, client="w"):
    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        service.apply(
            "Adamax",
            [
                Gradient.sparse(
                    "emb",
                    rng.integers(0, 300, 16),
                    rng.normal(size=(16, 4)).astype(F32),
                ),
                Gradient.dense("dense", rng.normal(size=7)),
            ],
            PushId(client, i),
        )


def test_everything_since_the_last_checkpoint_is_replayed(make_service, tmp_path):
    service = wal_service(make_service, tmp_path, shards=3, split_bytes=64)
    build_state(service, pushes=4)
    service.checkpoint()
    pushes(service, 5, start=100)
    service.create_variable("late", initial_value=np.arange(6, dtype=F32))
    service.set_iterations("second", 40)
    service.assign("dense", np.ones(7))
    expected = snapshot(service)
    # A new process on the same folder, after a crash (nothing closed).
    restored = wal_service(make_service, tmp_path, shards=2)
    assert restored.replayed == 8
    assert snapshot(restored) == expected


def test_without_any_checkpoint_the_log_alone_restores(make_service, tmp_path):
    service = wal_service(make_service, tmp_path, shards=2)
    build_state(service, pushes=3)
    expected = snapshot(service)
    assert snapshot(wal_service(make_service, tmp_path, shards=1)) == expected


def test_replayed_pushes_keep_their_steps_and_apply_once(make_service, tmp_path):
    service = wal_service(make_service, tmp_path, shards=2)
    build_state(service, pushes=3)
    first = service.apply(
        "Adamax", [Gradient.dense("dense", np.ones(7))], PushId("r", 1)
    )
    restored = wal_service(make_service, tmp_path, shards=2)
    again = restored.apply(
        "Adamax", [Gradient.dense("dense", np.ones(7))], PushId("r", 1)
    )
    assert again == first
    assert restored.optimizer("Adamax").iterations == first.iterations


def test_checkpoints_truncate_the_log_to_what_kept_checkpoints_need(
    make_service, tmp_path
):
    """Two checkpoints are kept: the log keeps the segments from the older
    one's on (so it can stand in if the newer is found damaged)."""
    service = wal_service(make_service, tmp_path, shards=1)
    build_state(service, pushes=2)
    service.checkpoint()
    pushes(service, 3, start=50)
    service.checkpoint()
    assert [n for n, _ in wal.segments(tmp_path / "wal")] == [1, 2]
    pushes(service, 2, start=70)
    service.checkpoint()
    assert [n for n, _ in wal.segments(tmp_path / "wal")] == [2, 3]
    assert (tmp_path / "wal" / "wal-000003.log").stat().st_size == 0
    assert snapshot(wal_service(make_service, tmp_path, shards=1)) == snapshot(service)


def test_concurrent_pushes_share_fsyncs(make_service, tmp_path):
    service = wal_service(make_service, tmp_path, shards=2)
    build_state(service, pushes=1)
    before = service.journal.log.syncs
    threads = [
        threading.Thread(target=pushes, args=(service, 25, 1000 * k, f"t{k}"))
        for k in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    syncs = service.journal.log.syncs - before
    assert syncs < 200, f"{syncs} fsyncs for 200 pushes: no group commit"
    metrics = {
        sample.name: sample.value
        for metric in service.metrics.registry.collect()
        for sample in metric.samples
    }
    assert metrics["adamax_ps_wal_records_total"] == service.journal.log.appended
    assert metrics["adamax_ps_wal_records_total"] >= 200
    assert metrics["adamax_ps_wal_syncs_total"] == service.journal.log.syncs
    assert metrics["adamax_ps_wal_bytes_total"] > 200 * 16 * 4 * 4
    assert snapshot(wal_service(make_service, tmp_path, shards=2)) == snapshot(service)


def test_a_torn_last_record_is_dropped(make_service, tmp_path):
    service = wal_service(make_service, tmp_path, shards=1)
    build_state(service, pushes=2)
    expected = snapshot(service)
    pushes(service, 1, start=77)
    log = tmp_path / "wal" / "wal-000000.log"
    data = log.read_bytes()
    with open(log, "r+b") as f:  # the last record was half written when power went
        f.truncate(len(data) - 10)
    restored = wal_service(make_service, tmp_path, shards=1)
    assert snapshot(restored) == expected
    pushes(restored, 1, start=78)  # the log goes on after the cut-off tail
    again = wal_service(make_service, tmp_path, shards=1)
    assert snapshot(again) == snapshot(restored)


def test_a_corrupt_record_in_the_middle_is_an_error(make_service, tmp_path):
    service = wal_service(make_service, tmp_path, shards=1)
    build_state(service, pushes=3)
    log = tmp_path / "wal" / "wal-000000.log"
    data = bytearray(log.read_bytes())
    data[200] ^= 0xFF
    log.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="the log is corrupt"):
        wal_service(make_service, tmp_path, shards=1)


def test_a_changing_service_needs_its_log_replayed_first(make_service, tmp_path):
    service = make_service(checkpoint_dir=tmp_path, durability="wal")
    with pytest.raises(CheckpointError, match="must be restored"):
        service.create_optimizer({})


def test_acknowledged_pushes_survive_sigkill(make_service, tmp_path):
    """A child applies pushes in wal mode, reporting each acknowledgement; it is
    killed with SIGKILL mid-stream. Every acknowledged push is there after the
    restart, applied exactly once (compared with a serial replay)."""
    child = subprocess.Popen(
        [sys.executable, CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    acknowledged = []
    try:
        for line in child.stdout:
            acknowledged.append(int(line))
            if len(acknowledged) == 60:
                os.kill(child.pid, signal.SIGKILL)
                break
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    restored = wal_service(make_service, tmp_path / "server", shards=2)
    remembered = {
        seq for seq, *_ in restored.ledger.snapshot()["clients"]["worker"]["answers"]
    }
    assert set(acknowledged) <= remembered  # nothing acknowledged is lost
    reference = make_service(shards=1)
    workload.setup(reference)
    for sequence in sorted(remembered):
        workload.push(reference, sequence)
    assert snapshot(reference)["var:emb"] == snapshot(restored)["var:emb"]
    assert snapshot(reference)["var:dense"] == snapshot(restored)["var:dense"]
    assert restored.optimizer("Adamax").iterations == len(remembered)


def test_a_log_replays_only_on_the_server_that_wrote_it(make_service, tmp_path):
    """No checkpoint yet, only the log: a swapped or resized folder is refused
    as a checkpoint would be, and its owner still replays it."""
    service = wal_service(make_service, tmp_path, server_index=1, num_servers=2)
    service.create_variable("w", shape=(3,), initializer="ones")
    for index, count in ((0, 2), (1, 3)):
        with pytest.raises(CheckpointError, match="written by server 1 of 2"):
            wal_service(make_service, tmp_path, server_index=index, num_servers=count)
    owner = wal_service(make_service, tmp_path, server_index=1, num_servers=2)
    assert owner.replayed == 1
    (tmp_path / "wal" / "server.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"server\.json is damaged"):
        wal_service(make_service, tmp_path, server_index=1, num_servers=2)


def test_every_change_is_in_the_log(make_service, tmp_path):
    """Reading iterations first (Keras creates it then), set_weights and every
    other change come back from the log alone, the weights order included."""
    service = wal_service(make_service, tmp_path, shards=2)
    service.create_optimizer({"name": "fresh"})
    assert service.iterations("fresh") == 0  # creates it: heads weights
    build_state(service, pushes=2)
    weights = service.get_weights("Adamax")
    service.set_weights("Adamax", [np.int64(9), *(w + 1 for w in weights[1:])])
    service.set_iterations("second", 4)
    expected = snapshot(service)
    restored = wal_service(make_service, tmp_path, shards=1)
    assert snapshot(restored) == expected
    assert restored.weight_refs("fresh")[0].kind == "iterations"
    assert restored.iterations("Adamax") == 9
