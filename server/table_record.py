"""What a hash-keyed table is on one server: its settings, its shard count
and its change counter (``Versions``), shared by its parts' code."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adamax_ps.server.table_config import TableConfig


class Versions:
    """A table's change counter on one server: every push, assignment and
    eviction round takes the next number under its shard locks and stamps
    the rows (and tombstones) it changes, so a delta export ``since`` one
    number holds exactly the changes after it. Logged with each change."""

    def __init__(self, current: int = 0) -> None:
        self.current = current
        self._lock = threading.Lock()

    def take(self, logged: int | None = None) -> int:
        """The next number (or a replayed change's ``logged`` one)."""
        with self._lock:
            self.current = (
                self.current + 1 if logged is None else max(self.current, logged)
            )
            return self.current if logged is None else logged


@dataclass(frozen=True)
class TableRecord:
    """What a table is (immutable once created), and its change counter."""

    name: str
    config: TableConfig
    num_shards: int
    versions: Versions = field(default_factory=Versions, compare=False, repr=False)
    keyed = True

    @property
    def dtype(self) -> np.dtype:
        return self.config.dtype

    @property
    def row_size(self) -> int:
        return self.config.dim

    @property
    def shards(self) -> tuple[int, ...]:
        return tuple(range(self.num_shards))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config.to_json()}
