"""The write-ahead log of ``--durability wal``: acknowledged means on disk.

Every change to a server's state (a push with the step it took, a step
reservation, a variable or optimizer created, an assignment) is appended as a
record; a push is answered only once its record is fsynced, so every answered
push survives a SIGKILL or a power cut. Concurrent pushes share one fsync
(group commit): the first waiter writes and syncs everything appended so far,
the others wait for it.

Records: ``[u32 length][u32 crc32][payload]``, little-endian, where the payload
is a framed body (``codec.frame``: a JSON header, then raw tensor bytes).
Segments: ``wal-<E>.log``, numbered upwards. A checkpoint's cut rotates to a
new segment and records its number in the checkpoint: a restore replays that
segment and the later ones; older segments are deleted once the checkpoint is
safely on disk. Reading stops at a torn last
record (it was never answered); a bad record followed by more data is
corruption and a clear error.
"""

from __future__ import annotations

import os
import re
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adamax_ps.proto import codec
from adamax_ps.server.checkpoint import fsync_dir
from adamax_ps.server.errors import CheckpointError

_NAME = re.compile(r"^wal-(\d+)\.log$")
_HEADER = 8
MAX_RECORD = 1 << 40


def segment_path(folder: Path, number: int) -> Path:
    return folder / f"wal-{number:06d}.log"


def segments(folder: Path) -> list[tuple[int, Path]]:
    """Log segments in ``folder`` as (number, path), in order."""
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))
    ]
    return sorted(found)


class WriteAheadLog:
    """Appends records to the current segment; see the module docstring."""

    def __init__(self, folder: Path, segment: int) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._cond = threading.Condition()
        self._pending: list[bytes | memoryview] = []
        self._appended = 0  # records appended
        self._durable = 0  # records on disk
        self._flushing = False
        self._file = open(segment_path(self.folder, segment), "ab")  # noqa: SIM115
        self.segment = segment
        self.bytes_written = 0
        self.syncs = 0

    @property
    def appended(self) -> int:
        """Records appended since this log was opened."""
        return self._appended

    @property
    def lock(self) -> threading.Condition:
        """Held across a checkpoint's cut so no record lands in the wrong segment."""
        return self._cond

    def append(
        self, kind: str, header: dict[str, Any], arrays: Sequence[np.ndarray] = ()
    ) -> int:
        """Add a record (not yet durable); returns its number for ``wait``."""
        tensors = [codec.describe(a) for a in arrays]
        pieces = codec.frame({"kind": kind, **header, "tensors": tensors}, list(arrays))
        length = sum(len(p) for p in pieces)
        crc = 0
        for piece in pieces:
            crc = zlib.crc32(piece, crc)
        prefix = length.to_bytes(4, "little") + crc.to_bytes(4, "little")
        # Copy now: the arrays may be views of buffers their owner reuses.
        record = b"".join((prefix, *pieces))
        with self._cond:
            self._pending.append(record)
            self._appended += 1
            return self._appended

    def wait(self, number: int) -> None:
        """Return once record ``number`` (and every earlier one) is on disk."""
        with self._cond:
            while self._durable < number:
                if self._flushing:
                    self._cond.wait()
                    continue
                self._flushing = True
                batch, self._pending = self._pending, []
                target = self._appended
                self._cond.release()
                try:
                    self._write(batch)
                finally:
                    self._cond.acquire()
                    self._flushing = False
                self._durable = target
                self._cond.notify_all()

    def _write(self, batch: list[bytes | memoryview]) -> None:
        if batch:
            self._file.writelines(batch)
            self._file.flush()
            self.bytes_written += sum(len(b) for b in batch)
        os.fsync(self._file.fileno())
        self.syncs += 1

    def rotate(self) -> int:
        """Start the next segment (call with ``lock`` held, at a cut); its number."""
        while self._flushing:
            self._cond.wait()
        batch, self._pending = self._pending, []
        self._write(batch)
        self._durable = self._appended
        self._file.close()
        self.segment += 1
        self._file = open(segment_path(self.folder, self.segment), "ab")  # noqa: SIM115
        fsync_dir(self.folder)
        return self.segment

    def prune(self, before: int) -> None:
        """Delete segments before ``before`` (a checkpoint holds their changes)."""
        for number, path in segments(self.folder):
            if number < before:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        with self._cond:
            while self._flushing:
                self._cond.wait()
            self._write(self._pending)
            self._pending = []
            self._durable = self._appended
            self._file.close()


def read(folder: Path, since: int) -> Iterator[tuple[dict[str, Any], list[np.ndarray]]]:
    """Every record of the segments numbered ``since`` and up, in order.

    A torn record at the very end of the last segment is cut off the file (it
    was never acknowledged) and reading stops; any other damage is an error.
    """
    found = [(n, p) for n, p in segments(Path(folder)) if n >= since]
    for position, (_, path) in enumerate(found):
        last = position == len(found) - 1
        yield from _read_segment(path, last)


def _read_segment(path: Path, last: bool) -> Iterator[tuple[dict, list[np.ndarray]]]:
    data = memoryview(path.read_bytes())
    offset = 0
    while offset < len(data):
        problem = None
        if len(data) - offset < _HEADER:
            problem = "a torn record header"
        else:
            length = int.from_bytes(data[offset : offset + 4], "little")
            crc = int.from_bytes(data[offset + 4 : offset + 8], "little")
            payload = data[offset + _HEADER : offset + _HEADER + length]
            if length == 0:
                problem = "an empty record"
            elif length > MAX_RECORD or len(payload) < length:
                problem = "a torn record"
            elif zlib.crc32(payload) != crc:
                problem = "a record that fails its checksum"
        if problem is not None:
            if last and _nothing_valid_after(data, offset):
                with open(path, "r+b") as f:  # drop the torn tail
                    f.truncate(offset)
                    f.flush()
                    os.fsync(f.fileno())
                return
            raise CheckpointError(
                f"write-ahead log {path} holds {problem} at byte {offset}, followed "
                "by more data: the log is corrupt"
            )
        header, body = codec.unframe(payload)
        arrays = codec.split_framed(header.pop("tensors", []), body, MAX_RECORD)
        yield header, arrays
        offset += _HEADER + length


def _nothing_valid_after(data: memoryview, offset: int) -> bool:
    """Whether the damage at ``offset`` is the end of the log (a torn write)
    rather than a bad record in the middle: no intact record starts later."""
    for start in range(offset + 1, len(data) - _HEADER + 1):
        length = int.from_bytes(data[start : start + 4], "little")
        end = start + _HEADER + length
        if 0 < length <= len(data) - start - _HEADER and end == len(data):
            crc = int.from_bytes(data[start + 4 : start + 8], "little")
            if zlib.crc32(data[start + _HEADER : end]) == crc:
                return False
    return True
