"""Damaged files under a real ``adamax-ps serve``: torn log records and
checkpoints that fail their checksums.

A server killed with SIGKILL is restarted on a folder whose files were
damaged in between. A damaged record in the middle of a log segment, or a
damaged newest checkpoint that nothing can stand in for, stops the restart
with an error naming the files; a newest checkpoint whose predecessor and
log still hold every change is passed over, and the state comes back whole.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.servers import Server

from adamax_ps.client import Adamax, IndexedSlices, connect

pytestmark = pytest.mark.slow

F32 = np.float32


def server(folder: Path, log: Path, wal: bool = True) -> Server:
    args = ["--grpc-port", "0", "--http-port", "0", "--shards", "2"]
    args += ["--checkpoint-dir", str(folder)]
    if wal:
        args += ["--durability", "wal"]
    return Server(args, log)


def model(cluster):
    opt = Adamax(learning_rate=0.01, cluster=cluster)
    emb = cluster.variable("emb", shape=(200, 8), initializer="glorot_uniform")
    dense = cluster.variable("dense", shape=(16,), initializer="ones")
    return opt, emb, dense


def push(cluster, calls: range) -> None:
    opt, emb, dense = model(cluster)
    for n in calls:
        rng = np.random.default_rng(n)
        rows = IndexedSlices(
            rng.normal(size=(10, 8)).astype(F32), rng.integers(0, 200, 10)
        )
        opt.apply_gradients([(rows, emb), (rng.normal(size=16).astype(F32), dense)])


def state(address: str) -> tuple[list[bytes], int]:
    with connect(address) as cluster:
        opt, emb, dense = model(cluster)
        arrays = [emb.numpy(), dense.numpy(), *opt.get_weights()]
        return [a.tobytes() for a in arrays], int(opt.iterations)


def reference(tmp_path: Path, calls: int) -> tuple[list[bytes], int]:
    """The same calls on a fault-free server."""
    fresh = Server(["--grpc-port", "0", "--http-port", "0"], tmp_path / "ref.log")
    fresh.start()
    try:
        with connect(fresh.grpc_address) as cluster:
            push(cluster, range(calls))
        return state(fresh.grpc_address)
    finally:
        fresh.kill()


def restart_fails(ps: Server, log: Path) -> str:
    """Start expecting a refusal; the server's own words."""
    with pytest.raises(RuntimeError, match="server exited with 1"):
        ps.start()
    return log.read_text()


def shard_file(checkpoint: Path) -> Path:
    """The checkpoint's largest shard file (one that holds arrays)."""
    return max(checkpoint.glob("shard-*.bin"), key=lambda p: p.stat().st_size)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def checkpoint_with_history(tmp_path: Path, wal: bool) -> tuple[Server, Path, Path]:
    """10 calls, checkpoint 1, 10 calls, checkpoint 2, 10 calls, SIGKILL."""
    folder, log = tmp_path / "ps", tmp_path / "ps.log"
    ps = server(folder, log, wal).start()
    try:
        with connect(ps.grpc_address) as cluster:
            push(cluster, range(10))
            cluster.checkpoint()
            push(cluster, range(10, 20))
            cluster.checkpoint()
            push(cluster, range(20, 30))
    finally:
        ps.kill()
    return ps, folder, log


def six_calls_logged(tmp_path: Path) -> tuple[Server, Path, Path]:
    """6 calls on a --durability wal server, then SIGKILL: the server (to
    restart), its log file, and its first log segment."""
    folder, log = tmp_path / "ps", tmp_path / "ps.log"
    ps = server(folder, log).start()
    try:
        with connect(ps.grpc_address) as cluster:
            push(cluster, range(6))
    finally:
        ps.kill()
    return ps, log, folder / "wal" / "wal-000000.log"


def test_a_record_damaged_mid_segment_stops_the_restart(tmp_path):
    ps, log, segment = six_calls_logged(tmp_path)
    first = int.from_bytes(segment.read_bytes()[:4], "little")  # a record's length
    flip(segment, 8 + first // 2)  # inside the first record; many follow it
    text = restart_fails(ps, log)
    assert f"write-ahead log {segment} holds a record that fails its checksum" in text
    assert "followed by more data: the log is corrupt" in text


def test_a_torn_last_record_is_dropped_and_the_rest_replayed(tmp_path):
    """A record cut short at the end of the log was never acknowledged: the
    restart drops it and keeps everything before it."""
    ps, _, segment = six_calls_logged(tmp_path)
    data = segment.read_bytes()
    offsets, at = [], 0
    while at < len(data):
        offsets.append(at)
        at += 8 + int.from_bytes(data[at : at + 4], "little")
    segment.write_bytes(data[: offsets[-1] + 20])  # the last push, torn
    ps.start()
    try:
        assert state(ps.grpc_address) == reference(tmp_path, 5)
    finally:
        ps.kill()
    assert segment.stat().st_size == offsets[-1]  # the torn tail cut off


def test_a_damaged_newest_checkpoint_gives_way_to_the_one_before_and_the_log(
    tmp_path,
):
    ps, folder, log = checkpoint_with_history(tmp_path, wal=True)
    newest = folder / "ckpt-000002"
    flip(shard_file(newest), 70)
    ps.start()
    try:
        assert state(ps.grpc_address) == reference(tmp_path, 30)
    finally:
        ps.kill()
    text = log.read_text()
    assert f"checkpoint {newest} is damaged" in text
    assert f"starting from {folder / 'ckpt-000001'} and its log" in text


def test_without_the_log_a_damaged_newest_checkpoint_is_an_error_naming_both(
    tmp_path,
):
    ps, folder, log = checkpoint_with_history(tmp_path, wal=False)
    flip(shard_file(folder / "ckpt-000002"), 70)
    text = restart_fails(ps, log)
    assert f"the newest checkpoint {folder / 'ckpt-000002'} is damaged" in text
    assert f"the one before it, {folder / 'ckpt-000001'}, cannot stand in" in text
    assert "without --durability wal" in text


def test_a_damaged_newest_checkpoint_whose_gap_the_log_lost_is_an_error(tmp_path):
    ps, folder, log = checkpoint_with_history(tmp_path, wal=True)
    manifest = json.loads((folder / "ckpt-000001" / "manifest.json").read_text())
    needed = folder / "wal" / f"wal-{manifest['wal_segment']:06d}.log"
    needed.unlink()
    flip(folder / "ckpt-000002" / "manifest.json", 10)
    text = restart_fails(ps, log)
    assert f"the newest checkpoint {folder / 'ckpt-000002'} is damaged" in text
    assert f"write-ahead log segment {manifest['wal_segment']}" in text
