"""One ``apply_gradients`` call across the servers (each server's share,
the call's step, and the reads answered with it, in one round of requests),
and a gather of rows from the servers that hold them.

Asynchronous with several servers, the coordinator (server 0) takes part in
every call: it applies its share (maybe empty) with the call's step, counts
the call, records its variables for Keras's ``weights`` order, and hands out
the step of this client's next call with its answer. Only a client's first
call reserves its step with a round trip of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from adamax_ps.client.placement import call_shares, check_rows
from adamax_ps.client.push_reads import Part, plan_reads
from adamax_ps.client.transport import ApplyOptions, Gradient, PushId, Read
from adamax_ps.proto import codec

if TYPE_CHECKING:
    from adamax_ps.client.cluster import Cluster

COORDINATOR = 0


@dataclass
class CallAttempt:
    """One ``apply_gradients`` call, kept across the attempts a rescale
    makes it take: its push id, and the step it was given (once it was)."""

    push_id: PushId
    step: int | None = None
    ahead: bool = False  # the step was handed out ahead (the call counts it)


def apply_call(
    cluster: Cluster,
    optimizer: str,
    gradients: list[Gradient],
    *,
    step: int | None,
    aggregated: bool,
    clipped: bool,
    reads: Sequence[Read],
    attempt: CallAttempt,
) -> tuple[int, int, list[np.ndarray]]:
    """See ``Cluster.push``."""
    push_id = attempt.push_id
    names = [g.variable for g in gradients]
    placements = [cluster.placement(g.variable) for g in gradients]
    shares, new = call_shares(
        placements, gradients, cluster.slotted(optimizer, placements)
    )
    if cluster.wire_dtype is not None:
        shares = {
            i: [_reduced(g, cluster.wire_dtype) for g in s] for i, s in shares.items()
        }
        reads = [
            Read(r.variable, r.rows, cluster.wire_dtype)
            if r.rows is not None and cluster.placement(r.variable).dtype == np.float32
            else r
            for r in reads
        ]
    options = {
        i: ApplyOptions(step=step, aggregated=aggregated, clipped=clipped)
        for i in range(cluster.size)
    }
    if cluster.synchronous:
        targets = list(range(cluster.size))
        options[COORDINATOR].call_variables = names
        for i in targets:
            options[i].replica = cluster.replica
    elif cluster.size == 1:
        targets = [0]
    else:
        if attempt.step is not None:  # made again after a rescale
            reserved, ahead = attempt.step, attempt.ahead
        else:
            reserved = cluster.take_step_ahead(optimizer)
            ahead = reserved is not None
            if not ahead:
                # The reservation shares the call's push id (the coordinator
                # keeps one entry per client for both).
                reserved = cluster.transports[COORDINATOR].reserve_step(
                    cluster.view(COORDINATOR), optimizer, names, push_id
                )
            attempt.step, attempt.ahead = reserved, ahead
        targets = sorted(set(shares) | {COORDINATOR})
        for i in targets:
            options[i].step = reserved
        coordinator = options[COORDINATOR]
        coordinator.call_variables = names
        coordinator.reserve_next = True
        coordinator.step_reserved_ahead = ahead
    plan, parts = plan_reads(
        reads,
        cluster.placement,
        targets,
        lambda server: cluster.servers[server].max_request_rows,
    )
    for server, inline in plan.inline.items():
        options[server].reads = [part.read for part in inline]
    # Parts on servers this push leaves untouched are read alongside it.
    beside = [p for p in plan.alone if p.server not in targets]
    after = [p for p in plan.alone if p.server in targets]
    jobs = [("push", i) for i in targets] + [("read", p) for p in beside]

    def run(job: tuple[str, Any]) -> Any:
        kind, item = job
        if kind == "read":
            return read_part(cluster, item)
        return cluster.transports[item].apply(
            cluster.view(item), optimizer, shares.get(item, []), push_id, options[item]
        )

    done = cluster.map(run, jobs)
    results = dict(zip(targets, done[: len(targets)], strict=True))
    coordinator_answer = results.get(COORDINATOR)
    cluster.note_call(optimizer, new, getattr(coordinator_answer, "next_step", None))
    answers = {id(p): v for p, v in zip(beside, done[len(targets) :], strict=True)}
    for server, inline in plan.inline.items():
        answered = results[server].values
        answers.update((id(p), v) for p, v in zip(inline, answered, strict=True))
    alone = cluster.map(lambda part: read_part(cluster, part), after)
    answers.update((id(p), v) for p, v in zip(after, alone, strict=True))
    if coordinator_answer is not None and cluster.size > 1 and not cluster.synchronous:
        iterations = coordinator_answer.iterations  # the count: others only
    else:  # know the steps they applied
        iterations = max(r.iterations for r in results.values())
    return results[targets[0]].step, iterations, plan.assemble(answers, parts)


def _reduced(gradient: Gradient, wire_dtype: str) -> Gradient:
    """A float32 gradient's values as the reduced-precision wire sends them."""
    if gradient.values.dtype != np.float32:
        return gradient
    values = gradient.values.astype(codec.REDUCED[wire_dtype])
    return Gradient(gradient.variable, values, gradient.indices)


def read_part(cluster: Cluster, part: Part) -> np.ndarray:
    """One part of a read, on its own (rows in server-sized requests)."""
    read, transport = part.read, cluster.transports[part.server]
    if read.rows is None:
        return transport.read(
            read.variable, expected_bytes=part.nbytes, view=cluster.view(part.server)
        )
    count = len(read.rows)
    size = cluster.servers[part.server].max_request_rows or max(1, count)
    row_bytes = part.nbytes // max(1, count)
    pieces = [
        transport.read(
            read.variable,
            rows=read.rows[lo : lo + size],
            expected_bytes=row_bytes * len(read.rows[lo : lo + size]),
            wire_dtype=read.wire_dtype,
            view=cluster.view(part.server),
        )
        for lo in range(0, count, size)
    ]
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def gather_rows(
    cluster: Cluster, name: str, rows: np.ndarray, optimizer: str, slot: str
) -> np.ndarray:
    """See ``Cluster.gather``."""
    placement = cluster.placement(name)
    rows = check_rows(rows, placement)
    wire = cluster.wire_dtype if not (optimizer or slot) else None
    if placement.dtype != np.float32:
        wire = None
    out = np.empty((len(rows), *placement.shape[1:]), placement.dtype)

    def fetch(item) -> None:
        server, where, local = item
        local = local.astype(np.int64, copy=False)
        # At most the server's rows per request (--max-request-rows) each.
        step = cluster.servers[server].max_request_rows or len(local)
        for start in range(0, len(local), step):
            out[where[start : start + step]] = cluster.transports[server].read(
                name,
                optimizer=optimizer,
                slot=slot,
                rows=local[start : start + step],
                expected_bytes=placement.nbytes(len(local[start : start + step])),
                wire_dtype=wire,
                view=cluster.view(server),
            )

    cluster.map(fetch, placement.locate(rows))
    return out


def assign_value(
    cluster: Cluster, name: str, value: np.ndarray, optimizer: str, slot: str
) -> None:
    """See ``Cluster.assign``: each server gets its slice of the value."""
    placement = cluster.placement(name)
    if placement.keyed:
        raise ValueError(f"{name!r} is a hash-keyed table: assign rows by keys")
    value = np.asarray(value)
    if value.shape != placement.shape:
        raise ValueError(
            f"value for {name!r} must have shape {placement.shape}. "
            f"Received: {value.shape}"
        )
    value = value.astype(placement.dtype, copy=False)

    def put(piece) -> None:
        part = value[piece.lo : piece.hi] if placement.shape else value
        cluster.transports[piece.server].assign(
            cluster.view(piece.server),
            part,
            variable=name,
            optimizer=optimizer,
            slot=slot,
        )

    cluster.map(put, placement.slices)
