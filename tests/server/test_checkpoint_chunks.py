"""Checkpoint arrays checked by 16 MiB chunk: a reader of some rows reads and
checks only the chunks that hold them; version 1 checkpoints still read."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from adamax_ps.server import checkpoint
from adamax_ps.server.checkpoint import CHUNK, CheckpointReader
from adamax_ps.server.errors import CheckpointError

ROWS, DIM = 40_000, 256  # 40.96 MB of float32: three chunks, the last short


class CountingReader(CheckpointReader):
    """A local reader that records every byte range it opens."""

    def __init__(self, path: Path) -> None:
        self.opened: list[tuple[int, int]] = []
        super().__init__(path)

    def _open(self, name, offset, length):
        self.opened.append((offset, length))
        return super()._open(name, offset, length)


@pytest.fixture
def saved(tmp_path) -> tuple[Path, np.ndarray]:
    """A checkpoint of one array spanning three chunks, and the array."""
    array = np.random.default_rng(0).standard_normal((ROWS, DIM)).astype(np.float32)
    writer = checkpoint.CheckpointWriter(tmp_path, 1)
    data = writer.open("shard-0.bin")
    entry = data.write(np.zeros(3, np.float32))  # so the array is not at 0
    second = data.write(array)
    writer.closed(data)
    path = writer.commit({"arrays": [entry, second]})
    return path, array


def entry_of(reader: CheckpointReader) -> dict:
    return reader.manifest["arrays"][1]


def rows_view(out: np.ndarray) -> memoryview:
    return memoryview(out.reshape(-1)).cast("B")


def test_each_chunk_has_its_crc32(saved):
    path, array = saved
    entry = entry_of(CheckpointReader(path))
    raw = array.tobytes()
    assert entry["crc32_chunks"] == [
        zlib.crc32(raw[i : i + CHUNK]) for i in range(0, len(raw), CHUNK)
    ]
    assert len(entry["crc32_chunks"]) == 3 and "crc32" not in entry


def test_rows_in_one_chunk_read_only_that_chunk(saved):
    path, array = saved
    reader = CountingReader(path)
    entry, row = entry_of(reader), DIM * 4
    lo, hi = 20_000, 20_100  # bytes 20.48 MB..20.58 MB: chunk 1 only
    out = np.empty((hi - lo, DIM), np.float32)
    reader.read_ranges(entry, [(lo * row, rows_view(out))])
    assert np.array_equal(out, array[lo:hi])
    assert reader.opened == [(entry["offset"] + CHUNK, CHUNK)]
    assert reader.bytes_read == CHUNK


def test_ranges_over_chunk_edges_are_bit_identical(saved):
    path, array = saved
    reader = CountingReader(path)
    entry, row = entry_of(reader), DIM * 4
    # A whole chunk and more (read straight into the target), and a range
    # across the last chunk's edge (through the bounce buffer).
    spans = [(1000, 33_000), (35_000, 40_000)]
    outs = [np.empty((hi - lo, DIM), np.float32) for lo, hi in spans]
    reader.read_ranges(
        entry,
        [(lo * row, rows_view(o)) for (lo, _), o in zip(spans, outs, strict=True)],
    )
    for (lo, hi), out in zip(spans, outs, strict=True):
        assert np.array_equal(out, array[lo:hi])
    assert reader.opened == [(entry["offset"], entry["nbytes"])]  # one run


def test_a_flipped_byte_fails_only_the_reads_of_its_chunk(saved):
    path, array = saved
    entry, row = entry_of(CheckpointReader(path)), DIM * 4
    with open(path / "shard-0.bin", "r+b") as f:  # a byte of chunk 2
        f.seek(entry["offset"] + 2 * CHUNK + 5)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    reader = CheckpointReader(path)
    out = np.empty((100, DIM), np.float32)
    reader.read_ranges(entry, [(0, rows_view(out))])  # chunk 0: intact
    assert np.array_equal(out, array[:100])
    with pytest.raises(CheckpointError, match="fail their checksum"):
        reader.read_ranges(entry, [(39_000 * row, rows_view(out))])
    with pytest.raises(CheckpointError, match="fail their checksum"):
        reader.read(entry)


def test_a_version_1_checkpoint_is_read_whole(saved):
    """Version 1 had one crc32 per array: any part of it reads all of it."""
    path, array = saved
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["version"] = 1
    data = (path / "shard-0.bin").read_bytes()
    for entry in manifest["arrays"]:
        chunk = data[entry["offset"] : entry["offset"] + entry["nbytes"]]
        del entry["crc32_chunks"]
        entry["crc32"] = zlib.crc32(chunk)
    text = json.dumps(manifest).encode()
    (path / "manifest.json").write_bytes(text)
    (path / "manifest.json.crc32").write_bytes(b"%d\n" % zlib.crc32(text))
    reader = CountingReader(path)
    entry = entry_of(reader)
    assert np.array_equal(reader.read(entry), array)
    out = np.empty((10, DIM), np.float32)
    reader.opened.clear()
    reader.read_ranges(entry, [(100 * DIM * 4, rows_view(out))])
    assert np.array_equal(out, array[100:110])
    assert reader.opened == [(entry["offset"], entry["nbytes"])]
    entry["crc32"] ^= 1
    with pytest.raises(CheckpointError, match="fail their checksum"):
        reader.read_ranges(entry, [(0, rows_view(out))])


def test_targets_smaller_than_the_array_are_refused(saved):
    path, _ = saved
    reader = CheckpointReader(path)
    out = np.empty((ROWS - 1, DIM), np.float32)
    with pytest.raises(CheckpointError, match="targets of"):
        reader.read_into(entry_of(reader), [rows_view(out)])


def test_each_chunk_is_sent_to_disk_as_it_is_written(tmp_path, monkeypatch):
    """The writeback of every chunk starts as soon as the chunk is written
    (``durable.start_writeback``): the ranges asked for are the array's
    bytes in the file, in order, chunk by chunk."""
    started: list[tuple[int, int]] = []
    monkeypatch.setattr(
        checkpoint, "start_writeback", lambda fd, at, n: started.append((at, n))
    )
    array = np.ones((ROWS, DIM), np.float32)
    writer = checkpoint.CheckpointWriter(tmp_path, 1)
    data = writer.open("shard-0.bin")
    data.write(np.zeros(3, np.float32))
    entry = data.write(array)
    writer.closed(data)
    writer.commit({"arrays": [entry]})
    mine = [(at, n) for at, n in started if at >= entry["offset"]]
    assert [n for _, n in mine] == [CHUNK, CHUNK, array.nbytes - 2 * CHUNK]
    assert [at for at, _ in mine] == [entry["offset"] + i * CHUNK for i in range(3)]


def test_starting_writeback_is_harmless_where_it_is_there(tmp_path):
    from adamax_ps.server import durable, libc

    path = tmp_path / "f.bin"
    with open(path, "wb") as f:
        f.write(b"x" * 100_000)
        f.flush()
        durable.start_writeback(f.fileno(), 0, 100_000)
    assert path.read_bytes() == b"x" * 100_000
    if Path("/proc/self").exists():  # Linux: the call is there, not skipped
        assert libc.function("sync_file_range") is not None
    assert libc.function("no_such_function_here") is None
