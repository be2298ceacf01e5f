"""Making files and folders durable: data and directory entries on disk.

A file's bytes survive a power cut once the file is fsynced; its *name*
survives only once the folder holding it is fsynced too, and a new folder's
name only once its parent is. The checkpoint writer and the write-ahead log
call these before anything they wrote is acknowledged.
"""

from __future__ import annotations

import os
from pathlib import Path


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
