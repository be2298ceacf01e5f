"""The evictor: a background thread that keeps hash-keyed tables within their
capacity and their time to live, off the push path.

Each round finds candidates in a part without its lock (reading the arrays a
push may be changing: candidates are only hints), then takes the shard's lock
for one batch of at most ``BATCH`` keys, checks each candidate again under
the lock and evicts (and logs) those still due. A push waits for at most one
batch: the time a batch holds the lock is measured
(``adamax_ps_table_eviction_lock_seconds``). Pushes that outrun it still
never exceed a capacity: they evict inline (``TablePart.plan``).

Capacity: when a part is over ``HIGH`` of its capacity, its lowest-scoring
rows (the policy's) go until it is at ``LOW``, leaving room for new keys
without evicting inline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from adamax_ps.server.errors import ParameterServerError
from adamax_ps.server.table_part import ROOM, TablePart
from adamax_ps.server.tables import TableRecord, Tables

BATCH = 4096
HIGH = 0.95
LOW = ROOM
log = logging.getLogger("adamax_ps.eviction")


class Evictor:
    """Evicts expired and excess rows of every table, every ``interval`` s."""

    def __init__(
        self,
        tables: Tables,
        interval: float = 0.2,
        observe: Callable[[float], None] | None = None,
    ) -> None:
        self.tables = tables
        self.interval = interval
        self.observe = observe or (lambda seconds: None)
        self.longest = 0.0  # the longest a batch held a shard's lock
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="evictor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.run_once()
            except ParameterServerError as e:  # fail-stop: the log refused
                log.warning("eviction paused: %s", e)
            except Exception:  # never let the thread die silently
                log.exception("eviction round failed")

    def run_once(self) -> int:
        """One round over every table's parts; rows evicted."""
        evicted = 0
        for record in self.tables.all():
            eviction = record.config.eviction
            if eviction is None:
                continue
            parts = self.tables.parts(record)
            now = max(part.latest for part in parts)  # the table's newest step
            for part in parts:
                evicted += self._part(record, part, eviction.ttl_steps, now)
        return evicted

    def _part(
        self, record: TableRecord, part: TablePart, ttl: int | None, now: int
    ) -> int:
        """Evict a part's due rows in batches; candidates are found without
        the lock, with the step each was last updated at."""
        high = part.high
        # Copies first: a push may change the arrays meanwhile (numpy raises
        # when an array changes under flatnonzero); candidates are hints.
        live = np.flatnonzero(part.live[:high].copy())
        due = []
        if ttl is not None:
            due.append(live[part.updated[live] <= now - ttl])
        capacity = part.capacity
        if capacity is not None and part.size > HIGH * capacity:
            due.append(part.lowest(live, part.size - int(LOW * capacity)))
        if not due:
            return 0
        rows = np.unique(np.concatenate(due))
        keys, stamps = part.keys[rows], part.updated[rows]
        evicted = 0
        for start in range(0, len(keys), BATCH):
            batch = slice(start, start + BATCH)
            evicted += self._batch(record, part.shard, keys[batch], stamps[batch])
        return evicted

    def _batch(
        self, record: TableRecord, shard: int, keys: np.ndarray, stamps: np.ndarray
    ) -> int:
        """Evict those of ``keys`` still there and not updated since they were
        chosen (their ``stamps``), under the shard's lock."""
        store = self.tables.store
        with store.locked([shard]):
            started = time.perf_counter()
            part = store.shards[shard].tables[record.name]
            rows = part.rows_of(keys)
            there = rows >= 0
            there[there] = part.updated[rows[there]] == stamps[there]
            gone = self.tables.evict_locked(record, part, keys[there])
            held = time.perf_counter() - started
        self.longest = max(self.longest, held)
        self.observe(held)
        return gone
