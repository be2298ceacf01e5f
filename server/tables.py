"""Tables: the hash-keyed tables one server holds, created, read, assigned,
pushed to and evicted.

A table's keys are spread over the cluster's servers by ``common.keys`` and
over this server's shards the same way; each shard holds a ``TablePart``
under its lock. A request naming keys another server holds is refused (its
sender has a stale view of the cluster). Every change is logged with what it
decided (admitted keys, evicted keys), so a replay repeats it exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from adamax_ps.common.keys import server_of, shard_of
from adamax_ps.server.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
    VariableExistsError,
    VariableNotFoundError,
)
from adamax_ps.server.gradients import Gradient
from adamax_ps.server.journal import Journal
from adamax_ps.server.limits import MemoryBudget
from adamax_ps.server.store import ShardedStore
from adamax_ps.server.table_config import TableConfig
from adamax_ps.server.table_part import PartPlan, TablePart
from adamax_ps.server.table_record import TableRecord, Versions

__all__ = ["Plans", "TableRecord", "Tables", "Versions"]
from adamax_ps.server.validation import NonFinitePolicy, check_name, checked_values

Plans = dict[tuple[int, int], PartPlan]  # (gradient position, shard): plan


class Tables:
    """The table registry of one server over its store. Thread-safe."""

    def __init__(
        self,
        store: ShardedStore,
        journal: Journal,
        memory: MemoryBudget,
        max_request_rows: int,
        server_index: int = 0,
        num_servers: int = 1,
    ) -> None:
        self.store = store
        self.journal = journal
        self.memory = memory
        self.max_request_rows = max_request_rows
        self.server_index = server_index
        self.num_servers = num_servers
        self.growth_refused = 0  # pushes refused: a table's growth over budget

    # Registry -----------------------------------------------------------------------

    def create(self, name: str, config: TableConfig) -> tuple[TableRecord, bool]:
        """Create the table, or attach to one of that name with the same
        config (``table_config.table_config`` checks one). Returns
        ``(record, created)``."""
        self.journal.check()
        check_name("table", name)
        if self.store.get(name) is not None:
            raise VariableExistsError(f"{name!r} is a variable, not a table")
        existing = self.store.table(name)
        if existing is not None:
            return _attach(existing, config), False
        parts = self.num_servers * self.store.num_shards
        nbytes = self.store.num_shards * TablePart.initial_bytes(config, parts)
        self.memory.reserve(nbytes, f"table {name!r}")  # before allocating
        made = [
            TablePart(name, shard.index, config, parts, config.seed)
            for shard in self.store.shards
        ]
        record = TableRecord(name, config, self.store.num_shards)
        logged = [0]

        def log() -> None:
            logged[0] = self.journal.write("table", record.to_json())

        try:
            stored = self.store.add_table(record, made, log)
        except BaseException:  # a variable of that name was made meanwhile
            self.memory.release(nbytes)
            raise
        if stored is not record:
            self.memory.release(nbytes)
            return _attach(stored, config), False
        self.journal.wait(logged[0])
        return record, True

    def find(self, name: str) -> TableRecord | None:
        return self.store.table(name)

    def get(self, name: str) -> TableRecord:
        record = self.store.table(name)
        if record is None:
            raise VariableNotFoundError(f"table {name!r} does not exist")
        return record

    def all(self) -> list[TableRecord]:
        return self.store.table_records()

    def parts(self, record: TableRecord) -> list[TablePart]:
        return [shard.tables[record.name] for shard in self.store.shards]

    # Keys ---------------------------------------------------------------------------

    def check_keys(self, record: TableRecord, keys: Any, what: str) -> np.ndarray:
        """A 1-D int64 array of keys this server holds."""
        if not isinstance(keys, np.ndarray) or keys.dtype.kind not in "iu":
            dtype = getattr(keys, "dtype", type(keys).__name__)
            raise InvalidArgumentError(
                f"{what} for table {record.name!r} must be an integer array. "
                f"Received: {dtype}"
            )
        if keys.ndim != 1:
            raise InvalidArgumentError(
                f"{what} for table {record.name!r} must be 1-D. "
                f"Received shape {keys.shape}"
            )
        if (
            keys.dtype == np.uint64
            and len(keys)
            and keys.max() > np.iinfo(np.int64).max
        ):
            raise InvalidArgumentError(f"{what} for {record.name!r} must fit int64")
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        if self.num_servers > 1 and len(keys):
            owner = server_of(keys, self.num_servers)
            wrong = np.flatnonzero(owner != self.server_index)
            if len(wrong):
                k = wrong[0]
                raise FailedPreconditionError(
                    f"key {keys[k]} of table {record.name!r} belongs to server "
                    f"{owner[k]} of {self.num_servers}, not this server "
                    f"{self.server_index}: refresh the cluster view"
                )
        return keys

    def _by_shard(self, keys: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """``(shard, positions of its keys)`` for each shard holding some."""
        shards = shard_of(keys, self.store.num_shards)
        if self.store.num_shards == 1:
            return [(0, np.arange(len(keys)))] if len(keys) else []
        order = np.argsort(shards, kind="stable")
        bounds = np.searchsorted(shards[order], np.arange(self.store.num_shards + 1))
        return [
            (s, order[bounds[s] : bounds[s + 1]])
            for s in range(self.store.num_shards)
            if bounds[s + 1] > bounds[s]
        ]

    def _planned_shards(self, g: Gradient) -> list[tuple[int, np.ndarray]]:
        """The shards a table gradient changes, with its keys' positions: its
        keys' shards, and a replayed push's victims' shards too (on another
        shard count, a victim may lie where none of its keys do)."""
        found = dict(self._by_shard(g.indices))
        if g.decided is not None and len(g.decided[1]):
            for shard in np.unique(shard_of(g.decided[1], self.store.num_shards)):
                found.setdefault(int(shard), np.empty(0, np.int64))
        return sorted(found.items())

    def _limit(self, record: TableRecord, keys: np.ndarray) -> None:
        if len(keys) > self.max_request_rows:
            raise ResourceExhaustedError(
                f"a request names {len(keys)} keys of {record.name!r}; one request "
                f"may name at most {self.max_request_rows} (--max-request-rows)"
            )

    # Reads --------------------------------------------------------------------------

    def gather(
        self, record: TableRecord, keys: Any, slot: tuple[str, str] | None = None
    ) -> np.ndarray:
        """Copies of the keys' rows (an unseen key's initial row; its slots
        are zeros). Reads change nothing, not even admission counts."""
        keys = self.check_keys(record, np.asarray(keys), "keys")
        self._limit(record, keys)
        return self.read_planned(record, keys, slot)

    def read_planned(
        self, record: TableRecord, keys: np.ndarray, slot: tuple[str, str] | None
    ) -> np.ndarray:
        """The gather a ``planned_read`` names (its keys already checked)."""
        out = np.empty((len(keys), record.row_size), record.dtype)
        for shard, positions in self._by_shard(keys):
            with self.store.locked([shard]):
                part = self.store.shards[shard].tables[record.name]
                out[positions] = part.gather(keys[positions], slot)
        return out

    def planned_read(self, record: TableRecord, keys: Any) -> tuple[np.ndarray, int]:
        """A gather checked now, made later: its keys and size in bytes."""
        if keys is None:
            raise InvalidArgumentError(
                f"{record.name!r} is a hash-keyed table: read it by keys"
            )
        keys = self.check_keys(record, np.asarray(keys), "keys")
        self._limit(record, keys)
        return keys, len(keys) * record.row_size * record.dtype.itemsize

    # Writes -------------------------------------------------------------------------

    def assign(
        self,
        record: TableRecord,
        keys: Any,
        values: Any,
        evicted: np.ndarray | None = None,
        version: int | None = None,
    ) -> None:
        """Set the rows of ``keys`` (unique) to ``values``; new keys get rows
        without an admission test, and rows are evicted by the table's policy
        to keep its capacity (``evicted``: those a logged assignment evicted,
        when the log replays it, with its ``version``). More new keys than a
        part can hold at all are refused, nothing changed."""
        self.journal.check()
        keys = self.check_keys(record, np.asarray(keys), "keys")
        self._limit(record, keys)
        values = np.asarray(values)
        if values.shape != (len(keys), record.row_size):
            raise InvalidArgumentError(
                f"values for table {record.name!r} must have shape "
                f"{(len(keys), record.row_size)}. Received: {values.shape}"
            )
        if len(np.unique(keys)) != len(keys):
            raise InvalidArgumentError(f"keys assigned to {record.name!r} repeat")
        values = np.ascontiguousarray(values, dtype=record.dtype)
        groups = dict(self._by_shard(keys))
        if evicted is not None and len(evicted):
            for shard in np.unique(shard_of(evicted, self.store.num_shards)):
                groups.setdefault(int(shard), np.empty(0, np.int64))
        groups = sorted(groups.items())
        with self.store.locked(s for s, _ in groups):
            plans = []
            for shard, positions in groups:
                part = self.store.shards[shard].tables[record.name]
                decided = None
                if evicted is not None:
                    mine = evicted[shard_of(evicted, self.store.num_shards) == shard]
                    decided = (np.ones(len(keys), bool), mine)
                plan = part.plan(keys, positions, 0, 0, decided, admit_all=True)
                if not plan.admit.all():
                    raise InvalidArgumentError(
                        f"assigning {len(positions)} keys to one part of table "
                        f"{record.name!r}, whose parts hold {part.capacity} rows "
                        "each: assign fewer keys at once, or raise its capacity"
                    )
                plans.append((part, plan))
            self.memory.reserve(
                sum(plan.grow_bytes for _, plan in plans),
                f"rows of table {record.name!r}",
            )
            victims = [plan.victims for _, plan in plans]
            version = record.versions.take(version)
            logged = self.journal.write(
                "table_assign",
                {"table": record.name, "version": version},
                [keys, values, np.concatenate([_no_keys(), *victims])],
            )
            for part, plan in plans:
                part.evict(plan.victims, version)
                part.grow(plan.grow_to)
                part.assign(keys[plan.positions], values[plan.positions], version)
        self.journal.wait(logged)

    def evict_locked(
        self,
        record: TableRecord,
        part: TablePart,
        keys: np.ndarray,
        version: int | None = None,
    ) -> int:
        """Evict and log keys of a part whose shard lock the caller holds.
        Not waiting for the log: an eviction acknowledges nothing, and a
        crash before its record is durable only keeps the rows."""
        if not len(keys):
            return 0
        self.journal.check()
        version = record.versions.take(version)
        gone = part.evict(keys, version)
        self.journal.write("evict", {"table": record.name, "version": version}, [keys])
        return gone

    def evict_anywhere(
        self, record: TableRecord, keys: np.ndarray, version: int | None
    ) -> int:
        """Evict keys wherever this server's shards hold them (a replay of
        one logged eviction, as change ``version``)."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        groups = self._by_shard(keys)
        with self.store.locked(s for s, _ in groups):
            version = record.versions.take(version)
            return sum(
                self.store.shards[s].tables[record.name].evict(keys[p], version)
                for s, p in groups
            )

    # Pushes -------------------------------------------------------------------------

    def check_gradient(
        self, record: TableRecord, g: Gradient, policy: NonFinitePolicy
    ) -> Gradient:
        """A pushed gradient of a table: keys and finite ``[n, dim]`` values
        in the table's dtype (``policy``: what NaN and Inf get)."""
        if g.is_dense:
            raise InvalidArgumentError(
                f"{record.name!r} is a hash-keyed table: push IndexedSlices of its "
                "keys, not a dense gradient"
            )
        keys = self.check_keys(record, g.indices, "keys")
        values = g.values
        if (
            values.ndim == 1
            and len(keys)
            and values.size == len(keys) * record.row_size
        ):
            values = values.reshape(len(keys), record.row_size)
        if values.shape != (len(keys), record.row_size):
            raise InvalidArgumentError(
                f"gradient values for table {record.name!r} must have shape "
                f"{(len(keys), record.row_size)}. Received: {values.shape}"
            )
        values = checked_values(record, values, policy, g.finite)
        return dataclasses.replace(
            g, values=np.ascontiguousarray(values), indices=keys, record=record
        )

    def plan_push(
        self, gradients: list[Gradient], step: int, state: Any
    ) -> tuple[list[Gradient], Plans]:
        """Plan the table gradients of a push for optimizer ``state`` (shard
        locks held) and reserve the memory their growth needs, or refuse
        (``MemoryBudgetError``, counted in ``growth_refused``) before
        anything changes. Returns the gradients with their decisions
        attached (for the log) and the plans."""
        if not any(g.keyed for g in gradients):
            return gradients, {}
        optimizer = state.name
        plans: Plans = {}
        grow = 0
        out = []
        for position, g in enumerate(gradients):
            if not getattr(g.record, "keyed", False):
                out.append(g)
                continue
            mask = np.zeros(len(g.indices), bool)
            victims = []
            if g.decided is not None:  # replayed: the logged refusals
                admitted = np.ones(len(g.indices), bool)
                admitted[g.decided[0]] = False
            for shard, positions in self._planned_shards(g):
                part = self.store.shards[shard].tables[g.variable]
                decided = None
                if g.decided is not None:
                    logged = g.decided[1]
                    mine = logged[shard_of(logged, self.store.num_shards) == shard]
                    decided = (admitted, mine)
                new_slots = sum((optimizer, s) not in part.slots for s in ("m", "v"))
                plan = part.plan(g.indices, positions, step, new_slots, decided)
                plans[(position, shard)] = plan
                grow += plan.grow_bytes
                mask[positions] = plan.admit
                victims.append(plan.victims)
            logged = None if g.decided is None else int(g.decided[2][0])
            version = g.record.versions.take(logged)
            for (at, _), plan in plans.items():
                if at == position:
                    plan.version = version
            if g.decided is None:
                every = np.concatenate(victims) if victims else _no_keys()
                refused = np.flatnonzero(~mask).astype(np.int64)
                number = np.array([version], np.int64)
                g = dataclasses.replace(g, decided=(refused, every, number))
            out.append(g)
        if grow:
            names = sorted({g.variable for g in out if g.keyed})
            try:
                self.memory.reserve(grow, f"growing table(s) {names}")
            except ResourceExhaustedError:
                self.growth_refused += 1
                raise
        return out, plans


def _attach(record: TableRecord, config: TableConfig) -> TableRecord:
    if record.config != config:
        raise VariableExistsError(
            f"table {record.name!r} exists with config {record.config.to_json()}. "
            f"Requested: {config.to_json()}"
        )
    return record


def _no_keys() -> np.ndarray:
    return np.empty(0, np.int64)
