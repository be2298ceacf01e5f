"""Reads answered with a push: which server answers which part of each read,
and the values put back together.

A worker's step reads what the next step needs (its dense weights, the next
batch's embedding rows) once its push is applied. Each server the push goes to
answers its own parts with the push, in the same round trip, up to
``INLINE_READ_BYTES`` (and the server's rows per request); the rest are read
on their own: alongside the push when the push leaves that server untouched
(the values are the same either way), after it otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from adamax_ps.client.placement import Placement, check_rows
from adamax_ps.client.transport import Read
from adamax_ps.proto.wire import INLINE_READ_BYTES


@dataclass(frozen=True)
class Part:
    """One server's part of read ``index``: its slice (``lo`` its first row)
    or the rows at positions ``where`` of the read's ``rows``."""

    index: int
    server: int
    read: Read
    nbytes: int
    where: np.ndarray | None = None


@dataclass
class ReadPlan:
    """Parts answered with the push (``inline``, by server), parts read on
    their own (``alone``), and how each read's value is assembled."""

    placements: list[Placement]
    rows: list[np.ndarray | None]
    inline: dict[int, list[Part]] = field(default_factory=dict)
    alone: list[Part] = field(default_factory=list)

    def assemble(self, answers: dict[int, np.ndarray], parts: list[Part]) -> list:
        """Each read's value from its parts' answers (keyed by ``id(part)``)."""
        values: list = []
        for index, (placement, rows) in enumerate(
            zip(self.placements, self.rows, strict=True)
        ):
            mine = [p for p in parts if p.index == index]
            if rows is None:
                pieces = [answers[id(p)] for p in mine]
                values.append(pieces[0] if len(pieces) == 1 else np.concatenate(pieces))
                continue
            out = np.empty((len(rows), *placement.shape[1:]), placement.dtype)
            for part in mine:
                out[part.where] = answers[id(part)]
            values.append(out)
        return values


def plan_reads(
    reads: Sequence[Read],
    placement_of: Callable[[str], Placement],
    targets: Sequence[int],
    max_rows: Callable[[int], int],
) -> tuple[ReadPlan, list[Part]]:
    """Split ``reads`` (global rows, or whole variables) into server parts;
    those of a server in ``targets`` ride on its push while they fit."""
    placements = [placement_of(r.variable) for r in reads]
    rows = [
        None if r.rows is None else check_rows(r.rows, p)
        for r, p in zip(reads, placements, strict=True)
    ]
    plan = ReadPlan(placements, rows)
    parts: list[Part] = []
    for index, (read, placement) in enumerate(zip(reads, placements, strict=True)):
        wanted = rows[index]
        if wanted is None and placement.keyed:
            raise ValueError(
                f"{placement.name!r} is a hash-keyed table: read it by keys"
            )
        if wanted is None:
            parts += [
                Part(
                    index,
                    piece.server,
                    Read(read.variable, None, read.wire_dtype),
                    placement.nbytes(piece.hi - piece.lo),
                )
                for piece in placement.slices
            ]
            continue
        for server, where, local in placement.locate(wanted):
            parts.append(
                Part(
                    index,
                    server,
                    Read(read.variable, local, read.wire_dtype),
                    placement.nbytes(len(local)),
                    where,
                )
            )
    budget = dict.fromkeys(targets, INLINE_READ_BYTES)
    for part in parts:
        limit = max_rows(part.server)
        fits = part.server in budget and part.nbytes <= budget[part.server]
        if fits and part.read.rows is not None and limit:
            fits = len(part.read.rows) <= limit
        if fits:
            budget[part.server] -= part.nbytes
            plan.inline.setdefault(part.server, []).append(part)
        else:
            plan.alone.append(part)
    return plan, parts
