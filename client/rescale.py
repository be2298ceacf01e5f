"""Rescaling a running cluster: what ``adamax-ps rescale`` drives.

``rescale(addresses, to=M)`` takes the servers through the phases of
``server/rescale.py``: FREEZE every server of the old cluster (workers'
changes wait; the cut is written), ADOPT on every server of the new one
(each takes its rows of the cut), COMMIT everywhere (the new layout serves;
servers left out retire): the pause ends there. Then, while workers push,
SETTLE on every new server (its first checkpoint of the new layout) and
RELEASE everywhere (no server needs the cuts any more). A failure before
any commit ABORTs everywhere: the old layout serves again, as it was. Run
again after a crash, it finishes the rescale (or, ``abort=True``, undoes a
pending one).

``addresses`` are the old cluster's servers in server order, then any spares
(servers started beyond their cluster, waiting to be taken in). The new
cluster is the first ``M`` of them: server 0 stays server 0 (the
coordinator), a grown cluster's new servers are the spares in the order
given, a shrunk one's last servers retire.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc

from adamax_ps.client import errors
from adamax_ps.client.connection import grpc_credentials, parse_addresses
from adamax_ps.proto.v1 import parameter_server_pb2 as pb
from adamax_ps.proto.v1 import parameter_server_pb2_grpc as pb_grpc

Phase = pb.RescaleRequest.Phase
PENDING = ("frozen", "adopted")


@dataclass
class RescaleReport:
    """What a rescale did: its id, the sizes, and each phase's seconds."""

    rescale_id: str
    old_servers: int
    new_servers: int
    addresses: list[str]
    seconds: dict[str, float] = field(default_factory=dict)
    aborted: bool = False

    @property
    def paused(self) -> float:
        """How long changes were refused: freeze to commit."""
        return sum(self.seconds.get(p, 0.0) for p in ("freeze", "adopt", "commit"))


class _Servers:
    """One channel per server, and the Rescale call on each in parallel."""

    def __init__(
        self, addresses: list[str], token: str | None, tls: bool | str | None = None
    ) -> None:
        self.addresses = addresses
        credentials = grpc_credentials(tls)
        targets = [a.removeprefix("grpc://") for a in addresses]
        self.channels = [
            grpc.secure_channel(t, credentials)
            if credentials is not None
            else grpc.insecure_channel(t)
            for t in targets
        ]
        self.stubs = [pb_grpc.ParameterServerStub(c) for c in self.channels]
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.pool = ThreadPoolExecutor(max(1, len(addresses)))

    def call(self, index: int, **request: Any) -> pb.RescaleStatus:
        try:
            return self.stubs[index].Rescale(
                pb.RescaleRequest(**request), metadata=self.metadata
            )
        except grpc.RpcError as e:
            raise errors.FailedPreconditionError(
                f"{self.addresses[index]}: {e.code().name}: {e.details()}"
            ) from None

    def each(self, indices: Sequence[int], make: Callable[[int], dict]) -> list:
        futures = [self.pool.submit(self.call, i, **make(i)) for i in indices]
        return [f.result() for f in futures]

    def close(self) -> None:
        self.pool.shutdown()
        for channel in self.channels:
            channel.close()


def rescale(
    addresses: str | Sequence[str],
    to: int | None = None,
    *,
    token: str | None = None,
    tls: bool | str | None = None,
    abort: bool = False,
    split_bytes: int = 0,
    freeze_timeout: float = 60.0,
    progress: Callable[[str], None] | None = None,
) -> RescaleReport:
    """Rescale the cluster at ``addresses`` to ``to`` servers (see above);
    with ``abort``, undo a pending rescale instead. ``tls``: as ``connect``
    (None plaintext, True the system's CAs, or a CA file). ``progress(phase)`` is
    called as each phase ends: frozen, adopted, committed, settled, released."""
    addresses = parse_addresses(addresses)
    if any(not a.startswith("grpc://") for a in addresses):
        raise ValueError("a rescale talks to the servers over gRPC: grpc://host:port")
    servers = _Servers(addresses, token, tls)
    try:
        return _drive(
            servers, to, abort, split_bytes, freeze_timeout, progress or _quiet
        )
    finally:
        servers.close()


def _quiet(phase: str) -> None:
    pass


def _drive(
    servers: _Servers,
    to: int | None,
    abort: bool,
    split: int,
    timeout: float,
    progress: Callable[[str], None],
) -> RescaleReport:
    everyone = range(len(servers.addresses))
    statuses = servers.each(everyone, lambda i: {"phase": Phase.STATUS})
    old = _old_size(statuses, servers.addresses)
    pending = {s.rescale_id for s in statuses if _unfinished(s)}
    if len(pending) > 1:
        raise errors.FailedPreconditionError(
            f"the servers are in different rescales: {sorted(pending)}"
        )
    rid = pending.pop() if pending else None
    if abort:
        if rid is None or not any(s.state in PENDING for s in statuses):
            raise errors.FailedPreconditionError(
                "no rescale is pending: nothing to abort"
            )
        servers.each(everyone, lambda i: {"phase": Phase.ABORT, "rescale_id": rid})
        return RescaleReport(rid, old, old, servers.addresses[:old], aborted=True)
    if to is None or to < 1:
        raise ValueError(f"rescale needs a cluster size of at least 1. Received: {to}")
    if to > len(servers.addresses):
        raise ValueError(
            f"a cluster of {to} servers needs {to} addresses (the current servers "
            f"in order, then spares); {len(servers.addresses)} given"
        )
    if rid is not None:  # finish it as it began: to the size it adopted
        began = {
            s.num_servers
            for s in statuses
            if s.rescale_id == rid and s.state in ("adopted", "serving")
        }
        if began - {to}:
            raise ValueError(
                f"rescale {rid} is pending to {began.pop()} servers: finish it "
                "with that --to, or undo it with --abort"
            )
    new_addresses = servers.addresses[:to]
    old_addresses = servers.addresses[:old]
    rid = rid or f"{old}to{to}-{uuid.uuid4().hex[:8]}"
    report = RescaleReport(rid, old, to, new_addresses)
    committed = any(
        s.rescale_id == rid and s.state in ("serving", "retired") for s in statuses
    )
    phases = {
        "freeze": (range(old), {"timeout_seconds": timeout}),
        "adopt": (
            range(to),
            {
                "num_servers": to,
                "addresses": new_addresses,
                "old_addresses": old_addresses,
                "split_bytes": split,
            },
        ),
        "commit": (
            range(max(old, to)),
            {
                "addresses": new_addresses,
                "http_addresses": _http_addresses(statuses[:to], new_addresses),
            },
        ),
        "settle": (range(to), {}),
        "release": (everyone, {}),
    }

    def run(name: str) -> None:
        indices, extra = phases[name]
        phase = getattr(Phase, name.upper())
        started = time.perf_counter()
        servers.each(
            indices,
            lambda i: {"phase": phase, "rescale_id": rid, "server_index": i, **extra},
        )
        report.seconds[name] = time.perf_counter() - started
        progress(PROGRESS[name])

    if not committed:
        try:
            run("freeze")
            run("adopt")
        except BaseException:
            servers.each(everyone, lambda i: {"phase": Phase.ABORT, "rescale_id": rid})
            raise
    run("commit")
    run("settle")
    run("release")
    return report


PROGRESS = {
    "freeze": "frozen",
    "adopt": "adopted",
    "commit": "committed",
    "settle": "settled",
    "release": "released",
}


def _http_addresses(
    statuses: list[pb.RescaleStatus], addresses: list[str]
) -> list[str]:
    """The new cluster's HTTP addresses: each server's host as the command
    reaches it over gRPC, with the HTTP port and scheme it reports (none
    when a server reports no port)."""
    found = []
    for status, address in zip(statuses, addresses, strict=True):
        if not status.http_port:
            return []
        host = address.removeprefix("grpc://").rsplit(":", 1)[0]
        scheme = "https" if status.http_tls else "http"
        found.append(f"{scheme}://{host}:{status.http_port}")
    return found


def _unfinished(status: pb.RescaleStatus) -> bool:
    """In a rescale not done yet: pending, or committed and not yet settled
    and released, or a spare whose adoption a restart lost."""
    return bool(status.rescale_id) and (
        status.state in PENDING
        or status.state == "spare"
        or status.settling
        or bool(status.cut_sequence)
    )


def _old_size(statuses: list[pb.RescaleStatus], addresses: list[str]) -> int:
    """The old cluster's size (a pending rescale's, or the serving one's),
    checking the addresses start with its servers in order."""
    first = statuses[0]
    if first.state in ("spare", "retired"):
        raise errors.FailedPreconditionError(
            f"{addresses[0]} is {first.state}: the addresses must start with the "
            "cluster's server 0"
        )
    pending = [s.old_num_servers for s in statuses if s.state in PENDING]
    old = min(pending) if pending else first.num_servers
    if old > len(addresses):
        raise ValueError(
            f"the cluster has {old} servers: give all their addresses, in order"
        )
    for index, status in enumerate(statuses[:old]):
        if status.state == "serving" and not pending and status.server_index != index:
            raise errors.FailedPreconditionError(
                f"{addresses[index]} is server {status.server_index}, not "
                f"{index}: give the cluster's addresses in server order"
            )
        if status.state == "spare":
            raise errors.FailedPreconditionError(
                f"{addresses[index]} is a spare, not server {index} of {old}"
            )
    return old
