"""What a rescale keeps in a server's checkpoint folder, and where the
server stands in one.

``layout.json`` is the committed layout (written at each commit: a server's
commit point); ``rescale.json`` a rescale under way on this server (its cut,
old and new layouts). Both are written atomically (``durable.write_file``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adamax_ps.server.durable import fsync_dir, make_dirs, write_file
from adamax_ps.server.errors import CheckpointError

LAYOUT_FILE = "layout.json"
PENDING_FILE = "rescale.json"
# What layout.json holds only until the new layout's first checkpoint.
SETTLING_KEYS = ("settling", "sources", "settles_after")


@dataclass
class Standing:
    """Where this server stands: ``state`` is serving, freezing (changes in
    flight draining), frozen, adopted, spare (not in any cluster yet) or
    retired (left the cluster)."""

    state: str = "serving"
    rescale_id: str = ""
    addresses: list[str] = field(default_factory=list)
    http_addresses: list[str] = field(default_factory=list)  # the same, HTTP
    cut_sequence: int = 0
    old: tuple[int, int] | None = None  # the layout frozen (index, servers)
    new: tuple[int, int] | None = None  # the layout adopted
    importing: bool = False  # an adoption (or a rebuild) is filling the state
    settling: bool = False  # committed; the cuts stand in for a checkpoint
    rebuild_error: str = ""  # why the last try to rebuild failed


def pair(value: Any) -> tuple[int, int] | None:
    """A recorded ``[index, servers]`` as a layout, or None."""
    return (int(value[0]), int(value[1])) if value else None


class RescaleFiles:
    """The rescale records of one checkpoint folder (None: no folder)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def read(self, name: str) -> dict[str, Any] | None:
        if self.folder is None:
            return None
        path = self.folder / name
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise CheckpointError(f"{path} is damaged: {e}") from None

    def write(self, name: str, content: dict[str, Any]) -> None:
        make_dirs(self.folder)
        write_file(self.folder / name, json.dumps(content).encode())

    def settled(self, layout: dict[str, Any]) -> None:
        """Record ``layout`` (``layout.json``'s content) as settled: its state
        is a checkpoint of its own now, no longer the cuts."""
        for key in SETTLING_KEYS:
            layout.pop(key, None)
        self.write(LAYOUT_FILE, layout)

    def remove(self, name: str) -> None:
        path = self.folder / name
        if path.exists():
            path.unlink()
            fsync_dir(self.folder)
