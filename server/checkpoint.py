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

Arrays are written straight from their memory (no copy) in chunks, the crc32
of each chunk computed on a second thread while the next is written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from adamax_ps.server.durable import fsync_dir, make_dirs
from adamax_ps.server.errors import CheckpointError

FORMAT = "adamax-ps-checkpoint"
VERSION = 1
ALIGN = 64
CHUNK = 16 << 20
_NAME = re.compile(r"^ckpt-(\d+)$")


def _bytes(array: np.ndarray) -> memoryview:
    """The array's own memory as bytes (C-contiguous arrays only: no copy)."""
    if not array.flags.c_contiguous:
        raise ValueError("checkpointed arrays must be C-contiguous")
    return memoryview(array.reshape(-1)).cast("B")


class DataFile:
    """One ``.bin`` file being written: arrays appended, each with its crc32."""

    def __init__(self, path: Path, pool: ThreadPoolExecutor) -> None:
        self.name = path.name
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._pool = pool
        self._offset = 0

    def write(self, array: np.ndarray) -> dict[str, Any]:
        """Append one array; returns its entry (file, offset, nbytes, crc32)."""
        pad = -self._offset % ALIGN
        if pad:
            self._file.write(b"\0" * pad)
            self._offset += pad
        data = _bytes(array)
        crc = self._pool.submit(int, 0)
        for start in range(0, len(data), CHUNK):
            chunk = data[start : start + CHUNK]
            crc = self._pool.submit(_chain_crc, crc, chunk)
            self._file.write(chunk)
        entry = {
            "file": self.name,
            "offset": self._offset,
            "nbytes": len(data),
            "crc32": crc.result(),
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


def _chain_crc(previous, chunk: memoryview) -> int:
    return zlib.crc32(chunk, previous.result())


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
            ("manifest.json.crc32", b"%d\n" % zlib.crc32(text)),
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

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._load_manifest()

    def _load_manifest(self) -> None:
        try:
            text = self._whole("manifest.json")
            expected = int(self._whole("manifest.json.crc32").decode().strip())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint {self.path} is unreadable: {e}") from e
        if zlib.crc32(text) != expected:
            raise CheckpointError(
                f"checkpoint {self.path}: manifest.json fails its checksum (corrupt)"
            )
        self.manifest = json.loads(text)
        if self.manifest.get("format") != FORMAT:
            raise CheckpointError(f"{self.path} is not an adamax-ps checkpoint")
        if self.manifest.get("version") != VERSION:
            raise CheckpointError(
                f"checkpoint {self.path} has format version "
                f"{self.manifest.get('version')!r}; this server reads version {VERSION}"
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

        The targets' sizes must add up to the array's; the crc32 is checked
        over all of them.
        """
        total = 0
        with ThreadPoolExecutor(1, thread_name_prefix="crc32") as pool:
            crc = pool.submit(int, 0)
            with self._open(entry["file"], entry["offset"], entry["nbytes"]) as f:
                for target in targets:
                    for start in range(0, len(target), CHUNK):
                        view = target[start : start + CHUNK]
                        if f.readinto(view) != len(view):
                            raise CheckpointError(
                                f"{self.path}: {entry['file']} is short"
                            )
                        crc = pool.submit(_chain_crc, crc, view)
                    total += len(target)
            crc = crc.result()
        if total != entry["nbytes"] or crc != entry["crc32"]:
            raise CheckpointError(
                f"checkpoint {self.path}: {entry['file']} bytes "
                f"{entry['offset']}..{entry['offset'] + entry['nbytes']} fail their "
                "checksum (corrupt)"
            )

    def read_ranges(
        self, entry: dict[str, Any], ranges: Iterable[tuple[int, memoryview]]
    ) -> None:
        """Copy byte ranges of an array (``(offset in the array, target)``,
        non-overlapping) into their targets in one pass over its bytes, the
        crc32 checked over all of them: what a resized cluster's server takes
        of another server's saved array (memory: one chunk, not the array)."""
        wanted = sorted(ranges, key=lambda r: r[0])
        total, crc = entry["nbytes"], 0
        buffer = bytearray(min(CHUNK, max(total, 1)))
        with self._open(entry["file"], entry["offset"], total) as f:
            position = 0
            while position < total:
                view = memoryview(buffer)[: min(CHUNK, total - position)]
                if f.readinto(view) != len(view):
                    raise CheckpointError(f"{self.path}: {entry['file']} is short")
                crc = zlib.crc32(view, crc)
                end = position + len(view)
                for start, target in wanted:
                    lo, hi = max(start, position), min(start + len(target), end)
                    if hi > lo:
                        target[lo - start : hi - start] = view[
                            lo - position : hi - position
                        ]
                position = end
        if crc != entry["crc32"]:
            raise CheckpointError(
                f"checkpoint {self.path}: {entry['file']} bytes "
                f"{entry['offset']}..{entry['offset'] + total} fail their checksum "
                "(corrupt)"
            )
