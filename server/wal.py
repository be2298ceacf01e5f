"""The write-ahead log of ``--durability wal``: acknowledged means on disk.

Every change to a server's state (a push with the step it took, a step
reservation, a variable or optimizer created, an assignment) is appended as a
record; a change is answered only once its record is written and fdatasynced,
so every answered change survives a SIGKILL or a power cut. Concurrent
changes share one sync (group commit): the first waiter writes and syncs
everything appended so far, the others wait for it.

Fail-stop: once a write or a sync fails (disk full, EIO), the log is
*failed* for good. After a failed fsync the kernel may have dropped the dirty
pages and cleared the error, so a later sync that succeeds proves nothing:
no record after the last good sync is ever reported durable, every waiter for
one gets ``WritesStoppedError``, and nothing more is written to the segment.
The server then refuses changes until it is restarted and replays what is on
disk.

Records: ``[u32 length][u32 crc32][payload]``, little-endian, where the payload
is a framed body (``codec.frame``: a JSON header, then raw tensor bytes).
Segments: ``wal-<E>.log``, numbered upwards, each one's name made durable
(its folder fsynced) before any record in it is acknowledged. A checkpoint's
cut rotates to a new segment and records its number in the checkpoint: a
restore replays that segment and the later ones, which must all be there;
segments are deleted once no kept checkpoint needs them. Reading stops at a
torn last record (it was never answered); a bad record followed by more data
is corruption and a clear error.
"""

from __future__ import annotations

import mmap
import os
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from zlib_ng import zlib_ng

from adamax_ps.proto import codec
from adamax_ps.server.durable import fsync_dir, make_dirs
from adamax_ps.server.errors import CheckpointError, WritesStoppedError

_NAME = re.compile(r"^wal-(\d+)\.log$")
_HEADER = 8
MAX_RECORD = 1 << 40
_IOV_MAX = 512  # pieces per writev call (the kernel's limit is 1024)


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


def encode_record(
    kind: str, header: dict[str, Any], arrays: Sequence[np.ndarray] = ()
) -> bytes:
    """One record's bytes: length, crc32, then the framed payload (a copy:
    the arrays may be views of buffers their owner reuses)."""
    tensors = [codec.describe(a) for a in arrays]
    pieces = codec.frame({"kind": kind, **header, "tensors": tensors}, list(arrays))
    length = sum(len(p) for p in pieces)
    crc = 0
    for piece in pieces:
        crc = zlib_ng.crc32(piece, crc)
    prefix = length.to_bytes(4, "little") + crc.to_bytes(4, "little")
    return b"".join((prefix, *pieces))


class WriteAheadLog:
    """Appends records to the current segment; see the module docstring."""

    def __init__(self, folder: Path, segment: int) -> None:
        self.folder = Path(folder)
        make_dirs(self.folder)
        self._cond = threading.Condition()
        self._pending: list[bytes] = []
        self._appended = 0  # records appended
        self._durable = 0  # records on disk
        self._flushing = False
        self.failure: str | None = None  # why the log stopped, once it has
        self.segment = segment
        self._fd = self._open(segment)
        self.bytes_written = 0
        self.syncs = 0

    def _open(self, number: int) -> int:
        """Open (or create) a segment for appending; its name is durable
        before anything written into it can be acknowledged."""
        fd = os.open(
            segment_path(self.folder, number),
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
            0o644,
        )
        try:
            fsync_dir(self.folder)
        except BaseException:
            os.close(fd)
            raise
        return fd

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
        """Add a record (not yet durable); returns its number for ``wait``.
        A failed log takes no more records: waiting for one raises."""
        record = encode_record(kind, header, arrays)
        with self._cond:
            self._appended += 1
            if self.failure is None:
                self._pending.append(record)
            return self._appended

    def wait(self, number: int) -> None:
        """Return once record ``number`` (and every earlier one) is on disk;
        ``WritesStoppedError`` if the log failed before it got there."""
        with self._cond:
            while self._durable < number:
                if self.failure is not None:
                    raise WritesStoppedError(self.failure)
                if self._flushing:
                    self._cond.wait()
                    continue
                self._flushing = True
                batch, self._pending = self._pending, []
                target = self._appended
                self._cond.release()
                problem: str | None = "the write was interrupted"
                try:
                    self._write(batch)
                    problem = None
                except OSError as e:
                    problem = str(e)
                finally:
                    self._cond.acquire()
                    self._flushing = False
                    if problem is None:
                        self._durable = target
                    else:
                        self._fail(problem)
                    self._cond.notify_all()

    def _write(self, batch: list[bytes]) -> None:
        """Write every record of ``batch`` in order, then fdatasync.
        ``OSError`` names the operation and the segment."""
        path = segment_path(self.folder, self.segment)
        try:
            for start in range(0, len(batch), _IOV_MAX):
                _write_all(self._fd, batch[start : start + _IOV_MAX])
        except OSError as e:
            raise OSError(e.errno, f"write to {path} failed: {e.strerror}") from None
        try:
            os.fdatasync(self._fd)
        except OSError as e:
            raise OSError(
                e.errno, f"fdatasync of {path} failed: {e.strerror}"
            ) from None
        self.bytes_written += sum(len(b) for b in batch)
        self.syncs += 1

    def _fail(self, problem: str) -> None:
        """Stop for good (call with the lock held); the first reason stays."""
        if self.failure is None:
            self.failure = f"the write-ahead log failed: {problem}"
        self._pending = []

    def rotate(self) -> int:
        """Start the next segment (call with ``lock`` held, at a cut); its number."""
        while self._flushing:
            self._cond.wait()
        if self.failure is not None:
            raise WritesStoppedError(self.failure)
        batch, self._pending = self._pending, []
        try:
            self._write(batch)
            fd = self._open(self.segment + 1)
        except OSError as e:
            self._fail(str(e))
            self._cond.notify_all()
            raise WritesStoppedError(self.failure) from None
        self._durable = self._appended
        os.close(self._fd)
        self._fd = fd
        self.segment += 1
        self._cond.notify_all()
        return self.segment

    def prune(self, before: int) -> None:
        """Delete segments before ``before`` (kept checkpoints hold their changes)."""
        for number, path in segments(self.folder):
            if number < before:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        """Write and sync what is pending (unless the log failed), then close."""
        with self._cond:
            while self._flushing:
                self._cond.wait()
            if self.failure is None and self._pending:
                try:
                    self._write(self._pending)
                    self._durable = self._appended
                except OSError as e:
                    self._fail(str(e))
            self._pending = []
            os.close(self._fd)
            self._cond.notify_all()


def _write_all(fd: int, pieces: list[bytes]) -> None:
    """``writev`` until every byte of ``pieces`` is written."""
    views = [memoryview(p) for p in pieces if len(p)]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def check_segments(folder: Path, since: int, what: str) -> None:
    """Refuse a log that lacks a segment from ``since`` on: a missing one
    would be replayed as if its changes had never happened."""
    numbers = [n for n, _ in segments(Path(folder))]
    later = [n for n in numbers if n >= since]
    if since > 0 and later[:1] != [since]:
        raise CheckpointError(
            f"{what} needs write-ahead log segment {since} and the later ones, "
            f"but {folder} holds segments {numbers or 'none'}"
        )
    if since == 0 and later and later[0] != 0:
        raise CheckpointError(
            f"the write-ahead log in {folder} starts at segment {later[0]}, and "
            f"no checkpoint holds the changes before it ({what})"
        )
    missing = sorted(set(range(since, later[-1] + 1)) - set(later)) if later else []
    if missing:
        raise CheckpointError(
            f"{what} needs write-ahead log segments {since} to {later[-1]}, but "
            f"{folder} lacks segment(s) {missing}"
        )


def read(folder: Path, since: int) -> Iterator[tuple[dict[str, Any], list[np.ndarray]]]:
    """Every record of the segments numbered ``since`` and up, in order.

    A torn record at the very end of the last segment is cut off the file (it
    was never acknowledged) and reading stops; any other damage is an error.
    Segments are mapped, not read into memory: only one record at a time is.
    """
    found = [(n, p) for n, p in segments(Path(folder)) if n >= since]
    for position, (_, path) in enumerate(found):
        last = position == len(found) - 1
        yield from _read_segment(path, last)


def _read_segment(path: Path, last: bool) -> Iterator[tuple[dict, list[np.ndarray]]]:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    torn_at = None
    try:
        offset = 0
        while offset < size:
            problem, length = _check_record(data, offset, size)
            if problem is not None:
                if last and _nothing_valid_after(data, offset, size):
                    torn_at = offset
                    break
                raise CheckpointError(
                    f"write-ahead log {path} holds {problem} at byte {offset}, "
                    "followed by more data: the log is corrupt"
                )
            payload = data[offset + _HEADER : offset + _HEADER + length]
            header, body = codec.unframe(payload)
            arrays = codec.split_framed(header.pop("tensors", []), body, MAX_RECORD)
            yield header, arrays
            offset += _HEADER + length
    finally:
        data.close()
    if torn_at is not None:
        with open(path, "r+b") as f:  # drop the torn tail
            f.truncate(torn_at)
            f.flush()
            os.fsync(f.fileno())


def _check_record(data: mmap.mmap, offset: int, size: int) -> tuple[str | None, int]:
    """What is wrong with the record at ``offset`` (None if intact), and its length."""
    if size - offset < _HEADER:
        return "a torn record header", 0
    length = int.from_bytes(data[offset : offset + 4], "little")
    crc = int.from_bytes(data[offset + 4 : offset + 8], "little")
    if length == 0:
        return "an empty record", 0
    if length > MAX_RECORD or size - offset - _HEADER < length:
        return "a torn record", length
    if zlib_ng.crc32(data[offset + _HEADER : offset + _HEADER + length]) != crc:
        return "a record that fails its checksum", length
    return None, length


def _nothing_valid_after(data: mmap.mmap, offset: int, size: int) -> bool:
    """Whether the damage at ``offset`` is the end of the log (a torn write)
    rather than a bad record in the middle: no intact record starts later
    and runs to the end of the segment."""
    for start in range(offset + 1, size - _HEADER + 1):
        length = int.from_bytes(data[start : start + 4], "little")
        if length > 0 and start + _HEADER + length == size:
            crc = int.from_bytes(data[start + 4 : start + 8], "little")
            if zlib_ng.crc32(data[start + _HEADER : size]) == crc:
                return False
    return True
