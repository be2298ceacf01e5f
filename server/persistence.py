"""Persistence: a server's checkpoints, its restore at start (with the
write-ahead log's replay), and the periodic checkpoint thread.

A checkpoint is a consistent cut (``snapshot.write_cut``) written atomically
under the checkpoint folder; with ``--durability wal`` the cut also rotates
the log, and log segments are kept while any kept checkpoint needs them. A
restore loads the newest intact checkpoint into the empty service, passing
over a damaged one only when the log still holds every change since the one
before it, then replays the log after it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from adamax_ps.server import checkpoint, cut_import, kept_rows, snapshot
from adamax_ps.server.errors import (
    CheckpointError,
    FailedPreconditionError,
    ResourceExhaustedError,
)
from adamax_ps.server.journal import Journal
from adamax_ps.server.ledger import PushLedger
from adamax_ps.server.limits import MemoryBudget
from adamax_ps.server.metrics import Metrics
from adamax_ps.server.optimizers import Optimizers
from adamax_ps.server.replay import Replayer
from adamax_ps.server.store import ShardedStore

log = logging.getLogger("adamax_ps.service")


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    sequence: int
    nbytes: int
    seconds: float
    created: float
    wal_segment: int = 0  # the first log segment after this checkpoint


@dataclass(frozen=True)
class Owner:
    """The server a checkpoint folder belongs to: its index and cluster size."""

    server_index: int
    num_servers: int


class Persistence:
    """Checkpoints and restores of one service's state. Thread-safe."""

    def __init__(
        self,
        *,
        folder: Path | None,
        keep: int,
        owner: Owner,
        store: ShardedStore,
        optimizers: Optimizers,
        ledger: PushLedger,
        journal: Journal,
        memory: MemoryBudget,
        metrics: Metrics,
        replayer: Replayer,
    ) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.keep = keep
        self.owner = owner
        self.store = store
        self.optimizers = optimizers
        self.ledger = ledger
        self.journal = journal
        self.memory = memory
        self.metrics = metrics
        self.replayer = replayer
        self.last: CheckpointInfo | None = None
        self.protected: frozenset[Path] = frozenset()  # a pending rescale's cut
        self.paused = False  # no periodic checkpoint while a rescale runs
        # Called with each checkpoint written (a rescale's settle).
        self.after_checkpoint: Callable[[CheckpointInfo], None] | None = None
        self.replayed = 0  # write-ahead log records replayed at restore
        self._lock = threading.Lock()
        self._sequence = 0
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    # Checkpoints --------------------------------------------------------------------

    def checkpoint(
        self,
        root: Path | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> CheckpointInfo:
        """Write a consistent checkpoint; ``progress(shard)`` is called after
        each shard's bytes are on disk."""
        root = Path(root) if root is not None else self.folder
        if root is None:
            raise FailedPreconditionError(
                "no checkpoint folder is configured (start the server with "
                "--checkpoint-dir)"
            )
        if self.journal.enabled and root != self.folder:
            raise FailedPreconditionError(
                "with --durability wal, checkpoints go to the server's own folder"
            )
        self.journal.check()  # fail-stop: the disk is not to be trusted
        with self._lock:
            started = time.perf_counter()
            existing = checkpoint.checkpoints(root)
            sequence = max(self._sequence, existing[-1][0] if existing else 0) + 1
            writer = checkpoint.CheckpointWriter(root, sequence, self.keep)
            segment = [0]

            def remembered_and_rotated() -> dict:
                # Called with the shard and optimizer locks held, the log's
                # lock last: no change lands between the cut and the rotation.
                remembered = self.ledger.snapshot()
                if self.journal.log is not None:
                    with self.journal.log.lock:
                        segment[0] = self.journal.rotate()
                return remembered

            def metadata() -> snapshot.Metadata:
                return self.optimizers.snapshot(remembered_and_rotated)

            try:
                manifest, nbytes = snapshot.write_cut(
                    self.store, metadata, writer, progress
                )
                manifest["wal_segment"] = segment[0]
                manifest["server_index"] = self.owner.server_index
                manifest["num_servers"] = self.owner.num_servers
                path = writer.commit(manifest)
            except BaseException as e:
                writer.abort()
                if isinstance(e, OSError):
                    raise CheckpointError(f"checkpoint to {root} failed: {e}") from e
                raise
            self._sequence = sequence
            info = CheckpointInfo(
                path,
                sequence,
                nbytes,
                time.perf_counter() - started,
                time.time(),
                segment[0],
            )
            writer.prune(self.protected)
            # Keep the log segments of every kept checkpoint: if the newest is
            # found damaged at restore, the one before it plus them stand in.
            kept = [
                checkpoint.wal_segment(path) for _, path in checkpoint.checkpoints(root)
            ]
            self.journal.prune(before=min(kept, default=segment[0]))
            self.metrics.checkpoint_seconds.observe(info.seconds)
            self.last = info
            if self.after_checkpoint is not None:
                self.after_checkpoint(info)
            return info

    def start_periodic(
        self,
        every: float,
        on_done: Callable[[CheckpointInfo | Exception], None] | None = None,
    ) -> None:
        """Checkpoint every ``every`` seconds on a background thread until
        ``stop``. A failed checkpoint is reported to ``on_done`` and retried
        next period."""
        if every <= 0:
            raise ValueError(
                f"The checkpoint period must be positive. Received: {every}"
            )
        stop = self._stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every):
                if self.paused:  # a rescale is moving this server's state
                    continue
                try:
                    outcome: CheckpointInfo | Exception = self.checkpoint()
                except Exception as e:  # reported, then tried again next period
                    outcome = e
                if on_done is not None:
                    on_done(outcome)

        self._thread = threading.Thread(target=loop, name="checkpointer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the periodic checkpoints (the one being written finishes)."""
        if self._stop is not None:
            self._stop.set()
            self._thread.join()

    # Restore ------------------------------------------------------------------------

    def restore(
        self, root: Path | None = None, only: Path | None = None
    ) -> CheckpointInfo | None:
        """Load the newest checkpoint under ``root`` (or the checkpoint
        ``only``: a rescale's cut) into the (empty) service, then
        (``--durability wal``) replay the write-ahead log after it.

        Works with any shard count: saved row ranges are read straight into
        the new placement's arrays. Returns None when there is no checkpoint.
        """
        if self.store.records() or self.optimizers.all():
            raise FailedPreconditionError("restore needs an empty service")
        self._close_log()
        if only is not None:
            try:
                info = self._load(only)
            except _DamagedCheckpointError as e:
                raise CheckpointError(f"checkpoint {only} is damaged: {e}") from None
        else:
            info = self._load_newest(Path(root) if root is not None else self.folder)
        self._replay_log(info.wal_segment if info is not None else 0)
        return info

    def import_cut(
        self, readers: list[checkpoint.CheckpointReader], split_bytes: int
    ) -> CheckpointInfo:
        """Start this (empty, restored) server of a resized cluster from the
        old cluster's checkpoints, one per old server (``cut_import``), then
        checkpoint at once, before anything changes: a crash before that
        checkpoint leaves the folder as it was and the import is made again."""
        self.import_state(readers, split_bytes)
        return self.checkpoint()

    def import_state(
        self,
        readers: list[checkpoint.CheckpointReader],
        split_bytes: int,
        held: dict[str, kept_rows.Held] | None = None,
    ) -> int:
        """Fill this empty service with what it owns of the old cluster's
        cut (one reader per old server); returns the bytes it took. ``held``:
        the variables it held in the cut, still in memory (``kept_rows``)."""
        if self.store.records() or self.store.table_records():
            raise FailedPreconditionError("importing a cut needs an empty server")
        started = time.perf_counter()
        optimizers, ledger, nbytes = cut_import.import_cut(
            self.store,
            readers,
            self.owner.server_index,
            self.owner.num_servers,
            split_bytes,
            held,
        )
        self.memory.reserve(sum(self.store.nbytes_per_shard()), "the imported cut")
        self.optimizers.restore(optimizers)
        self.ledger.restore(ledger)
        log.info(
            "imported %d bytes of the %d-server cluster's cut in %.2f s",
            nbytes,
            len(readers),
            time.perf_counter() - started,
        )
        return nbytes

    def rebuild(
        self,
        readers: list[checkpoint.CheckpointReader],
        split_bytes: int,
        since: int,
    ) -> int:
        """A rescaled server's state before its first checkpoint in the new
        layout: its import of the old cluster's cut, then (``--durability
        wal``) the log's changes since the commit (segments ``since`` and
        up). Returns the bytes imported."""
        self._close_log()
        nbytes = self.import_state(readers, split_bytes)
        self._replay_log(since)
        return nbytes

    def _close_log(self) -> None:
        """Close the log a restore opened before (a rescale reloads, or a
        rebuild tries again): the next replay opens it anew."""
        if self.journal.log is not None:
            self.journal.close()
            self.journal.log = None

    def _replay_log(self, since: int) -> None:
        """(``--durability wal``) Check the log is this server's, replay its
        segments ``since`` and up, and keep it open for appending."""
        if self.journal.enabled:
            owner = self.journal.claim(self.owner.server_index, self.owner.num_servers)
            self._check_owner(f"write-ahead log {self.journal.folder}", owner)
            self.replayed = self.journal.replay(self.replayer, since)

    def discard(self, path: Path) -> None:
        """Remove a checkpoint that must never be restored (an aborted
        rescale's new layout)."""
        checkpoint.remove(path)

    def _check_owner(self, what: str, saved_as: tuple[int, int]) -> None:
        """Refuse state written by another server of the cluster (or another
        cluster size): it holds other rows."""
        index, count = self.owner.server_index, self.owner.num_servers
        if tuple(saved_as) != (index, count):
            raise CheckpointError(
                f"{what} was written by server {saved_as[0]} of {saved_as[1]}; "
                f"this server is {index} of {count}, and would hold other rows. "
                f"Start it with --server-index {saved_as[0]} --num-servers "
                f"{saved_as[1]}, or a resized cluster from empty folders"
            )

    def _load_newest(self, root: Path | None) -> CheckpointInfo | None:
        """Load the newest intact checkpoint. One found damaged (a checksum, a
        short file) is passed over for the one before it only when nothing
        is lost by it: the write-ahead log still holds every change since
        that one. Otherwise a ``CheckpointError`` names both."""
        found = checkpoint.checkpoints(root) if root is not None else []
        damaged: list[tuple[Path, str]] = []
        for _, path in reversed(found):
            try:
                info = self._load(path)
            except _DamagedCheckpointError as e:
                damaged.append((path, str(e)))
                continue
            if damaged:
                self._stand_in(info, damaged)
            return info
        if damaged:
            names = "; ".join(f"{path}: {why}" for path, why in damaged)
            raise CheckpointError(f"every checkpoint under {root} is damaged: {names}")
        return None

    def _stand_in(self, info: CheckpointInfo, damaged: list[tuple[Path, str]]) -> None:
        """Accept ``info`` in place of the damaged newer checkpoints, or refuse."""
        newest, why = damaged[0]
        problem = None
        if not self.journal.enabled:
            problem = "without --durability wal no log holds the changes made after it"
        else:
            try:
                self.journal.check_replayable(
                    info.wal_segment, f"checkpoint {info.path}"
                )
            except CheckpointError as e:
                problem = str(e)
        if problem is not None:
            self.reset()
            raise CheckpointError(
                f"the newest checkpoint {newest} is damaged ({why}), and the one "
                f"before it, {info.path}, cannot stand in for it: {problem}. Move "
                f"{newest} aside to start from {info.path} (losing the changes "
                "made between them), or put back an intact copy of it"
            )
        log.warning(
            "checkpoint %s is damaged (%s): starting from %s and its log",
            newest,
            why,
            info.path,
        )

    def _load(self, path: Path) -> CheckpointInfo:
        """Load one checkpoint into the empty service; ``_DamagedCheckpointError``
        (with the service emptied again) when its bytes fail their checks."""
        started = time.perf_counter()
        try:
            reader = checkpoint.CheckpointReader(path)
        except CheckpointError as e:
            raise _DamagedCheckpointError(str(e)) from None
        manifest = reader.manifest
        self._check_owner(
            f"checkpoint {path}",
            (manifest.get("server_index", 0), manifest.get("num_servers", 1)),
        )
        needed = sum(  # tables are counted as they are rebuilt, below
            int(entry.get("nbytes", 0))
            for entry in manifest.get("arrays", [])
            if entry.get("kind") != "table"
        )
        try:
            self.memory.reserve(needed, f"checkpoint {path}")
        except ResourceExhaustedError as e:
            raise CheckpointError(str(e)) from None
        try:
            optimizers, ledger, nbytes = snapshot.load(
                self.store, reader, self.owner.server_index, self.owner.num_servers
            )
        except (CheckpointError, KeyError, TypeError, ValueError) as e:
            self.reset()
            raise _DamagedCheckpointError(
                str(e) if isinstance(e, CheckpointError) else f"inconsistent: {e!r}"
            ) from None
        tables = sum(
            shard.tables[r.name].nbytes
            for r in self.store.table_records()
            for shard in self.store.shards
        )
        try:
            self.memory.reserve(tables, f"the tables of checkpoint {path}")
        except ResourceExhaustedError as e:
            self.reset()
            raise CheckpointError(str(e)) from None
        self.optimizers.restore(optimizers)
        self.ledger.restore(ledger)
        self._sequence = manifest["sequence"]
        info = CheckpointInfo(
            path,
            manifest["sequence"],
            nbytes,
            time.perf_counter() - started,
            manifest["created"],
            manifest.get("wal_segment", 0),
        )
        self.last = info
        return info

    def reset(self) -> None:
        """Empty the service: after a restore that failed part way, or on a
        rescale's server before it imports."""
        self.store.clear()
        self.optimizers.restore({})
        self.ledger.restore({"clients": {}, "forgotten": 0})
        self.memory.release(self.memory.used)


class _DamagedCheckpointError(Exception):
    """A checkpoint whose bytes fail their checks (the message says where)."""
