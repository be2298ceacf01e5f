"""Checkpoints: consistent, atomic, checksummed, restored bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers.state import build_state, snapshot

from adamax_ps.server import checkpoint
from adamax_ps.server.errors import CheckpointError, FailedPreconditionError
from adamax_ps.server.ledger import PushId
from adamax_ps.server.service import CheckpointInfo, Gradient

F32 = np.float32
HELPER = Path(__file__).with_name("checkpoint_child.py")


@pytest.mark.parametrize("shards", [1, 3, 5])
def test_restore_is_bit_identical_on_any_shard_count(make_service, tmp_path, shards):
    source = make_service(shards=3, split_bytes=64)
    build_state(source)
    info = source.checkpoint(tmp_path)
    assert info.path == tmp_path / "ckpt-000001" and info.nbytes > 0
    restored = make_service(shards=shards, split_bytes=64)
    assert restored.restore(tmp_path).sequence == 1
    assert snapshot(restored) == snapshot(source)
    assert restored.get_config("Adamax") == source.get_config("Adamax")


def test_answered_pushes_survive_a_restore(make_service, tmp_path):
    source = make_service(shards=2)
    build_state(source)
    first = source.apply(
        "Adamax", [Gradient.dense("dense", np.ones(7))], PushId("w", 1)
    )
    source.checkpoint(tmp_path)
    restored = make_service(shards=2)
    restored.restore(tmp_path)
    before = snapshot(restored)
    assert (
        restored.apply("Adamax", [Gradient.dense("dense", np.ones(7))], PushId("w", 1))
        == first
    )
    assert snapshot(restored) == before


def test_without_a_folder_nothing_is_written_anywhere(
    make_service, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    service = make_service(shards=1)
    with pytest.raises(FailedPreconditionError, match="no checkpoint folder"):
        service.checkpoint()
    assert service.restore() is None
    assert list(tmp_path.iterdir()) == []


def test_no_checkpoint_restores_nothing(make_service, tmp_path):
    assert make_service().restore(tmp_path) is None
    assert make_service().restore(tmp_path / "missing") is None


def test_restore_needs_an_empty_service(make_service, tmp_path):
    source = make_service(shards=1)
    build_state(source, pushes=1)
    source.checkpoint(tmp_path)
    with pytest.raises(FailedPreconditionError, match="empty service"):
        source.restore(tmp_path)


def test_a_checkpoint_restores_only_on_the_server_that_wrote_it(make_service, tmp_path):
    """Server 1 of 2 holds other rows than server 0 of 2 or server 1 of 3: a
    swapped or resized folder is refused, never silently misplaced."""
    source = make_service(server_index=1, num_servers=2)
    source.create_variable("w", shape=(4, 2), initializer="ones")
    source.checkpoint(tmp_path)
    for index, count in ((0, 2), (1, 3), (0, 1)):
        with pytest.raises(CheckpointError, match="written by server 1 of 2"):
            make_service(server_index=index, num_servers=count).restore(tmp_path)
    restored = make_service(server_index=1, num_servers=2)
    assert restored.restore(tmp_path).sequence == 1


def test_a_restored_slice_keeps_its_place_in_the_whole_variable(make_service, tmp_path):
    """A server holding rows 500..999 of a 1000-row variable still says so
    after a restart (workers that discover it place its rows by it)."""
    source = make_service(server_index=1, num_servers=2)
    source.create_variable(
        "emb", shape=(500, 4), global_shape=(1000, 4), row_offset=500
    )
    source.checkpoint(tmp_path)
    restored = make_service(server_index=1, num_servers=2)
    restored.restore(tmp_path)
    record = restored.variable("emb")
    assert (record.global_shape, record.row_offset) == ((1000, 4), 500)
    _, created = restored.create_variable(
        "emb", shape=(500, 4), global_shape=(1000, 4), row_offset=500
    )
    assert not created  # a worker attaches to it as before the restart


def test_checkpoints_are_renamed_into_place_and_pruned(make_service, tmp_path):
    service = make_service(shards=2, keep_checkpoints=2)
    build_state(service, pushes=1)
    for _ in range(4):
        service.checkpoint(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000003", "ckpt-000004"]
    files = sorted(p.name for p in (tmp_path / "ckpt-000004").iterdir())
    assert files == [
        "extra.bin",
        "manifest.json",
        "manifest.json.crc32",
        "shard-0.bin",
        "shard-1.bin",
    ]


def corrupt(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


class TestDamagedCheckpoints:
    @pytest.fixture
    def saved(self, make_service, tmp_path) -> Path:
        service = make_service(shards=1)
        build_state(service, pushes=2)
        return service.checkpoint(tmp_path).path

    def test_a_flipped_data_byte_fails_the_checksum(self, make_service, saved):
        corrupt(saved / "shard-0.bin", 100)
        with pytest.raises(
            CheckpointError, match=r"shard-0\.bin bytes .* fail their checksum"
        ):
            make_service(shards=1).restore(saved.parent)

    def test_a_truncated_file_is_named(self, make_service, saved):
        data = (saved / "shard-0.bin").read_bytes()
        (saved / "shard-0.bin").write_bytes(data[:-10])
        with pytest.raises(
            CheckpointError, match=r"shard-0\.bin has .* bytes.*truncated"
        ):
            make_service(shards=1).restore(saved.parent)

    def test_an_edited_manifest_fails_its_checksum(self, make_service, saved):
        text = (
            (saved / "manifest.json")
            .read_text()
            .replace('"iterations": 2', '"iterations": 3')
        )
        (saved / "manifest.json").write_text(text)
        with pytest.raises(CheckpointError, match=r"manifest\.json fails its checksum"):
            make_service(shards=1).restore(saved.parent)

    def test_an_unknown_format_version_is_refused(self, make_service, saved):
        manifest = json.loads((saved / "manifest.json").read_text())
        manifest["version"] = 99
        text = json.dumps(manifest).encode()
        (saved / "manifest.json").write_bytes(text)
        (saved / "manifest.json.crc32").write_text(f"{zlib.crc32(text)}\n")
        with pytest.raises(
            CheckpointError, match="format version 99; this server reads"
        ):
            make_service(shards=1).restore(saved.parent)

    def test_a_missing_manifest_checksum(self, make_service, saved):
        (saved / "manifest.json.crc32").unlink()
        with pytest.raises(CheckpointError, match="unreadable"):
            make_service(shards=1).restore(saved.parent)

    def test_a_leftover_temporary_folder_is_ignored(self, make_service, saved):
        (saved.parent / "ckpt-000009.tmp-1").mkdir()
        restored = make_service(shards=1)
        assert restored.restore(saved.parent).sequence == 1


def test_a_checkpoint_taken_while_pushes_continue_is_a_consistent_cut(
    make_service, tmp_path
):
    """The pushes inside the checkpoint are exactly steps 0..k-1, and replaying
    them serially in step order gives the checkpoint's bits."""
    rng = np.random.default_rng(5)
    plans = {
        (f"w{t}", i): [
            Gradient.sparse(
                "e", rng.integers(0, 200, 8), rng.normal(size=(8, 4)).astype(F32)
            ),
            Gradient.dense("d", rng.normal(size=64).astype(F32)),
        ]
        for t in range(4)
        for i in range(150)
    }
    service = make_service(shards=3, split_bytes=256)
    service.create_optimizer({})
    service.create_variable("e", shape=(200, 4))
    service.create_variable("d", shape=(64,))
    warmed = threading.Barrier(5)

    def worker(t: int) -> None:
        for i in range(150):
            service.apply("Adamax", plans[(f"w{t}", i)], PushId(f"w{t}", i))
            if i == 20:
                warmed.wait()  # the checkpoint starts while pushes continue

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    warmed.wait()
    service.checkpoint(tmp_path)
    for thread in threads:
        thread.join()
    restored = make_service(shards=2)
    restored.restore(tmp_path)
    included = [
        (answer[2], (client, seq))  # answer: kind, optimizer, step, iterations
        for client, entry in restored.ledger.snapshot()["clients"].items()
        for seq, *answer in entry["answers"]
    ]
    steps = sorted(step for step, _ in included)
    assert len(steps) >= 4 * 21
    assert steps == list(range(restored.optimizer("Adamax").iterations))
    replay = make_service(shards=1)
    replay.create_optimizer({})
    replay.create_variable("e", shape=(200, 4))
    replay.create_variable("d", shape=(64,))
    for _, push in sorted(included):
        replay.apply("Adamax", plans[push], PushId(*push))
    assert snapshot(replay) == snapshot(restored)


def test_periodic_checkpoints(make_service, tmp_path):
    service = make_service(shards=1, checkpoint_dir=tmp_path)
    build_state(service, pushes=1)
    done = threading.Event()
    outcomes = []

    def on_done(outcome):
        outcomes.append(outcome)
        if len(outcomes) == 2:
            done.set()

    service.start_periodic_checkpoints(0.05, on_done)
    assert done.wait(30)
    service.close()
    assert all(isinstance(o, CheckpointInfo) for o in outcomes[:2])
    assert checkpoint.latest(tmp_path) is not None


def test_a_checkpoint_killed_mid_write_leaves_the_previous_one(make_service, tmp_path):
    """A child writes checkpoint 1, then is SIGKILLed while writing checkpoint 2
    (after its first shard file): checkpoint 1 restores exactly."""
    child = subprocess.Popen(
        [sys.executable, HELPER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "checkpoint 1 written"
        assert child.stdout.readline().strip() == "checkpoint 2 shard 0 written"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    assert any(p.name.startswith("ckpt-000002.tmp") for p in tmp_path.iterdir())
    restored = make_service(shards=2)
    assert restored.restore(tmp_path).sequence == 1
    expected = make_service(shards=2)
    build_state(expected)
    assert snapshot(restored) == snapshot(expected)
