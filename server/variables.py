"""Variables: the variables one server holds, created, read and assigned.

A variable is created whole or as this server's rows of a larger one (its
initializer draws those rows exactly as for the whole variable), or attached
to when it exists with the same shape and dtype. Its bytes are counted in the
memory budget before anything is allocated, every change is logged, and reads
hand out copies whose bytes count in the in-flight budget while a transport
sends them. A value or one slot's value is named by a ``SlotKey``: None for
the value, ``(optimizer, slot)`` for a slot (``Optimizers.slot_key``).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from adamax_ps.server.errors import (
    InvalidArgumentError,
    ResourceExhaustedError,
    VariableExistsError,
    VariableNotFoundError,
)
from adamax_ps.server.initializers import Initializer, parse_initializer
from adamax_ps.server.journal import Journal
from adamax_ps.server.limits import InflightBudget, MemoryBudget
from adamax_ps.server.store import ShardedStore, VariableRecord
from adamax_ps.server.validation import (
    check_indices,
    check_name,
    check_slice,
    numeric_array,
    shape_and_dtype,
)

SlotKey = tuple[str, str] | None


class Variables:
    """The variable registry of one server over its store. Thread-safe."""

    def __init__(
        self,
        store: ShardedStore,
        journal: Journal,
        memory: MemoryBudget,
        inflight: InflightBudget,
        max_request_rows: int,
    ) -> None:
        self.store = store
        self.journal = journal
        self.memory = memory
        self.inflight = inflight
        self.max_request_rows = max_request_rows

    # Creation -----------------------------------------------------------------------

    def create(
        self,
        name: str,
        *,
        shape: Sequence[int] | None = None,
        dtype: Any = None,
        initial_value: np.ndarray | None = None,
        initializer: str | Mapping[str, Any] = "zeros",
        seed: int | None = None,
        global_shape: Sequence[int] | None = None,
        row_offset: int = 0,
        reserved: bool = False,
    ) -> tuple[VariableRecord, bool]:
        """Create the variable, or attach to it if it exists with the same shape
        and dtype. Returns ``(record, created)``.

        In a cluster a server may hold rows ``[row_offset, row_offset + rows)``
        of a larger variable of ``global_shape``. Its bytes are counted in the
        memory budget before anything is allocated (``reserved``: they already
        are, by ``create_many``; given back if it is not created).
        """
        self.journal.check()
        shape, dtype, initial_value, global_shape = self._check(
            name, shape, dtype, initial_value, initializer, global_shape, row_offset
        )
        nbytes = math.prod(shape) * dtype.itemsize
        existing = self.store.get(name)
        if existing is not None:
            if reserved:
                self.memory.release(nbytes)
            return _attach(existing, shape, dtype), False
        if not reserved:
            self.memory.reserve(nbytes, f"variable {name!r} of shape {shape} ({dtype})")
        try:
            record, logged = self._add(
                name,
                shape,
                dtype,
                initial_value,
                initializer,
                seed,
                global_shape,
                row_offset,
            )
        except BaseException:
            self.memory.release(nbytes)
            raise
        if record.name != name or logged is None:  # made meanwhile by another call
            self.memory.release(nbytes)
            return _attach(record, shape, dtype), False
        self.journal.wait(logged)
        return record, True

    def create_many(
        self, specs: Sequence[Mapping[str, Any]]
    ) -> list[tuple[VariableRecord, bool]]:
        """``create(**spec)`` for each spec, all or nothing: every spec is
        checked (names, shapes, dtypes, initializers, sizes, clashes with
        existing variables and with each other, the memory they need together)
        before any is created."""
        self.journal.check()
        wanted: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        for spec in specs:
            args = dict(spec)
            name = args.pop("name", None)
            shape, dtype, _, _ = self._check(
                name,
                args.get("shape"),
                args.get("dtype"),
                args.get("initial_value"),
                args.get("initializer", "zeros"),
                args.get("global_shape"),
                args.get("row_offset", 0),
            )
            existing = self.store.get(name)
            if existing is not None:
                _attach(existing, shape, dtype)
            if wanted.setdefault(name, (shape, dtype)) != (shape, dtype):
                raise VariableExistsError(
                    f"variable {name!r} is asked for twice with different shapes "
                    "or dtypes"
                )
        new = {
            name: math.prod(shape) * dtype.itemsize
            for name, (shape, dtype) in wanted.items()
            if self.store.get(name) is None
        }
        self.memory.reserve(
            sum(new.values()), f"{len(new)} new variable(s) {sorted(new)}"
        )
        results = []
        try:
            for spec in specs:
                reserved = new.pop(spec["name"], None) is not None
                results.append(self.create(**spec, reserved=reserved))
        finally:
            self.memory.release(sum(new.values()))  # those never reached
        return results

    def _check(
        self, name, shape, dtype, initial_value, initializer, global_shape, row_offset
    ):
        """The checked ``(shape, dtype, initial_value, global_shape)`` of a
        variable to create; ``InvalidArgumentError`` naming what is wrong."""
        check_name("variable", name)
        if self.store.table(name) is not None:
            raise VariableExistsError(f"{name!r} is a hash-keyed table, not a variable")
        shape, dtype, initial_value = shape_and_dtype(shape, dtype, initial_value)
        global_shape = check_slice(shape, global_shape, row_offset)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > self.memory.limit:
            # Refused at once: the kernel overcommits, so a huge array would be
            # granted, then kill the server.
            self.memory.reserve(nbytes, f"variable {name!r} of shape {shape} ({dtype})")
        if initial_value is None:
            parse_initializer(initializer)
        return shape, dtype, initial_value, global_shape

    def _add(
        self,
        name,
        shape,
        dtype,
        initial_value,
        initializer,
        seed,
        global_shape,
        row_offset,
    ) -> tuple[VariableRecord, int | None]:
        """Allocate, fill and register a checked variable; its log record's
        number, or None when a variable of that name was registered first."""
        if initial_value is None:
            seed = secrets.randbits(63) if seed is None else int(seed)
            whole = Initializer(initializer, global_shape, seed)

            def fill(out: np.ndarray, lo: int) -> None:
                whole.fill(out, row_offset + lo)

            description: str | dict = (
                initializer if isinstance(initializer, str) else dict(initializer)
            )
        else:
            seed, description = 0, "initial_value"

            def fill(out: np.ndarray, lo: int) -> None:
                out[...] = (
                    initial_value[lo : lo + out.shape[0]] if shape else initial_value
                )

        record = VariableRecord(
            name,
            shape,
            dtype,
            self.store.placement(name, shape, dtype),
            description,
            seed,
            global_shape,
            row_offset,
        )
        logged = [0]

        def log() -> None:
            header = {
                "name": name,
                "shape": list(shape),
                "dtype": dtype.name,
                "initializer": description if initial_value is None else "zeros",
                "seed": seed,
                "global_shape": list(global_shape),
                "row_offset": row_offset,
            }
            initial = [initial_value] if initial_value is not None else []
            logged[0] = self.journal.write("variable", header, initial)

        try:
            stored = self.store.add(record, fill, log)
        except (MemoryError, ValueError) as e:
            raise InvalidArgumentError(
                f"variable {name!r} of shape {shape} ({dtype}) cannot be allocated: {e}"
            ) from None
        if stored is not record:
            return stored, None
        return record, logged[0]

    # Reads and assignments ------------------------------------------------------

    def get(self, name: str) -> VariableRecord:
        record = self.store.get(name)
        if record is None:
            raise VariableNotFoundError(f"variable {name!r} does not exist")
        return record

    def all(self) -> list[VariableRecord]:
        return self.store.records()

    def read(self, record: VariableRecord, key: SlotKey = None) -> np.ndarray:
        """A copy of a variable's value, or of one of its slots."""
        return self.store.read(record, key)

    def gather(
        self, record: VariableRecord, rows: Any, key: SlotKey = None
    ) -> np.ndarray:
        """Copies of selected rows of a variable or slot."""
        return self.store.gather(record, self._request_rows(record, rows), key)

    @contextmanager
    def reading(
        self, record: VariableRecord, key: SlotKey = None, rows: Any = None
    ) -> Iterator[np.ndarray]:
        """``read`` (or ``gather`` of ``rows``) for a transport to send: the
        copy's bytes count in the in-flight budget until the block ends."""
        rows, nbytes = self.planned_read(record, rows)
        with self.inflight.held(nbytes, f"reading {record.name!r}"):
            yield self.read_planned(record, rows, key)

    def planned_read(self, record: VariableRecord, rows: Any) -> tuple[Any, int]:
        """A read checked now, to be made later: its rows (checked, or None
        for the whole variable) and its size in bytes."""
        if rows is None:
            return None, record.nbytes
        rows = self._request_rows(record, rows)
        return rows, len(rows) * record.row_size * record.dtype.itemsize

    def read_planned(
        self, record: VariableRecord, rows: np.ndarray | None, key: SlotKey = None
    ) -> np.ndarray:
        """The copy a ``planned_read`` names (its rows already checked)."""
        if rows is None:
            return self.store.read(record, key)
        return self.store.gather(record, rows, key)

    def _request_rows(self, record: VariableRecord, rows: Any) -> np.ndarray:
        """Row numbers of one read, checked against the variable and the
        per-request limit (``--max-request-rows``)."""
        rows = np.asarray(rows)
        limit = self.max_request_rows
        if rows.size > limit:
            raise ResourceExhaustedError(
                f"a read asks for {rows.size} rows of {record.name!r}; one request "
                f"may ask for at most {limit} (--max-request-rows): split it"
            )
        return check_indices(record, rows, "rows")

    def assign(
        self,
        record: VariableRecord,
        value: Any,
        key: SlotKey = None,
    ) -> None:
        """Replace a variable's value, or one of its slots (shape must match;
        values are cast to the variable's dtype)."""
        self.journal.check()
        value = numeric_array(value, "value")
        if value.shape != record.shape:
            raise InvalidArgumentError(
                f"value for {record.name!r} must have shape {record.shape}. "
                f"Received: {value.shape}"
            )
        value = value.astype(record.dtype, copy=False)
        optimizer, slot = key if key is not None else (None, None)
        with self.store.locked(record.shards):
            for part in self.store.parts(record):
                target = part.value if key is None else part.slots[key]
                target[...] = value[part.lo : part.hi] if record.shape else value
            logged = self.journal.write(
                "assign",
                {"variable": record.name, "optimizer": optimizer, "slot": slot},
                [value],
            )
        self.journal.wait(logged)


def _attach(record: VariableRecord, shape: tuple[int, ...], dtype: np.dtype):
    if record.shape != shape or record.dtype != dtype:
        raise VariableExistsError(
            f"variable {record.name!r} exists with shape {record.shape} and dtype "
            f"{record.dtype}. Requested: shape {shape}, dtype {dtype}"
        )
    return record
