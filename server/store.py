"""ShardedStore: where variables and their slots live, and who may touch them.

A store has several shards, each with its own lock. A whole variable lives in
one shard, chosen by a stable hash of its name (``crc32``, never the salted
``hash()``); a large variable is split by row ranges over all shards, so one
push updates the shards in parallel (the kernels release the GIL). Each part
of a variable holds its rows of the value and of every slot, so a shard's lock
guards everything a kernel call touches.

Lock discipline: shard locks are taken in ascending index order (``locked``),
the registry lock is a leaf. No global lock is on the push path. This module
never imports grpc, fastapi or protobuf.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from adamax_ps.common.placement import place_rows
from adamax_ps.server.errors import VariableExistsError

if TYPE_CHECKING:
    from adamax_ps.server.table_part import TablePart

DEFAULT_SPLIT_BYTES = 16 << 20


@dataclass
class Part:
    """Rows ``[lo, hi)`` of one variable held by one shard, with their slots.

    ``slots`` maps ``(optimizer, slot name)`` to an array shaped like ``value``.
    """

    variable: str
    shard: int
    lo: int
    hi: int
    value: np.ndarray
    slots: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    def rows(self, array: np.ndarray) -> np.ndarray:
        """The 2-D ``[rows, row_size]`` view of ``array`` (one of this part's)."""
        return array.reshape(array.shape[0], -1) if array.ndim else array.reshape(1, 1)


@dataclass(frozen=True)
class VariableRecord:
    """What a variable is and where its parts are; immutable once created."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    parts: tuple[tuple[int, int, int], ...]  # (shard, lo, hi)
    initializer: str | dict
    seed: int
    global_shape: tuple[int, ...] = ()  # the whole variable, when this is a slice
    row_offset: int = 0  # first row of the whole variable held here

    def __post_init__(self) -> None:
        if not self.global_shape:
            object.__setattr__(self, "global_shape", self.shape)

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def size(self) -> int:
        """Elements of the variable (held here)."""
        return math.prod(self.shape)

    @property
    def row_size(self) -> int:
        """Elements of one row."""
        return math.prod(self.shape[1:])

    @property
    def shards(self) -> tuple[int, ...]:
        return tuple(sorted({shard for shard, _, _ in self.parts}))


class Shard:
    """One lock and the parts it guards."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.lock = threading.Lock()
        self.parts: dict[str, Part] = {}
        self.tables: dict[str, TablePart] = {}  # hash-keyed tables' rows here

    def nbytes(self) -> int:
        return sum(
            p.value.nbytes + sum(s.nbytes for s in p.slots.values())
            for p in self.parts.values()
        ) + sum(t.nbytes for t in self.tables.values())


class ShardedStore:
    """Variables and slots in ``num_shards`` independently locked shards."""

    def __init__(
        self, num_shards: int | None = None, split_bytes: int = DEFAULT_SPLIT_BYTES
    ) -> None:
        self.num_shards = num_shards or os.cpu_count() or 1
        if self.num_shards < 1:
            raise ValueError(
                f"A store needs at least one shard. Received: {num_shards}"
            )
        self.split_bytes = split_bytes
        self.shards = [Shard(i) for i in range(self.num_shards)]
        self._registry_lock = threading.Lock()
        self._variables: dict[str, VariableRecord] = {}
        self._tables: dict[str, Any] = {}  # name: tables.TableRecord
        self._pool = ThreadPoolExecutor(
            max_workers=self.num_shards, thread_name_prefix="shard"
        )

    # Placement ----------------------------------------------------------------

    def placement(
        self, name: str, shape: tuple[int, ...], dtype: np.dtype
    ) -> tuple[tuple[int, int, int], ...]:
        """Where a variable goes: one shard by name hash, or row ranges over all
        (``common.placement``, the rule that places variables on servers)."""
        return place_rows(
            name, shape, dtype.itemsize, self.num_shards, self.split_bytes
        )

    # Registry -------------------------------------------------------------------

    def get(self, name: str) -> VariableRecord | None:
        with self._registry_lock:
            return self._variables.get(name)

    def records(self) -> list[VariableRecord]:
        with self._registry_lock:
            return list(self._variables.values())

    def add(
        self,
        record: VariableRecord,
        fill: Callable[[np.ndarray, int], None],
        on_added: Callable[[], None] | None = None,
        given: dict[int, Part] | None = None,
    ) -> VariableRecord:
        """Create the variable's parts (filled by ``fill(array, lo)``) and register it.

        If a variable of that name was registered meanwhile, nothing is created
        and the existing record is returned (the caller checks compatibility).
        ``on_added()`` runs under the variable's shard locks once it is added.
        ``given``: parts already made, by their index in ``record.parts`` (a
        rescale's rows kept in place, ``kept_rows``).
        """
        arrays = []
        for index, (shard, lo, hi) in enumerate(record.parts):
            if given and index in given:
                arrays.append(given[index])
                continue
            shape = (hi - lo, *record.shape[1:]) if record.shape else ()
            value = np.empty(shape, record.dtype)
            fill(value, lo)
            arrays.append(Part(record.name, shard, lo, hi, value))
        with self.locked(record.shards):
            existing = self._register(
                record,
                self._variables,
                self._tables,
                "a hash-keyed table, not a variable",
            )
            if existing is not None:
                return existing
            for part in arrays:
                self.shards[part.shard].parts[record.name] = part
            if on_added is not None:
                on_added()
        return record

    def table(self, name: str) -> Any:
        """The hash-keyed table's record (``tables.TableRecord``), or None."""
        with self._registry_lock:
            return self._tables.get(name)

    def table_records(self) -> list[Any]:
        with self._registry_lock:
            return list(self._tables.values())

    def add_table(
        self,
        record: Any,
        parts: list[TablePart],
        on_added: Callable[[], None] | None = None,
    ) -> Any:
        """Register a table with one part per shard (or return the record of
        one registered meanwhile); ``on_added()`` runs under every lock."""
        with self.all_locked():
            existing = self._register(
                record, self._tables, self._variables, "a variable, not a table"
            )
            if existing is not None:
                return existing
            for part in parts:
                self.shards[part.shard].tables[record.name] = part
            if on_added is not None:
                on_added()
        return record

    def _register(
        self, record: Any, mine: dict[str, Any], others: dict[str, Any], other: str
    ) -> Any:
        """Register ``record`` in ``mine`` (variables or tables) and return
        None, or return the one registered meanwhile under its name; a name
        ``others`` holds is ``VariableExistsError`` (names are one space)."""
        with self._registry_lock:
            existing = mine.get(record.name)
            if existing is not None:
                return existing
            if record.name in others:
                raise VariableExistsError(f"{record.name!r} is {other}")
            mine[record.name] = record
            return None

    def parts(self, record: VariableRecord) -> list[Part]:
        """The variable's parts in row order (hold their shards' locks to use them)."""
        return [self.shards[shard].parts[record.name] for shard, _, _ in record.parts]

    # Locking and parallel work --------------------------------------------------

    @contextmanager
    def locked(self, shards: Iterable[int]) -> Iterator[None]:
        """Hold the locks of ``shards``, taken in ascending order (no deadlock)."""
        order = sorted(set(shards))
        taken: list[threading.Lock] = []
        try:
            for index in order:
                lock = self.shards[index].lock
                lock.acquire()
                taken.append(lock)
            yield
        finally:
            for lock in reversed(taken):
                lock.release()

    @contextmanager
    def all_locked(self) -> Iterator[Callable[[int], None]]:
        """Hold every shard's lock (taken ascending); yields ``release(index)``
        to let one shard go early, as a checkpoint does once it is written."""
        held: dict[int, threading.Lock] = {}
        try:
            for shard in self.shards:
                shard.lock.acquire()
                held[shard.index] = shard.lock

            def release(index: int) -> None:
                held.pop(index).release()

            yield release
        finally:
            for lock in held.values():
                lock.release()

    def run_parallel(self, tasks: list[Callable[[], None]]) -> None:
        """Run tasks at once on the shard pool (the caller runs the first itself)."""
        if not tasks:
            return
        futures = [self._pool.submit(task) for task in tasks[1:]]
        error: BaseException | None = None
        try:
            tasks[0]()
        except BaseException as e:  # still wait for the others before raising
            error = e
        for future in futures:
            try:
                future.result()
            except BaseException as e:
                error = error or e
        if error is not None:
            raise error

    def clear(self) -> None:
        """Drop every variable (a restore that failed part way starts again)."""
        with self.all_locked(), self._registry_lock:
            self._variables.clear()
            self._tables.clear()
            for shard in self.shards:
                shard.parts.clear()
                shard.tables.clear()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # Reads --------------------------------------------------------------------

    def read(
        self, record: VariableRecord, key: tuple[str, str] | None = None
    ) -> np.ndarray:
        """A consistent copy of the variable (``key=None``) or of one slot."""
        out = np.empty(record.shape, record.dtype)
        with self.locked(record.shards):
            for part in self.parts(record):
                source = part.value if key is None else part.slots[key]
                if record.shape:
                    out[part.lo : part.hi] = source
                else:
                    out[...] = source
        return out

    def gather(
        self, record: VariableRecord, rows: np.ndarray, key: tuple[str, str] | None
    ) -> np.ndarray:
        """Copies of the given rows (validated by the caller) of value or slot."""
        out = np.empty((len(rows), *record.shape[1:]), record.dtype)
        with self.locked(record.shards):
            for part in self.parts(record):
                source = part.value if key is None else part.slots[key]
                inside = np.flatnonzero((rows >= part.lo) & (rows < part.hi))
                out[inside] = source[rows[inside] - part.lo]
        return out

    def nbytes_per_shard(self) -> list[int]:
        """Bytes of values and slots held by each shard."""
        result = []
        for shard in self.shards:
            with shard.lock:
                result.append(shard.nbytes())
        return result
