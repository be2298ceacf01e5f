"""The hash-keyed table methods of ``ParameterService`` (a mixin over its
``_tables`` registry and ``evictor``), kept apart to keep each file small."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from adamax_ps.server import table_export, table_inspection
from adamax_ps.server.errors import InvalidArgumentError, SlotNotFoundError
from adamax_ps.server.eviction import Evictor
from adamax_ps.server.gate import ChangeGate, gated, gated_unless
from adamax_ps.server.limits import InflightBudget
from adamax_ps.server.store import ShardedStore
from adamax_ps.server.table_config import table_config
from adamax_ps.server.tables import TableRecord, Tables


class TableMethods:
    """Tables: create, read, assign, inspect, evict."""

    _tables: Tables
    evictor: Evictor
    gate: ChangeGate
    optimizer: Any
    store: ShardedStore
    inflight: InflightBudget

    @gated_unless(lambda self, name, **config: self._tables.find(name) is not None)
    def create_table(self, name: str, **config: Any) -> tuple[TableRecord, bool]:
        """Create a hash-keyed table, or attach to one with the same config
        (``table_config.table_config`` names the settings)."""
        return self._tables.create(name, table_config(**config))

    def table(self, name: str) -> TableRecord:
        return self._tables.get(name)

    def tables(self) -> list[TableRecord]:
        return self._tables.all()

    def is_table(self, name: str) -> bool:
        return self._tables.find(name) is not None

    def gather_keys(
        self,
        name: str,
        keys: Any,
        *,
        optimizer: str | None = None,
        slot: str | None = None,
    ) -> np.ndarray:
        """Rows of a table's keys (unseen keys: initial rows), or of a slot."""
        record = self._tables.get(name)
        return self._tables.gather(record, keys, self._table_slot(optimizer, slot))

    def _table_slot(
        self, optimizer: str | None, slot: str | None
    ) -> tuple[str, str] | None:
        """What a table read names: its rows (neither), or an optimizer's
        ``m`` or ``v`` (both; an existing optimizer)."""
        if optimizer is None and slot is None:
            return None
        if optimizer is None or slot is None:
            raise InvalidArgumentError(
                "a slot read needs both optimizer and slot names"
            )
        self.optimizer(optimizer)  # OptimizerNotFoundError if there is none
        if slot not in ("m", "v"):
            raise SlotNotFoundError(f"a table's slots are 'm' and 'v', not {slot!r}")
        return (optimizer, slot)

    @gated
    def assign_keys(self, name: str, keys: Any, values: Any) -> None:
        """Set rows of a table (new keys get rows)."""
        self._tables.assign(self._tables.get(name), keys, values)

    def table_info(self, name: str) -> dict[str, Any]:
        """A table's size, capacity, memory and admission/eviction counts."""
        return table_inspection.info(self.store, self._tables.get(name))

    def table_infos(self) -> list[dict[str, Any]]:
        return [table_inspection.info(self.store, r) for r in self._tables.all()]

    @property
    def table_growth_refused(self) -> int:
        """Pushes refused because a table's growth passed the memory budget."""
        return self._tables.growth_refused

    def top_keys(self, name: str, n: int = 10) -> list[dict[str, int]]:
        return table_inspection.top_keys(self.store, self._tables.get(name), n)

    def export_table(
        self, name: str, since: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """The table's rows here for serving (``table_export.export``)."""
        self._tables.get(name)
        return table_export.export(self.store, name, since)

    @contextmanager
    def reading_keys(
        self,
        name: str,
        keys: Any,
        optimizer: str | None = None,
        slot: str | None = None,
    ) -> Iterator[np.ndarray]:
        """``gather_keys`` for a transport to send: the copy's bytes count in
        the in-flight budget until the block ends."""
        record = self._tables.get(name)
        keys, nbytes = self._tables.planned_read(record, keys)
        with self.inflight.held(nbytes, f"reading table {name!r}"):
            slot_key = self._table_slot(optimizer, slot)
            yield self._tables.read_planned(record, keys, slot_key)

    @gated
    def evict_now(self) -> int:
        """Run one eviction round now (tests, and the evictor thread's work)."""
        return self.evictor.run_once()
