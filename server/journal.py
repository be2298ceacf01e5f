"""The service's write-ahead log: what each state change writes, and reading
the records back in order for ``replay``.

Every part of the service calls ``Journal.write`` inside the locks of the
change it makes (shard locks, then the optimizer's lock, then the log's), so a
checkpoint's cut (which holds them all while it rotates the log) sees every
change either with its record in the old segment, or neither the change nor
the record. Without ``--durability wal`` the journal writes nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adamax_ps.server import wal as wal_files
from adamax_ps.server.durable import make_dirs, write_file
from adamax_ps.server.errors import CheckpointError, WritesStoppedError
from adamax_ps.server.gradients import Gradient
from adamax_ps.server.ledger import PushId

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

    def claim(
        self, server_index: int, num_servers: int, overwrite: bool = False
    ) -> tuple[int, int]:
        """The (server index, cluster size) this log belongs to: recorded in
        ``server.json`` (atomically) on first use, read back afterwards
        (``overwrite``: recorded anew, a rescale's commit)."""
        path = self.folder / OWNER_FILE
        try:
            if overwrite:
                raise FileNotFoundError
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

    def discard(self) -> None:
        """Remove the whole log: a spare server's, which holds nothing (an
        aborted adoption's segments must not be replayed into the next)."""
        self.close()
        self.log = None
        if self.folder is not None and self.folder.exists():
            shutil.rmtree(self.folder)

    def check_replayable(self, since: int, what: str) -> None:
        """``CheckpointError`` unless every segment from ``since`` on is there."""
        wal_files.check_segments(self.folder, since, what)

    def replay(
        self, apply: Callable[[dict[str, Any], list[np.ndarray]], None], since: int
    ) -> int:
        """``apply`` each record of segments ``since`` and up (nothing is
        logged meanwhile); then append to the newest. Returns how many records
        were replayed."""
        self.check_replayable(since, f"replaying {self.folder}")
        count = 0
        self.replaying = True
        try:
            for header, arrays in wal_files.read(self.folder, since):
                apply(header, arrays)
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
        gradients: Sequence[Gradient],
        push_ids: Sequence[PushId | None],
        step: int,
        call_variables: Sequence[str],
        counted: bool = False,
    ) -> int:
        """Append a push as applied (see ``push_record``); 0 when not logging,
        without building the record: this is every push's path."""
        if not self.enabled or self.replaying:
            return 0
        header, arrays = push_record(gradients, push_ids, step, call_variables)
        if counted:  # a step handed out ahead: this push counts the call
            header["counted"] = True
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
    gradients: Sequence[Gradient],
    push_ids: Sequence[PushId | None],
    step: int,
    call_variables: Sequence[str],
) -> tuple[dict, list[np.ndarray]]:
    """A push as applied: its gradients clipped, duplicate rows summed."""
    described, arrays = [], []
    for g in gradients:
        if g.keyed:  # with what it decided: admitted keys, evicted keys
            described.append({"variable": g.variable, "dense": False, "keyed": True})
            arrays += [g.indices, g.values, *g.decided]
            continue
        item = {"variable": g.variable, "dense": g.is_dense}
        if g.ranges is not None:
            item["ranges"] = [list(r) for r in g.ranges]
        described.append(item)
        arrays += [g.values] if g.is_dense else [g.indices, g.values]
    header = {
        "gradients": described,
        "push_ids": [[p.client, p.sequence] for p in push_ids if p is not None],
        "step": step,
        "call_variables": list(call_variables),
    }
    return header, arrays
