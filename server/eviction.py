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

from adamax_ps.server.errors import ParameterServerError, RescalingError
from adamax_ps.server.gate import ChangeGate
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
        gate: ChangeGate | None = None,
    ) -> None:
        self.tables = tables
        self.gate = gate or ChangeGate()
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
                with self.gate.change():  # a rescale's cut waits for it
                    self.run_once()
            except RescalingError:
                pass  # frozen for a rescale: evicted again once it ends
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
            shards = self.tables.store.shards
            parts = [shard.tables.get(record.name) for shard in shards]
            if None in parts:  # being created right now
                continue
            now = max(part.latest for part in parts)  # the table's newest step
            for part in parts:
                evicted += self._part(record, part, eviction.ttl_steps, now)
        return evicted

    def _part(
        self, record: TableRecord, part: TablePart, ttl: int | None, now: int
    ) -> int:
        """Evict a part's due rows in batches. Candidates are found without
        the lock (hints: a push may change the arrays meanwhile), each batch
        checked again under it."""
        evicted = 0
        if ttl is not None:
            live = np.flatnonzero(part.live[: part.high].copy())
            old = live[part.updated[live] <= now - ttl]
            evicted += self._batches(record, part, part.keys[old], now - ttl, None)
        capacity = part.capacity
        if capacity is not None and part.size > HIGH * capacity:
            live = np.flatnonzero(part.live[: part.high].copy())
            chosen = part.lowest(live, part.size - int(LOW * capacity))
            if len(chosen):
                cutoff = int(part.scores(chosen).max())
                keys = part.keys[chosen]
                evicted += self._batches(record, part, keys, cutoff, capacity)
        return evicted

    def _batches(self, record, part, keys, cutoff: int, capacity) -> int:
        evicted = 0
        for start in range(0, len(keys), BATCH):
            batch = keys[start : start + BATCH].copy()
            evicted += self._batch(record, part.shard, batch, cutoff, capacity)
        return evicted

    def _batch(
        self,
        record: TableRecord,
        shard: int,
        keys: np.ndarray,
        cutoff: int,
        capacity: int | None,
    ) -> int:
        """Under the shard's lock, evict those of ``keys`` still held whose
        score is still at most ``cutoff`` (TTL: the step; capacity: the
        policy's score), and for capacity only while the part is over its
        low mark."""
        store = self.tables.store
        with store.locked([shard]):
            started = time.perf_counter()
            part = store.shards[shard].tables.get(record.name)
            gone = 0
            if part is not None:
                rows = part.rows_of(keys)
                there = np.flatnonzero(rows >= 0)
                if capacity is None:
                    due = there[part.updated[rows[there]] <= cutoff]
                else:
                    due = there[part.scores(rows[there]) <= cutoff]
                    due = due[: max(0, part.size - int(LOW * capacity))]
                gone = self.tables.evict_locked(record, part, keys[due])
            held = time.perf_counter() - started
        self.longest = max(self.longest, held)
        self.observe(held)
        return gone
