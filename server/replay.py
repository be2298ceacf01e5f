"""Replaying write-ahead log records through the parts' public methods.

A record holds the values the original call ended up with (a push's step and
its gradients as applied, a variable's seed), and replaying it calls the same
method with them, so the state comes back bit for bit. A push whose ids the
restored ledger already remembers is in the checkpoint: it is skipped, never
applied twice.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from adamax_ps.server.errors import CheckpointError
from adamax_ps.server.gradients import Gradient
from adamax_ps.server.ledger import PushId, PushLedger
from adamax_ps.server.optimizers import Optimizers
from adamax_ps.server.pushes import PushPipeline
from adamax_ps.server.table_config import TableConfig
from adamax_ps.server.tables import Tables
from adamax_ps.server.variables import Variables


class Replayer:
    """Applies one record at a time (the journal is in replay mode)."""

    def __init__(
        self,
        variables: Variables,
        optimizers: Optimizers,
        pushes: PushPipeline,
        ledger: PushLedger,
        tables: Tables,
    ) -> None:
        self.tables = tables
        self.variables = variables
        self.optimizers = optimizers
        self.pushes = pushes
        self.ledger = ledger
        self._by_kind = {
            "push": self._push,
            "variable": self._variable,
            "optimizer": self._optimizer,
            "reserve": self._reserve,
            "assign": self._assign,
            "weights": self._weights,
            "assign_weight": self._assign_weight,
            "iterations": self._iterations,
            "slot": self._slot,
            "weight": self._weight,
            "table": self._table,
            "table_assign": self._table_assign,
            "evict": self._evict,
        }

    def __call__(self, header: dict[str, Any], arrays: list[np.ndarray]) -> None:
        kind = header["kind"]
        apply = self._by_kind.get(kind)
        if apply is None:
            raise CheckpointError(f"unknown write-ahead log record {kind!r}")
        apply(header, arrays)

    def _push(self, header: dict, arrays: list[np.ndarray]) -> None:
        push_ids = [PushId(c, s) for c, s in header["push_ids"]]
        if push_ids and all(self.ledger.answered(p) for p in push_ids):
            return  # already in the checkpoint: never apply twice
        values = iter(arrays)
        gradients = []
        for item in header["gradients"]:
            name = item["variable"]
            if item.get("keyed"):
                keys, g = next(values), next(values)
                decided = (next(values), next(values), next(values))
                record = self.tables.get(name)
                gradients.append(
                    Gradient(name, g, keys, record=record, unique=True, decided=decided)
                )
                continue
            record = self.variables.get(name)
            if item["dense"]:
                ranges = item.get("ranges")
                ranges = tuple(map(tuple, ranges)) if ranges is not None else None
                gradients.append(
                    Gradient(name, next(values), record=record, ranges=ranges)
                )
            else:
                rows = next(values)
                gradients.append(
                    Gradient(name, next(values), rows, record=record, unique=True)
                )
        state = self.optimizers.get(header["optimizer"])
        self.pushes.apply_prepared(
            state,
            gradients,
            push_ids,
            header["step"],
            False,
            header["call_variables"],
            counted=bool(header.get("counted", False)),
        )

    def _variable(self, header: dict, arrays: list[np.ndarray]) -> None:
        self.variables.create(
            header["name"],
            shape=header["shape"],
            dtype=header["dtype"],
            initial_value=arrays[0] if arrays else None,
            initializer=header["initializer"],
            seed=header["seed"],
            global_shape=header["global_shape"],
            row_offset=header["row_offset"],
        )

    def _optimizer(self, header: dict, arrays: list[np.ndarray]) -> None:
        self.optimizers.create(header["config"])

    def _reserve(self, header: dict, arrays: list[np.ndarray]) -> None:
        push_id = PushId(*header["push_id"]) if header["push_id"] else None
        self.pushes.reserve_step(
            header["optimizer"], header["variables"], push_id, step=header["step"]
        )

    def _assign(self, header: dict, arrays: list[np.ndarray]) -> None:
        record = self.variables.get(header["variable"])
        key = self.optimizers.slot_key(record, header["optimizer"], header["slot"])
        self.variables.assign(record, arrays[0], key)

    def _weights(self, header: dict, arrays: list[np.ndarray]) -> None:
        self.optimizers.set_weights(header["optimizer"], arrays)

    def _assign_weight(self, header: dict, arrays: list[np.ndarray]) -> None:
        self.optimizers.assign_weight(header["optimizer"], header["name"], arrays[0])

    def _iterations(self, header: dict, arrays: list[np.ndarray]) -> None:
        self.optimizers.set_iterations(header["optimizer"], header["iterations"])

    def _slot(self, header: dict, arrays: list[np.ndarray]) -> None:
        self.optimizers.add_slot(
            header["optimizer"],
            header["variable"],
            header["slot"],
            header["initializer"],
        )

    def _weight(self, header: dict, arrays: list[np.ndarray]) -> None:
        self.optimizers.add_weight(
            header["optimizer"],
            header["name"],
            tuple(header["shape"]),
            header["dtype"],
            header["initializer"],
        )

    def _table(self, header: dict, arrays: list[np.ndarray]) -> None:
        self.tables.create(header["name"], TableConfig.from_json(header["config"]))

    def _table_assign(self, header: dict, arrays: list[np.ndarray]) -> None:
        evicted = arrays[2] if len(arrays) > 2 else np.empty(0, np.int64)
        self.tables.assign(
            self.tables.get(header["table"]),
            arrays[0],
            arrays[1],
            evicted,
            header.get("version"),
        )

    def _evict(self, header: dict, arrays: list[np.ndarray]) -> None:
        self.tables.evict_anywhere(
            self.tables.get(header["table"]), arrays[0], header.get("version")
        )
