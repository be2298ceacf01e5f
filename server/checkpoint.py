"""Checkpoint files: atomic on disk, checksummed, no pickle.

A checkpoint is a folder ``ckpt-<sequence>`` under the checkpoint root::

    ckpt-000012/
        shard-0.bin ... shard-N.bin   raw array bytes, each array 64-byte aligned
        extra.bin                     small arrays (optimizer extra weights)
        manifest.json                 what every byte range holds, with crc32s
        manifest.json.crc32           crc32 of manifest.json's exact bytes

It is written into ``ckpt-<sequence>.tmp-<pid>``; every file is fsynced, then
the folder is renamed into place and the root is fsynced. A crash at any moment
leaves either the new checkpoint complete or not there at all, and the last
good one untouched. Readers take the highest-numbered complete folder and check
every byte against its crc32: a mismatch, a short file or an unknown format
version is a ``CheckpointError`` naming the file, never silent garbage.

Arrays are written straight from their memory (no copy) in 16 MiB chunks,
each chunk's crc32 computed on a second thread while the next is written,
and each chunk's writeback to disk started at once (``durable``).
Checking by chunk lets a reader that wants some rows of an array (a server
of a resized cluster, ``cut_import``) read and check only the chunks holding
them. Version 1 checkpoints (one crc32 per array) are still read, whole.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from zlib_ng import zlib_ng

from adamax_ps.server.durable import fsync_dir, make_dirs, start_writeback
from adamax_ps.server.errors import CheckpointError

FORMAT = "adamax-ps-checkpoint"
VERSION = 2
READS = (1, 2)  # the format versions this code reads
ALIGN = 64
CHUNK = 16 << 20
_NAME = re.compile(r"^ckpt-(\d+)$")


def _bytes(array: np.ndarray) -> memoryview:
    """The array's own memory as bytes (C-contiguous arrays only: no copy)."""
    if not array.flags.c_contiguous:
        raise ValueError("checkpointed arrays must be C-contiguous")
    return memoryview(array.reshape(-1)).cast("B")


class DataFile:
    """One ``.bin`` file being written: arrays appended, each with the crc32
    of each of its chunks."""

    def __init__(self, path: Path, pool: ThreadPoolExecutor) -> None:
        self.name = path.name
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._pool = pool
        self._offset = 0

    def write(self, array: np.ndarray) -> dict[str, Any]:
        """Append one array; returns its entry (file, offset, nbytes, crc32s)."""
        pad = -self._offset % ALIGN
        if pad:
            self._file.write(b"\0" * pad)
            self._offset += pad
        data = _bytes(array)
        crcs = []
        for start in range(0, len(data), CHUNK):
            chunk = data[start : start + CHUNK]
            crcs.append(self._pool.submit(zlib_ng.crc32, chunk))
            self._file.write(chunk)
            # (large writes bypass the file's buffer: these bytes are the kernel's)
            start_writeback(self._file.fileno(), self._offset + start, len(chunk))
        entry = {
            "file": self.name,
            "offset": self._offset,
            "nbytes": len(data),
            "crc32_chunks": [crc.result() for crc in crcs],
            "dtype": array.dtype.str,
            "shape": list(array.shape),
        }
        self._offset += len(data)
        return entry

    def finish(self) -> dict[str, int]:
        """Hand the written bytes to the kernel (durable only after ``sync``)."""
        self._file.flush()
        return {"bytes": self._offset}

    def sync(self) -> None:
        os.fsync(self._file.fileno())
        self._file.close()


class CheckpointWriter:
    """Writes one checkpoint folder atomically (see the module docstring)."""

    def __init__(self, root: Path, sequence: int, keep: int = 2) -> None:
        self.root = Path(root)
        self.sequence = sequence
        self.keep = keep
        self.final = self.root / f"ckpt-{sequence:06d}"
        self.tmp = self.root / f"ckpt-{sequence:06d}.tmp-{os.getpid()}"
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="crc32")
        self._files: dict[str, dict[str, int]] = {}
        self._open: list[DataFile] = []
        try:
            make_dirs(self.root)
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp.mkdir()
        except OSError as e:
            raise CheckpointError(
                f"cannot write a checkpoint under {self.root}: {e}"
            ) from e

    def open(self, name: str) -> DataFile:
        data_file = DataFile(self.tmp / name, self._pool)
        self._open.append(data_file)
        return data_file

    def closed(self, data_file: DataFile) -> None:
        """The file is complete. It is fsynced at ``commit``: the kernel writes
        it back meanwhile, while the next files are written."""
        self._files[data_file.name] = data_file.finish()

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Make every file durable, write the manifest, move the folder in place."""
        for data_file in self._open:
            data_file.sync()
        self._open.clear()
        body = {
            "format": FORMAT,
            "version": VERSION,
            "sequence": self.sequence,
            **manifest,
            "files": self._files,
        }
        text = json.dumps(body, indent=1, sort_keys=False).encode()
        for name, data in (
            ("manifest.json", text),
            ("manifest.json.crc32", b"%d\n" % zlib_ng.crc32(text)),
        ):
            with open(self.tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        fsync_dir(self.tmp)
        os.rename(self.tmp, self.final)
        fsync_dir(self.root)
        self._pool.shutdown()
        return self.final

    def abort(self) -> None:
        for data_file in self._open:
            data_file._file.close()
        self._pool.shutdown()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def prune(self, protected: frozenset[Path] = frozenset()) -> None:
        """Keep the newest ``keep`` checkpoints, and the ``protected`` ones (a
        pending rescale's cut); remove older ones and stale temps."""
        complete = sorted(checkpoints(self.root))
        for _, path in complete[: -self.keep]:
            if path not in protected:
                shutil.rmtree(path, ignore_errors=True)
        for path in self.root.glob("ckpt-*.tmp-*"):
            if path != self.tmp and not _pid_alive(path.name.rsplit("-", 1)[-1]):
                shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoint folders under ``root`` as (sequence, path)."""
    if not Path(root).is_dir():
        return []
    found = []
    for path in Path(root).iterdir():
        match = _NAME.match(path.name)
        if match and (path / "manifest.json").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def wal_segment(path: Path) -> int:
    """The first log segment a checkpoint needs replayed after it (0 when its
    manifest cannot be read: then no segment may be dropped on its account)."""
    try:
        return int(
            json.loads((Path(path) / "manifest.json").read_text())["wal_segment"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def remove(path: Path) -> None:
    """Remove a checkpoint folder durably: renamed aside first (so a crash
    never leaves a half-removed one under its name), then deleted."""
    path = Path(path)
    if not path.exists():
        return
    aside = path.with_name(f"{path.name}.tmp-removed")
    os.replace(path, aside)
    fsync_dir(path.parent)
    shutil.rmtree(aside, ignore_errors=True)


def latest(root: Path) -> Path | None:
    found = checkpoints(root)
    return found[-1][1] if found else None


class CheckpointReader:
    """Reads and verifies one checkpoint folder (subclasses: another place
    holding the same files, ``checkpoint_remote``)."""

    bytes_read = 0  # bytes of arrays read and checked so far

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._load_manifest()

    def _load_manifest(self) -> None:
        try:
            text = self._whole("manifest.json")
            expected = int(self._whole("manifest.json.crc32").decode().strip())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint {self.path} is unreadable: {e}") from e
        if zlib_ng.crc32(text) != expected:
            raise CheckpointError(
                f"checkpoint {self.path}: manifest.json fails its checksum (corrupt)"
            )
        self.manifest = json.loads(text)
        if self.manifest.get("format") != FORMAT:
            raise CheckpointError(f"{self.path} is not an adamax-ps checkpoint")
        if self.manifest.get("version") not in READS:
            raise CheckpointError(
                f"checkpoint {self.path} has format version "
                f"{self.manifest.get('version')!r}; this server reads versions "
                f"{', '.join(map(str, READS))}"
            )
        for name, info in self.manifest["files"].items():
            size = self._size(name)
            if size != info["bytes"]:
                raise CheckpointError(
                    f"checkpoint {self.path}: {name} has {size} bytes, "
                    f"expected {info['bytes']} (truncated or missing)"
                )

    def close(self) -> None:
        """Let go of what reading needed (nothing, for a local folder)."""

    # Where the bytes are: files of a local folder.

    def _whole(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def _size(self, name: str) -> int:
        """A data file's size in bytes, -1 when it is missing."""
        path = self.path / name
        return path.stat().st_size if path.exists() else -1

    def _open(self, name: str, offset: int, length: int) -> BinaryIO:
        """A file to ``readinto`` from byte ``offset`` (``length`` bytes are
        wanted)."""
        f = open(self.path / name, "rb")  # noqa: SIM115 - the caller closes it
        f.seek(offset)
        return f

    def read(self, entry: dict[str, Any]) -> np.ndarray:
        """One whole array, verified."""
        out = np.empty(entry["shape"], np.dtype(entry["dtype"]))
        self.read_into(entry, [_bytes(out)])
        return out

    def read_into(self, entry: dict[str, Any], targets: Iterable[memoryview]) -> None:
        """Read an array's bytes, in order, into consecutive ``targets``.

        The targets' sizes must add up to the array's; every chunk's crc32 is
        checked (on a second thread, while the next bytes are read).
        """
        total = 0
        with ThreadPoolExecutor(1, thread_name_prefix="crc32") as pool:
            check = _Checksums(self, entry, 0, pool)
            with self._open(entry["file"], entry["offset"], entry["nbytes"]) as f:
                for target in targets:
                    start = 0
                    while start < len(target):
                        view = target[start : start + check.piece(len(target) - start)]
                        if f.readinto(view) != len(view):
                            raise CheckpointError(
                                f"{self.path}: {entry['file']} is short"
                            )
                        check.feed(view)
                        start += len(view)
                    total += len(target)
            if total != entry["nbytes"]:
                raise CheckpointError(
                    f"{self.path}: {entry['file']}: targets of {total} bytes for "
                    f"an array of {entry['nbytes']}"
                )
            check.finish(total)

    def read_ranges(
        self, entry: dict[str, Any], ranges: Iterable[tuple[int, memoryview]]
    ) -> None:
        """Copy byte ranges of an array (``(offset in the array, target)``,
        non-overlapping) into their targets, reading and checking only the
        chunks that hold them (a version 1 array: all of it, its one crc32
        covers it whole): what a resized cluster's server takes of another
        server's saved array. A chunk inside one target is read straight
        into it; the others pass through one chunk of memory."""
        wanted = sorted(ranges, key=lambda r: r[0])
        total, size = entry["nbytes"], _chunk_size(entry)
        needed = sorted(
            {
                index
                for start, target in wanted
                if len(target)
                for index in range(start // size, (start + len(target) - 1) // size + 1)
            }
        )
        buffer = None
        for first, last in _runs(needed):
            begin, end = first * size, min((last + 1) * size, total)
            check = _Checksums(self, entry, begin)
            with self._open(entry["file"], entry["offset"] + begin, end - begin) as f:
                position = begin
                while position < end:
                    stop = position + check.piece(end - position)
                    view = direct = _inside(wanted, position, stop)
                    if direct is None:
                        buffer = buffer or bytearray(CHUNK)
                        view = memoryview(buffer)[: stop - position]
                    if f.readinto(view) != len(view):
                        raise CheckpointError(f"{self.path}: {entry['file']} is short")
                    check.feed(view)
                    if direct is None:
                        _scatter(wanted, position, view)
                    position = stop
            check.finish(end - begin)


class _Checksums:
    """Checks an array's bytes, fed in order from byte ``start`` (a chunk's
    first), against the crc32 of each chunk (version 1: of the whole array).
    With a ``pool``, crc32s run on its thread (the views must stay intact
    until ``finish``); without, at once (the caller may reuse a view)."""

    def __init__(
        self,
        reader: CheckpointReader,
        entry: dict[str, Any],
        start: int,
        pool: ThreadPoolExecutor | None = None,
    ) -> None:
        self.reader, self.entry, self.pool = reader, entry, pool
        self.chunks = entry.get("crc32_chunks")
        self.size = _chunk_size(entry)
        self.position = start
        self.crc: Any = 0
        self.done: list[tuple[int, Any]] = []

    def piece(self, left: int) -> int:
        """How many of ``left`` bytes to read next: at most ``CHUNK``, never
        past the current chunk's end."""
        return min(left, CHUNK, self.size - self.position % self.size)

    def feed(self, view: memoryview) -> None:
        if self.pool is None:
            self.crc = zlib_ng.crc32(view, self.crc)
        else:
            previous = self.crc if not isinstance(self.crc, int) else None
            self.crc = self.pool.submit(_chain_crc, previous, view)
        self.position += len(view)
        if self.position % self.size == 0 or self.position == self.entry["nbytes"]:
            self.done.append(((self.position - 1) // self.size, self.crc))
            self.crc = 0

    def finish(self, nbytes: int) -> None:
        """Every chunk fed was whole and matches; ``nbytes`` were read."""
        entry = self.entry
        self.reader.bytes_read += nbytes
        expected = self.chunks if self.chunks is not None else [entry.get("crc32")]
        bad = self.position % self.size and self.position != entry["nbytes"]
        for index, crc in self.done:
            found = crc if isinstance(crc, int) else crc.result()
            bad = bad or index >= len(expected) or found != expected[index]
        if bad:
            raise CheckpointError(
                f"checkpoint {self.reader.path}: {entry['file']} bytes "
                f"{entry['offset']}..{entry['offset'] + entry['nbytes']} fail their "
                "checksum (corrupt)"
            )


def _chunk_size(entry: dict[str, Any]) -> int:
    """The bytes one crc32 of an array covers: a chunk (version 1: all)."""
    return CHUNK if "crc32_chunks" in entry else max(entry["nbytes"], 1)


def _chain_crc(previous, chunk: memoryview) -> int:
    return zlib_ng.crc32(chunk, previous.result() if previous is not None else 0)


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted ``indices``, as (first, last)."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and runs[-1][1] == index - 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


def _inside(
    wanted: list[tuple[int, memoryview]], lo: int, hi: int
) -> memoryview | None:
    """The part of one target that bytes ``lo..hi`` of the array fill
    wholly, if one does."""
    for start, target in wanted:
        if start <= lo and hi <= start + len(target):
            return target[lo - start : hi - start]
    return None


def _scatter(wanted: list[tuple[int, memoryview]], at: int, view: memoryview) -> None:
    """Copy ``view`` (bytes from ``at`` of the array) into the targets it meets."""
    end = at + len(view)
    for start, target in wanted:
        lo, hi = max(start, at), min(start + len(target), end)
        if hi > lo:
            target[lo - start : hi - start] = view[lo - at : hi - at]
