"""ParameterService: every domain rule of a server process, below any transport.

A small facade over parts with one job each, which it builds and wires:

- ``Variables`` (variables.py): create or attach, read, gather, assign;
- ``Optimizers`` (optimizers.py): optimizers, iterations, slots, weights;
- ``PushPipeline`` (pushes.py): validate -> clip/dedup -> lock -> step ->
  store, exactly once (``PushLedger``, ledger.py), synchronous rounds
  (``SyncCoordinator``, sync.py);
- ``Persistence`` (persistence.py): checkpoints, restore, the periodic
  thread, and the write-ahead log's replay (``Replayer``, replay.py).

They share the ``ShardedStore``, the memory and in-flight budgets, the
``Journal`` (write-ahead log) and the metrics. The gRPC and HTTP layers only
translate to and from this class; it never sees a proto message or an HTTP
request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adamax_ps.proto.wire import VIEW_HEADER
from adamax_ps.server import cut_import, limits
from adamax_ps.server.cut_import import CLUSTER_SPLIT_BYTES
from adamax_ps.server.errors import (
    ClusterViewError,
    FailedPreconditionError,
    InvalidArgumentError,
    RescalingError,
)
from adamax_ps.server.eviction import Evictor
from adamax_ps.server.gate import ChangeGate, gated, gated_unless
from adamax_ps.server.gradients import Gradient
from adamax_ps.server.journal import Journal
from adamax_ps.server.ledger import ApplyResult, PushId, PushLedger
from adamax_ps.server.metrics import Metrics
from adamax_ps.server.optimizer_service import OptimizerMethods
from adamax_ps.server.optimizers import Optimizers
from adamax_ps.server.persistence import CheckpointInfo, Owner, Persistence
from adamax_ps.server.pushes import PushPipeline
from adamax_ps.server.replay import Replayer
from adamax_ps.server.rescale import ServerRescale
from adamax_ps.server.stats import Stats, variable_stats
from adamax_ps.server.store import DEFAULT_SPLIT_BYTES, ShardedStore, VariableRecord
from adamax_ps.server.sync import SyncCoordinator, SyncSettings
from adamax_ps.server.table_service import TableMethods
from adamax_ps.server.tables import Tables
from adamax_ps.server.validation import NonFinitePolicy, StreamFiniteScan
from adamax_ps.server.variables import Variables

__all__ = [
    "ApplyResult",
    "CheckpointInfo",
    "Gradient",
    "NonFinitePolicy",
    "ParameterService",
    "PushId",
    "ServiceSettings",
]

DEFAULT_MAX_REQUEST_ROWS = 1 << 20


@dataclass(frozen=True)
class ServiceSettings:
    """Settings of a parameter service (the CLI fills them from flags/env)."""

    shards: int | None = None
    split_bytes: int = DEFAULT_SPLIT_BYTES
    nonfinite: NonFinitePolicy = NonFinitePolicy.REJECT
    sync: SyncSettings | None = None
    checkpoint_dir: Path | None = None
    keep_checkpoints: int = 2
    ledger_per_client: int = 1024
    ledger_max_clients: int = 4096
    server_index: int = 0
    num_servers: int = 1
    durability: str = "checkpoint"  # or "wal": see journal.py
    memory_limit: int | None = None  # state bytes; default: limits.STATE_FRACTION
    max_inflight_bytes: int | None = None  # default: limits.INFLIGHT_FRACTION
    max_request_rows: int = DEFAULT_MAX_REQUEST_ROWS  # per gather or read
    # The clients' rule for splitting variables over servers (a resize's import)
    cluster_split_bytes: int = CLUSTER_SPLIT_BYTES


class ParameterService(OptimizerMethods, TableMethods):
    """The domain core of one server process. Thread-safe."""

    apply: Callable[..., ApplyResult]  # PushPipeline.apply: one push, exactly once
    # PushPipeline.apply_and_read: a push and the reads answered with it, their
    # bytes held in the in-flight budget for the ``with`` block
    apply_and_read: Callable[
        ..., AbstractContextManager[tuple[ApplyResult, list[np.ndarray]]]
    ]

    def __init__(
        self,
        settings: ServiceSettings | None = None,
        token: str | None = None,
        peer_tls: Any = None,
    ) -> None:
        """``token`` and ``peer_tls`` (gRPC channel credentials, None for
        plaintext): how this server reaches its peers (a rescale reads their
        cuts)."""
        self.settings = s = settings or ServiceSettings()
        self._started_as = (s.server_index, s.num_servers)
        self.store = ShardedStore(s.shards, s.split_bytes)
        memory = limits.available_memory()
        self.memory = limits.MemoryBudget(
            s.memory_limit or int(memory * limits.STATE_FRACTION)
        )
        self.inflight = limits.InflightBudget(
            s.max_inflight_bytes or int(memory * limits.INFLIGHT_FRACTION)
        )
        self.ledger = PushLedger(s.ledger_per_client, s.ledger_max_clients)
        self.sync = SyncCoordinator(s.sync) if s.sync else None
        self.journal = Journal(_wal_folder(s))
        self.metrics = Metrics()
        self.gate = ChangeGate()  # closed by a rescale (rescale.py)
        coordinator = s.server_index == 0
        self._variables = Variables(
            self.store, self.journal, self.memory, self.inflight, s.max_request_rows
        )
        self._optimizers = Optimizers(
            self.store,
            self._variables,
            self.journal,
            self.memory,
            coordinator=coordinator,
            alone=s.num_servers == 1,
        )
        self._tables = Tables(
            self.store,
            self.journal,
            self.memory,
            s.max_request_rows,
            s.server_index,
            s.num_servers,
        )
        self._pushes = PushPipeline(
            store=self.store,
            variables=self._variables,
            optimizers=self._optimizers,
            ledger=self.ledger,
            journal=self.journal,
            memory=self.memory,
            metrics=self.metrics,
            nonfinite=s.nonfinite,
            sync=self.sync,
            server_index=s.server_index,
            tables=self._tables,
            gate=self.gate,
        )
        self._persistence = Persistence(
            folder=s.checkpoint_dir,
            keep=s.keep_checkpoints,
            owner=Owner(s.server_index, s.num_servers),
            store=self.store,
            optimizers=self._optimizers,
            ledger=self.ledger,
            journal=self.journal,
            memory=self.memory,
            metrics=self.metrics,
            replayer=Replayer(
                self._variables,
                self._optimizers,
                self._pushes,
                self.ledger,
                self._tables,
            ),
        )
        # A push goes straight to the pipeline (no facade frame on the hot
        # path): ``apply`` is ``PushPipeline.apply`` (through the gate there).
        self.apply = self._pushes.apply
        self.apply_and_read = self._pushes.apply_and_read
        self.evictor = Evictor(
            self._tables,
            observe=self.metrics.eviction_lock_seconds.observe,
            gate=self.gate,
        )
        self.rescale = ServerRescale(self, token, peer_tls)
        self.metrics.watch(self)  # last: it reads the fields above
        self.journal.on_stop.append(lambda reason: self.metrics.writes_stopped.inc())

    # The server -------------------------------------------------------------------

    @property
    def writes_stopped(self) -> str | None:
        """Why this server refuses every change (fail-stop), or None."""
        return self.journal.failure

    @property
    def last_checkpoint(self) -> CheckpointInfo | None:
        return self._persistence.last

    @property
    def empty(self) -> bool:
        """Nothing held yet: no variable, table or optimizer."""
        return not (self.store.records() or self.tables() or self.optimizers())

    @property
    def replayed(self) -> int:
        """Write-ahead log records replayed at restore."""
        return self._persistence.replayed

    def check_view(self, view: tuple[int, int] | None) -> None:
        """Refuse a sender whose idea of the cluster, ``(server index, number
        of servers)``, differs from this server's. A sender that states none
        (grpcurl, curl) is refused too, unless this server is alone."""
        self.rescale.check_view(view)
        mine = self.layout
        if view is None:
            if mine[1] == 1:
                return
            raise FailedPreconditionError(
                f"this server is {mine[0]} of {mine[1]}: a change must say which "
                "server of which cluster it is meant for (its view: the "
                f"{VIEW_HEADER} header over HTTP, as index/servers)"
            )
        if tuple(view) != mine:
            if self.rescale.standing.state in ("frozen", "adopted"):
                raise RescalingError(self.gate.closed or "a rescale is under way")
            raise ClusterViewError(
                f"cluster view mismatch: this server is {mine[0]} of {mine[1]}, "
                f"the client addressed it as {view[0]} of {view[1]}"
                + self.rescale.moved()
            )

    def stream_scan(
        self, buffer: np.ndarray, layout: Sequence, values: Sequence[int]
    ) -> StreamFiniteScan:
        """What searches a streamed push's gradient values for NaN and Inf as
        they arrive (``validation.StreamFiniteScan``), or passes everything
        to validation when this server lets NaN and Inf through."""
        if self.settings.nonfinite is NonFinitePolicy.ALLOW:
            return StreamFiniteScan(buffer, layout, ())
        return StreamFiniteScan(buffer, layout, values)

    # Variables --------------------------------------------------------------------

    @gated_unless(lambda self, name, **spec: self.store.get(name) is not None)
    def create_variable(self, name: str, **spec: Any) -> tuple[VariableRecord, bool]:
        """Create the variable, or attach to it if it exists with the same shape
        and dtype; see ``Variables.create``. Returns ``(record, created)``."""
        return self._variables.create(name, **spec)

    @gated_unless(
        lambda self, specs: all(self.store.get(s["name"]) is not None for s in specs)
    )
    def create_variables(
        self, specs: Sequence[Mapping[str, Any]]
    ) -> list[tuple[VariableRecord, bool]]:
        """``create_variable(**spec)`` for each spec, all or nothing."""
        return self._variables.create_many(specs)

    def variable(self, name: str) -> VariableRecord:
        return self._variables.get(name)

    def variables(self) -> list[VariableRecord]:
        return self._variables.all()

    def pull(self, name: str, *, optimizer: str | None = None, slot: str | None = None):
        """A copy of a variable's value, or of one of its slots."""
        record = self._variables.get(name)
        return self._variables.read(record, self._key(record, optimizer, slot))

    def gather(
        self,
        name: str,
        rows: Any,
        *,
        optimizer: str | None = None,
        slot: str | None = None,
    ) -> np.ndarray:
        """Copies of selected rows of a variable or slot."""
        record = self._variables.get(name)
        return self._variables.gather(record, rows, self._key(record, optimizer, slot))

    @contextmanager
    def reading(
        self,
        name: str,
        *,
        optimizer: str | None = None,
        slot: str | None = None,
        rows: Any = None,
    ) -> Iterator[np.ndarray]:
        """``pull`` (or ``gather`` of ``rows``) for a transport to send: the
        copy's bytes count in the in-flight budget until the block ends. A
        table's ``rows`` are keys (``reading_keys``)."""
        if self.is_table(name):
            with self.reading_keys(name, rows, optimizer, slot) as value:
                yield value
            return
        record = self._variables.get(name)
        key = self._key(record, optimizer, slot)
        with self._variables.reading(record, key, rows) as value:
            yield value

    @gated
    def assign(
        self,
        name: str,
        value: Any,
        *,
        optimizer: str | None = None,
        slot: str | None = None,
    ) -> None:
        """Replace a variable's value, or one of its slots."""
        if self.is_table(name):
            raise InvalidArgumentError(
                f"{name!r} is a hash-keyed table: assign rows of it by keys"
            )
        record = self._variables.get(name)
        self._variables.assign(record, value, self._key(record, optimizer, slot))

    def stats(self, name: str) -> dict[str, Stats]:
        """Norm, min, max, mean and non-zero rows of the value and every slot,
        computed in place under the shard locks (no copy of the state)."""
        return variable_stats(self.store, self._variables.get(name))

    def _key(self, record: VariableRecord, optimizer, slot):
        return self._optimizers.slot_key(record, optimizer, slot)

    # Pushes -----------------------------------------------------------------------

    @gated
    def reserve_step(
        self,
        optimizer: str,
        variables: Sequence[str],
        push_id: PushId | None = None,
        *,
        step: int | None = None,
    ) -> int:
        """Coordinator of a cluster: take the step of one ``apply_gradients``
        call (its servers then apply with it) and record its variables'
        ``weights`` order. Exactly once per push id, like a push. (``step``:
        the step taken, when the write-ahead log replays this call.)"""
        return self._pushes.reserve_step(optimizer, variables, push_id, step=step)

    # Checkpoints ------------------------------------------------------------------

    def checkpoint(
        self,
        root: Path | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> CheckpointInfo:
        """Write a consistent checkpoint (see ``persistence.py``);
        ``progress(shard)`` is called after each shard's bytes are on disk.
        Refused while a rescale holds the state (its cut is the checkpoint)."""
        if self._persistence.paused:
            raise RescalingError(
                "a rescale is under way: its cut is this server's checkpoint"
            )
        return self._persistence.checkpoint(root, progress)

    def restore(
        self, root: Path | None = None, only: Path | None = None
    ) -> CheckpointInfo | None:
        """Load the newest checkpoint (or the checkpoint ``only``) into this
        (empty) service, then replay the write-ahead log after it. None when
        there is no checkpoint."""
        return self._persistence.restore(root, only)

    @property
    def persistence(self) -> Persistence:
        return self._persistence

    @property
    def config_layout(self) -> tuple[int, int]:
        """The (server index, servers) this process was started as."""
        return self._started_as

    def set_layout(self, server_index: int, num_servers: int) -> None:
        """Become server ``server_index`` of ``num_servers`` (a rescale, or
        the layout a folder committed to); the state is emptied first."""
        self.settings = dataclasses.replace(
            self.settings, server_index=server_index, num_servers=num_servers
        )
        self._optimizers.coordinator = server_index == 0
        self._optimizers.alone = num_servers == 1
        self._tables.server_index = server_index
        self._tables.num_servers = num_servers
        self._pushes.server_index = server_index
        self._persistence.owner = Owner(server_index, num_servers)

    def journal_claim(self) -> None:
        """Record this layout as the write-ahead log's owner (a rescale's commit)."""
        if self.journal.enabled:
            self.journal.claim(*self.layout, overwrite=True)

    @property
    def layout(self) -> tuple[int, int]:
        """This server's place now: (server index, number of servers)."""
        return self.settings.server_index, self.settings.num_servers

    def import_cut(
        self, paths: list[Path], split_bytes: int = CLUSTER_SPLIT_BYTES
    ) -> CheckpointInfo:
        """Start this empty server of a resized cluster from the checkpoints of
        every server of the old one (``cut_import``), and checkpoint it."""
        readers = cut_import.old_checkpoints(paths)
        return self._persistence.import_cut(readers, split_bytes)

    def start_periodic_checkpoints(
        self,
        every: float,
        on_done: Callable[[CheckpointInfo | Exception], None] | None = None,
    ) -> None:
        """Checkpoint every ``every`` seconds on a background thread until ``close``."""
        self._persistence.start_periodic(every, on_done)

    def start_eviction(self, interval: float = 0.2) -> None:
        """Evict tables' expired and excess rows every ``interval`` seconds."""
        self.evictor.interval = interval
        self.evictor.start()

    def close(self) -> None:
        """Stop periodic checkpoints, eviction, a rebuild and the shard threads."""
        self.rescale.stopped.set()
        self.evictor.stop()
        self._persistence.stop()
        self.journal.close()
        self.store.close()


def _wal_folder(settings: ServiceSettings) -> Path | None:
    """The write-ahead log's folder (``--durability wal``), else None."""
    if settings.durability not in ("checkpoint", "wal"):
        raise ValueError(
            f"durability is 'checkpoint' or 'wal'. Received: {settings.durability!r}"
        )
    if settings.durability == "checkpoint":
        return None
    if settings.checkpoint_dir is None:
        raise ValueError("durability 'wal' needs a checkpoint folder")
    return Path(settings.checkpoint_dir) / "wal"
