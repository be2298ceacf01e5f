"""What each state change writes to the write-ahead log, and how it is replayed.

The service calls ``Journal.write`` inside the locks of the change it makes
(shard locks, then the optimizer's lock, then the log's), so a checkpoint's cut
(which holds them all while it rotates the log) sees every change either with
its record in the old segment, or neither the change nor the record. Replaying
a record calls the same service method with the values the original call
ended up with (a push's step, a variable's seed), so the state comes back bit
for bit. Without ``--durability wal`` the journal writes nothing.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from adamax_ps.server import wal as wal_files
from adamax_ps.server.durable import make_dirs, write_file
from adamax_ps.server.errors import CheckpointError, WritesStoppedError
from adamax_ps.server.gradients import PreparedGradient
from adamax_ps.server.pushes import PushId

if TYPE_CHECKING:
    from adamax_ps.server.service import ParameterService

OWNER_FILE = "server.json"
log = logging.getLogger("adamax_ps.wal")


class Journal:
    """The service's write-ahead log, or nothing (``--durability checkpoint``).

    Fail-stop: once the log fails, ``failure`` says why, every change is
    refused (``check``), and each function of ``on_stop`` is called once with
    the reason (health, metrics).
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.log: wal_files.WriteAheadLog | None = None
        self.replaying = False
        self.on_stop: list[Callable[[str], None]] = []
        self._stopped = False
        self._stop_lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    @property
    def failure(self) -> str | None:
        """Why the log stopped taking changes, or None while it works."""
        return self.log.failure if self.log is not None else None

    def check(self) -> None:
        """Refuse a change once the log has failed (before anything changes)."""
        if self.log is not None and self.log.failure is not None:
            self._notify()
            raise WritesStoppedError(self._refusal())

    def _refusal(self) -> str:
        return (
            f"this server stopped accepting changes: {self.log.failure}. Reads "
            "still work; restart it to recover every acknowledged change from "
            "its log"
        )

    def _notify(self) -> None:
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        log.error("fail-stop: %s; refusing every change until restarted", self.failure)
        for listener in self.on_stop:
            listener(self.failure or "")

    def _guarded(self, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except WritesStoppedError:
            self._notify()
            raise WritesStoppedError(self._refusal()) from None

    def claim(self, server_index: int, num_servers: int) -> tuple[int, int]:
        """The (server index, cluster size) this log belongs to: recorded in
        ``server.json`` (atomically) on first use, read back afterwards."""
        path = self.folder / OWNER_FILE
        try:
            owner = json.loads(path.read_text())
            return int(owner["server_index"]), int(owner["num_servers"])
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path} is damaged: {e!r}") from None
        make_dirs(self.folder)
        text = json.dumps({"server_index": server_index, "num_servers": num_servers})
        write_file(path, text.encode())
        return server_index, num_servers

    def check_replayable(self, since: int, what: str) -> None:
        """``CheckpointError`` unless every segment from ``since`` on is there."""
        wal_files.check_segments(self.folder, since, what)

    def replay(self, service: ParameterService, since: int) -> int:
        """Apply the records of segments ``since`` and up; then append to the
        newest. Returns how many records were replayed."""
        self.check_replayable(since, f"replaying {self.folder}")
        count = 0
        self.replaying = True
        try:
            for header, arrays in wal_files.read(self.folder, since):
                replay(service, header, arrays)
                count += 1
        finally:
            self.replaying = False
        found = [n for n, _ in wal_files.segments(self.folder)]
        self.log = wal_files.WriteAheadLog(self.folder, max([*found, since]))
        return count

    def rotate(self) -> int:
        """At a checkpoint's cut (log lock held): start a segment; its number."""
        if self.log is None:
            return 0
        return self._guarded(self.log.rotate)

    def prune(self, before: int) -> None:
        if self.log is not None:
            self.log.prune(before)

    def write(
        self, kind: str, header: dict[str, Any], arrays: Sequence[np.ndarray] = ()
    ) -> int:
        """Append a record (call under the change's locks); 0 when not logging."""
        if not self.enabled or self.replaying:
            return 0
        if self.log is None:
            raise CheckpointError(
                "with --durability wal the service must be restored (its log "
                "replayed) before it changes"
            )
        return self.log.append(kind, header, arrays)

    def write_push(
        self,
        optimizer: str,
        pairs: Sequence[PreparedGradient],
        push_ids,
        step: int,
        call_variables: Sequence[str],
    ) -> int:
        """Append a push as applied (see ``push_record``); 0 when not logging,
        without building the record: this is every push's path."""
        if not self.enabled or self.replaying:
            return 0
        header, arrays = push_record(pairs, push_ids, step, call_variables)
        return self.write("push", {"optimizer": optimizer, **header}, arrays)

    def wait(self, number: int) -> None:
        """Block until record ``number`` is on disk (call without locks held);
        ``WritesStoppedError`` if the log failed first (fail-stop)."""
        if number and self.log is not None:
            self._guarded(lambda: self.log.wait(number))

    def settle(self) -> None:
        """Wait for everything appended so far (before repeating an answer)."""
        if self.log is not None:
            self._guarded(lambda: self.log.wait(self.log.appended))

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


# Records -------------------------------------------------------------------------


def push_record(
    pairs: Sequence[PreparedGradient],
    push_ids,
    step: int,
    call_variables: Sequence[str],
) -> tuple[dict, list[np.ndarray]]:
    """A push as applied: prepared gradients (clipped, duplicates summed)."""
    gradients, arrays = [], []
    for pair in pairs:
        if pair.dense is not None:
            gradients.append({"variable": pair.record.name, "dense": True})
            arrays.append(pair.dense)
        else:
            gradients.append({"variable": pair.record.name, "dense": False})
            arrays += [pair.rows, pair.summed]
    header = {
        "gradients": gradients,
        "push_ids": [[p.client, p.sequence] for p in push_ids if p is not None],
        "step": step,
        "call_variables": list(call_variables),
    }
    return header, arrays


def replay(service: ParameterService, header: dict, arrays: list[np.ndarray]) -> None:
    """Apply one record to ``service`` (whose journal is in replay mode)."""
    kind = header["kind"]
    if kind == "push":
        _replay_push(service, header, arrays)
    elif kind == "variable":
        service.create_variable(
            header["name"],
            shape=header["shape"],
            dtype=header["dtype"],
            initial_value=arrays[0] if arrays else None,
            initializer=header["initializer"],
            seed=header["seed"],
            global_shape=header["global_shape"],
            row_offset=header["row_offset"],
        )
    elif kind == "optimizer":
        service.create_optimizer(header["config"])
    elif kind == "reserve":
        push_id = PushId(*header["push_id"]) if header["push_id"] else None
        service.reserve_step(
            header["optimizer"], header["variables"], push_id, step=header["step"]
        )
    elif kind == "assign":
        service.assign(
            header["variable"],
            arrays[0],
            optimizer=header["optimizer"],
            slot=header["slot"],
        )
    elif kind == "weights":
        service.set_weights(header["optimizer"], arrays)
    elif kind == "assign_weight":
        service.assign_weight(header["optimizer"], header["name"], arrays[0])
    elif kind == "iterations":
        service.set_iterations(header["optimizer"], header["iterations"])
    elif kind == "slot":
        service.add_slot(
            header["optimizer"],
            header["variable"],
            header["slot"],
            header["initializer"],
        )
    elif kind == "weight":
        service.add_weight(
            header["optimizer"],
            header["name"],
            tuple(header["shape"]),
            header["dtype"],
            header["initializer"],
        )
    else:
        raise CheckpointError(f"unknown write-ahead log record {kind!r}")


def _replay_push(service: ParameterService, header: dict, arrays: list) -> None:
    push_ids = [PushId(c, s) for c, s in header["push_ids"]]
    if push_ids and all(service.ledger.answered(p) for p in push_ids):
        return  # already in the checkpoint: never apply twice
    values = iter(arrays)
    pairs = []
    for item in header["gradients"]:
        record = service.variable(item["variable"])
        if item["dense"]:
            pairs.append(PreparedGradient(record, dense=next(values)))
        else:
            rows = next(values)
            pairs.append(PreparedGradient(record, rows=rows, summed=next(values)))
    state = service.optimizer(header["optimizer"])
    service._apply_pairs(
        state, pairs, push_ids, header["step"], False, header["call_variables"]
    )
