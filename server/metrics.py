"""Prometheus metrics of one server: counters the service updates as pushes are
applied or refused, and gauges read from the service at scrape time.

Each service has its own registry (several services can live in one test
process); ``/metrics`` serves it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from adamax_ps.server.journal import Journal
from adamax_ps.server.limits import InflightBudget, MemoryBudget
from adamax_ps.server.store import ShardedStore
from adamax_ps.server.sync import SyncCoordinator


class Watched(Protocol):
    """What the gauges read at each scrape (a ``ParameterService`` has it)."""

    store: ShardedStore
    memory: MemoryBudget
    inflight: InflightBudget
    journal: Journal
    sync: SyncCoordinator | None

    @property
    def last_checkpoint(self) -> Any: ...

    @property
    def writes_stopped(self) -> str | None: ...

    def optimizers(self) -> list[Any]: ...
    def table_infos(self) -> list[dict[str, Any]]: ...

    @property
    def table_growth_refused(self) -> int: ...


LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Metrics:
    """The counters and histograms of one service."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.pushes = Counter(
            "adamax_ps_pushes", "Pushes applied.", ["optimizer"], registry=r
        )
        self.requests = Counter(
            "adamax_ps_requests",
            "Requests received, by transport and method (the gRPC method, or "
            "the HTTP method and route): round trips per training step.",
            ["transport", "method"],
            registry=r,
        )
        self.rejected = Counter(
            "adamax_ps_rejected_pushes",
            "Pushes refused, by reason (error class).",
            ["reason"],
            registry=r,
        )
        self.received_bytes = Counter(
            "adamax_ps_received_bytes",
            "Tensor bytes received in pushes.",
            ["transport"],
            registry=r,
        )
        self.apply_seconds = Histogram(
            "adamax_ps_apply_seconds",
            "Time to apply a push, from validation to the answer (sync: with the "
            "wait for the other replicas).",
            ["mode"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sync_waits = Counter(
            "adamax_ps_sync_waits",
            "Synchronous pushes that waited for other replicas.",
            registry=r,
        )
        self.stale = Counter(
            "adamax_ps_stale_pushes", "Synchronous pushes refused as stale.", registry=r
        )
        self.writes_stopped = Counter(
            "adamax_ps_wal_failures",
            "Times the write-ahead log failed (a write or fsync error) and the "
            "server stopped accepting changes (fail-stop; at most 1 per process).",
            registry=r,
        )
        self.cut_sent_bytes = Counter(
            "adamax_ps_cut_sent_bytes",
            "Bytes of this server's rescale cuts sent to peers, by way: 'direct' "
            "(sendfile on the transfer port), 'local' (the file handed to a peer "
            "on this machine, which reads them) or 'grpc' (ReadCheckpointFile's "
            "stream).",
            ["way"],
            registry=r,
        )
        self.checkpoint_seconds = Histogram(
            "adamax_ps_checkpoint_seconds",
            "Time to write a checkpoint.",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )

        self.eviction_lock_seconds = Histogram(
            "adamax_ps_table_eviction_lock_seconds",
            "Time one eviction batch held a shard's lock (what a push may wait).",
            buckets=(1e-5, 1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.05, 0.1),
            registry=r,
        )

    def watch(self, service: Watched) -> None:
        """Add gauges read from ``service`` at every scrape."""
        self.registry.register(_ServiceGauges(service))


class _ServiceGauges(Collector):
    def __init__(self, service: Watched) -> None:
        self.service = service

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        service = self.service
        state = GaugeMetricFamily(
            "adamax_ps_state_bytes",
            "Bytes of variables and slots per shard.",
            labels=["shard"],
        )
        for shard, nbytes in enumerate(service.store.nbytes_per_shard()):
            state.add_metric([str(shard)], nbytes)
        yield state
        iterations = GaugeMetricFamily(
            "adamax_ps_iterations",
            "Iterations of each optimizer.",
            labels=["optimizer"],
        )
        for optimizer in service.optimizers():
            with optimizer.lock:
                iterations.add_metric([optimizer.name], optimizer.iterations)
        yield iterations
        age = GaugeMetricFamily(
            "adamax_ps_checkpoint_age_seconds",
            "Seconds since the last checkpoint (absent before one).",
        )
        if service.last_checkpoint is not None:
            age.add_metric([], time.time() - service.last_checkpoint.created)
        yield age
        accepting = GaugeMetricFamily(
            "adamax_ps_accepting_writes",
            "1 while the server accepts changes; 0 once it has stopped (fail-stop).",
        )
        accepting.add_metric([], 0 if service.writes_stopped else 1)
        yield accepting
        for name, documentation, value in (
            (
                "memory_limit_bytes",
                "The state budget (--memory-limit).",
                service.memory.limit,
            ),
            (
                "memory_used_bytes",
                "State bytes counted against the budget.",
                service.memory.used,
            ),
            (
                "inflight_limit_bytes",
                "The budget of request bytes in flight.",
                service.inflight.limit,
            ),
            ("inflight_bytes", "Request bytes in flight now.", service.inflight.used),
        ):
            gauge = GaugeMetricFamily(f"adamax_ps_{name}", documentation)
            gauge.add_metric([], value)
            yield gauge
        for name, documentation, value in (
            (
                "memory_refusals",
                "Creations refused by the memory budget.",
                service.memory.refused,
            ),
            (
                "table_growth_refusals",
                "Pushes refused: a table's growth would pass the memory budget.",
                service.table_growth_refused,
            ),
            (
                "busy_refusals",
                "Requests refused: in-flight budget full.",
                service.inflight.busy,
            ),
        ):
            counter = CounterMetricFamily(f"adamax_ps_{name}", documentation)
            counter.add_metric([], value)
            yield counter
        log = service.journal.log
        if log is not None:  # --durability wal
            for name, documentation, value in (
                ("records", "Records appended to the write-ahead log.", log.appended),
                ("bytes", "Bytes written to the write-ahead log.", log.bytes_written),
                ("syncs", "fsyncs of the write-ahead log (one per group).", log.syncs),
            ):
                counter = CounterMetricFamily(f"adamax_ps_wal_{name}", documentation)
                counter.add_metric([], value)
                yield counter
        yield from _table_families(service.table_infos())
        if service.sync is not None:
            pending = GaugeMetricFamily(
                "adamax_ps_sync_pending", "Synchronous pushes waiting for their step."
            )
            pending.add_metric([], service.sync.pending())
            yield pending


def _table_families(infos: list[dict]) -> Iterator[Any]:
    """Per hash-keyed table: rows, capacity, bytes, and the keys admitted,
    evicted and filtered so far."""
    gauges = {
        "rows": "Rows a hash-keyed table holds on this server.",
        "capacity": "A table's capacity in rows (the whole cluster's; 0: none).",
        "bytes": "Bytes a table holds on this server (rows, slots, index, filter).",
        "bytes_per_row": "A table's bytes per row held.",
    }
    counters = {
        "admitted": "Keys given a row.",
        "evicted": "Rows evicted (capacity or time to live).",
        "filtered": "Gradients of keys not admitted (dropped).",
    }
    fields = {"rows": "size"}
    for name, documentation in gauges.items():
        family = GaugeMetricFamily(
            f"adamax_ps_table_{name}", documentation, labels=["table"]
        )
        for info in infos:
            family.add_metric([info["name"]], info[fields.get(name, name)] or 0)
        yield family
    for name, documentation in counters.items():
        family = CounterMetricFamily(
            f"adamax_ps_table_{name}", documentation, labels=["table"]
        )
        for info in infos:
            family.add_metric([info["name"]], info[name])
        yield family
