"""Making files and folders durable: data and directory entries on disk.

A file's bytes survive a power cut once the file is fsynced; its *name*
survives only once the folder holding it is fsynced too, and a new folder's
name only once its parent is. The checkpoint writer and the write-ahead log
call these before anything they wrote is acknowledged.

``start_writeback`` asks the kernel to start writing a file's range to disk
now, without waiting: a checkpoint calls it after each chunk, so the disk
works while the next chunks are copied, and the final fsync finds little
left to do (as RocksDB's ``bytes_per_sync`` and PostgreSQL's
``checkpoint_flush_after``). Left to itself the kernel starts late, lets
gigabytes of dirty pages pile up, then throttles the writer.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from adamax_ps.server import libc

SYNC_FILE_RANGE_WRITE = 2  # start writeback of the range's dirty pages; no wait


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a new or renamed file or folder) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """``mkdir -p`` whose new folders' entries are durable: each folder
    created is fsynced in its parent (existing ones are left alone)."""
    path = Path(path)
    missing = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue  # made meanwhile by someone else, who syncs it
        fsync_dir(folder.parent)


def write_file(path: Path, data: bytes) -> None:
    """Write a small file atomically and durably: a partial file, fsynced,
    renamed over ``path``, and the folder fsynced."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    fsync_dir(path.parent)


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing bytes ``offset`` to ``offset + nbytes`` of ``fd`` to
    disk, not waiting (Linux ``sync_file_range``; elsewhere nothing). Not a
    durability step: only the fsync after it is."""
    call = libc.function(
        "sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint
    )
    if call is not None:
        call(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE)
