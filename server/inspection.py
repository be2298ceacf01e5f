"""What a server holds, for people: descriptions, statistics, top rows, history.

Read-only views of a ParameterService for the REST API and the dashboard.
Statistics are computed in place under the shard locks (one pass, no copy of
the state). History is sampled only while someone reads it (a dashboard is
open), so an unwatched server spends nothing on it.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from adamax_ps.server import kernels
from adamax_ps.server.errors import InvalidArgumentError, SlotNotFoundError
from adamax_ps.server.service import ParameterService
from adamax_ps.server.stats import variable_stats
from adamax_ps.server.store import VariableRecord

PAGE = os.sysconf("SC_PAGE_SIZE")
HISTORY_SAMPLES = 600
SCORE_ROWS = 1 << 14  # rows scored at a time by top rows and update norms
WATCH_SECONDS = 60.0  # sample while the history was read within this time
TABLE_COUNTS = ("size", "admitted", "evicted", "filtered", "bytes")  # sampled


def resident_bytes() -> int:
    """This process's resident memory."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


@dataclass(frozen=True)
class TopRow:
    row: int
    score: float
    values: np.ndarray | None


class Inspector:
    """Read-only queries over one service, and its sampled history."""

    def __init__(self, service: ParameterService, interval: float = 1.0) -> None:
        self.service = service
        self.interval = interval
        self.started = time.time()
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY_SAMPLES)
        self._lock = threading.Lock()
        self._watched = 0.0
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    # Descriptions -------------------------------------------------------------------

    def server(self) -> dict[str, Any]:
        service = self.service
        settings = service.settings
        sync = settings.sync
        last = service.last_checkpoint
        shard_bytes = service.store.nbytes_per_shard()
        return {
            "server_index": settings.server_index,
            "num_servers": settings.num_servers,
            "shards": service.store.num_shards,
            "replicas": sync.replicas if sync else 0,
            "replicas_to_aggregate": sync.needed if sync else 0,
            "uptime_seconds": time.time() - self.started,
            "resident_bytes": resident_bytes(),
            "state_bytes": sum(shard_bytes),
            "shard_state_bytes": shard_bytes,
            "limits": {
                "memory_limit_bytes": service.memory.limit,
                "memory_used_bytes": service.memory.used,
                "max_inflight_bytes": service.inflight.limit,
                "max_request_rows": settings.max_request_rows,
            },
            "writes_stopped": service.writes_stopped,
            "rescale_state": service.rescale.standing.state,
            "rebuild_error": service.rescale.standing.rebuild_error,
            "addresses": list(service.rescale.standing.addresses),
            "http_addresses": list(service.rescale.standing.http_addresses),
            "checkpoint": {
                "folder": str(settings.checkpoint_dir)
                if settings.checkpoint_dir
                else None,
                "last_path": str(last.path) if last else None,
                "last_sequence": last.sequence if last else None,
                "last_bytes": last.nbytes if last else None,
                "last_seconds": last.seconds if last else None,
                "age_seconds": time.time() - last.created if last else None,
            },
        }

    def optimizers(self) -> list[dict[str, Any]]:
        return [self.optimizer(state.name) for state in self.service.optimizers()]

    def optimizer(self, name: str) -> dict[str, Any]:
        summary = self.service.describe_optimizer(name)
        return {
            "name": summary.name,
            "config": summary.config,
            "iterations": summary.iterations,
            "pushes": summary.pushes,
            "slot_names": list(summary.slot_names),
            "weights": [
                {"kind": w.kind, "variable": w.variable, "name": w.name}
                for w in summary.weights
            ],
            "push_rate": self._rate(name),
        }

    def variables(self, stats: bool = True) -> list[dict[str, Any]]:
        return [self.variable(r.name, stats) for r in self.service.variables()]

    def variable(self, name: str, stats: bool = True) -> dict[str, Any]:
        record = self.service.variable(name)
        slots = self._slots(record)
        value_bytes = math.prod(record.shape) * record.dtype.itemsize
        return {
            "name": record.name,
            "shape": list(record.shape),
            "dtype": record.dtype.name,
            "global_shape": list(record.global_shape),
            "row_offset": record.row_offset,
            "value_bytes": value_bytes,
            "bytes": value_bytes * (1 + len(slots)),
            "placement": [
                {"shard": s, "lo": lo, "hi": hi} for s, lo, hi in record.parts
            ],
            "slots": [{"optimizer": o, "slot": s} for o, s in slots],
            "stats": variable_stats(self.service.store, record) if stats else None,
        }

    def _slots(self, record: VariableRecord) -> list[tuple[str, str]]:
        found = []
        for state in self.service.optimizers():
            with state.lock:
                found += [
                    (state.name, s) for s in sorted(state.slotted.get(record.name, ()))
                ]
        return found

    # Top rows ---------------------------------------------------------------------

    def top_rows(
        self,
        name: str,
        optimizer: str,
        k: int = 10,
        by: str = "update",
        max_values: int = 1024,
    ) -> list[TopRow]:
        """The k rows of a variable (this server's slice) with the largest
        ``||m / (v + eps)||`` (``by="update"``) or ``||m||`` (``by="m"``)."""
        if by not in ("update", "m"):
            raise InvalidArgumentError(f"by must be 'update' or 'm'. Received: {by!r}")
        if not 1 <= k <= 1000:
            raise InvalidArgumentError(f"k must be in [1, 1000]. Received: {k}")
        record = self.service.variable(name)
        state = self.service.optimizer(optimizer)
        with state.lock:
            has = {"m", "v"} <= state.slotted.get(name, set())
            epsilon = float(state.config.epsilon)
        if not has:
            raise SlotNotFoundError(
                f"optimizer {optimizer!r} has no slots for variable {name!r} yet"
            )
        best = np.zeros(0, np.int64)
        best_scores = np.zeros(0, np.float64)
        for lo, scores in self._row_scores(record, optimizer, epsilon, by == "update"):
            rows = np.concatenate([best, np.arange(lo, lo + len(scores))])
            scores = np.concatenate([best_scores, scores])
            if len(rows) > k:  # keep the k best so far: memory is one block
                keep = np.argpartition(-scores, k - 1)[:k]
                rows, scores = rows[keep], scores[keep]
            best, best_scores = rows, scores
        order = np.lexsort((best, -best_scores))
        top, scores = best[order], best_scores[order]
        row_size = math.prod(record.shape[1:])
        values = (
            self.service.gather(name, top.astype(np.int64))
            if row_size <= max_values
            else None
        )
        return [
            TopRow(int(r), float(scores[i]), values[i] if values is not None else None)
            for i, r in enumerate(top)
        ]

    def _row_scores(
        self, record: VariableRecord, optimizer: str, epsilon: float, by_update: bool
    ) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, scores)`` for blocks of ``SCORE_ROWS`` rows in turn: a
        request never holds a per-row array of the whole variable."""
        key_m, key_v = (optimizer, "m"), (optimizer, "v")
        store = self.service.store
        with store.locked(record.shards):
            for part in store.parts(record):
                m, v = part.rows(part.slots[key_m]), part.rows(part.slots[key_v])
                for start in range(0, m.shape[0], SCORE_ROWS):
                    mb, vb = (
                        m[start : start + SCORE_ROWS],
                        v[start : start + SCORE_ROWS],
                    )
                    if mb.dtype == np.float16:
                        mb, vb = mb.astype(np.float32), vb.astype(np.float32)
                    scores = kernels.row_scores(mb, vb, epsilon, by_update)
                    yield part.lo + start, scores

    # History ----------------------------------------------------------------------

    def history(self) -> list[dict[str, Any]]:
        """Samples so far; reading starts (or keeps) the sampler running."""
        with self._lock:
            self._watched = time.monotonic()
            if self._sampler is None or not self._sampler.is_alive():
                self._history.append(self.sample())
                self._sampler = threading.Thread(
                    target=self._sample_loop, name="history", daemon=True
                )
                self._sampler.start()
            return list(self._history)

    def _sample_loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                if time.monotonic() - self._watched > WATCH_SECONDS:
                    self._sampler = None
                    return
            sample = self.sample()
            with self._lock:
                self._history.append(sample)

    def sample(self) -> dict[str, Any]:
        """Counters of every optimizer, norms of every variable and slot, and
        the rows and admission/eviction counts of every table."""
        optimizers = {}
        for state in self.service.optimizers():
            with state.lock:
                optimizers[state.name] = {
                    "iterations": state.iterations,
                    "pushes": state.pushes,
                }
        variables = {}
        for record in self.service.variables():
            stats = variable_stats(self.service.store, record)
            norms = {key: s["l2_norm"] for key, s in stats.items()}
            slots = self._slots(record)
            with_m = {o for o, slot in slots if slot == "m"}
            for optimizer in with_m & {o for o, slot in slots if slot == "v"}:
                norms[f"{optimizer}/update"] = self.update_norm(record, optimizer)
            variables[record.name] = norms
        tables = {
            info["name"]: {field: int(info[field]) for field in TABLE_COUNTS}
            for info in self.service.table_infos()
        }
        return {
            "time": time.time(),
            "optimizers": optimizers,
            "variables": variables,
            "tables": tables,
        }

    def update_norm(self, record: VariableRecord, optimizer: str) -> float:
        """``||m / (v + eps)||`` over the whole variable slice."""
        state = self.service.optimizer(optimizer)
        with state.lock:
            epsilon = float(state.config.epsilon)
        total = 0.0
        for _, scores in self._row_scores(record, optimizer, epsilon, True):
            total += float(np.sum(scores**2))
        return math.sqrt(total)

    def _rate(self, name: str) -> float | None:
        """Pushes per second over the sampled history, when there is one."""
        with self._lock:
            samples = [s for s in self._history if name in s["optimizers"]]
        if len(samples) < 2:
            return None
        first, last = samples[max(0, len(samples) - 10)], samples[-1]
        elapsed = last["time"] - first["time"]
        pushes = (
            last["optimizers"][name]["pushes"] - first["optimizers"][name]["pushes"]
        )
        return pushes / elapsed if elapsed > 0 else None

    def close(self) -> None:
        self._stop.set()
