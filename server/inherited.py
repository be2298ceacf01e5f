"""Retries of pushes cut in the middle by a cluster resize: apply the rest.

A call spans servers; when the cluster stops for a resize, some of its
servers may have applied their share and others not. The new servers
inherit, for each such push id, which old servers applied theirs
(``ledger.Inherited``). When the worker retries the call (same push id, same
step) against the new layout, each new server applies only the rows (table
keys, whole variables, row ranges of split variables) whose old owner had
not applied them; the coordinator counts the call only if the old one had
not. A push every old server answered is simply answered. So nothing is
lost and nothing applied twice across the resize.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from adamax_ps.common.keys import server_of
from adamax_ps.common.placement import place_rows
from adamax_ps.server.gradients import Gradient
from adamax_ps.server.ledger import ApplyResult, Inherited, PushId

if TYPE_CHECKING:
    from adamax_ps.server.optimizer_state import OptimizerState
    from adamax_ps.server.pushes import PushPipeline


def finish(
    pipeline: PushPipeline,
    state: OptimizerState,
    prepared: list[Gradient],
    push_id: PushId,
    inherited: Inherited,
    options: dict,
) -> ApplyResult:
    """Apply what the old cluster had not of an inherited push (``options``:
    ``step``, ``names``, ``counted``, ``reserve_next`` as the push gave them)."""
    rest = remaining(prepared, inherited.holders, pipeline.ledger.old_layout)
    step = options["step"]
    if step is None:
        step = inherited.answer.step
    counted = options["counted"] and 0 not in inherited.holders
    if rest:
        return pipeline.apply_prepared(
            state,
            rest,
            [push_id],
            step,
            False,
            options["names"],
            counted=counted,
            reserve_next=options["reserve_next"],
        )
    with state.lock:
        next_step = state.take_step() if options["reserve_next"] else None
    result = dataclasses.replace(inherited.answer, next_step=next_step)
    pipeline.ledger.complete(push_id, result)
    return result


def remaining(
    gradients: list[Gradient], holders: frozenset[int], layout: dict | None
) -> list[Gradient]:
    """The parts of a validated, prepared push whose old owners (of the old
    ``layout``) are not among ``holders``."""
    if layout is None:
        return gradients
    servers, split = int(layout["num_servers"]), int(layout["split_bytes"])
    missing_owners = np.array(sorted(set(range(servers)) - set(holders)), np.int64)
    out = []
    for g in gradients:
        record = g.record
        if g.keyed:
            keep = np.isin(server_of(g.indices, servers), missing_owners)
            if keep.any():
                out.append(_rows(g, keep))
            continue
        slices = place_rows(
            record.name, record.global_shape, record.dtype.itemsize, servers, split
        )
        missing = [(lo, hi) for owner, lo, hi in slices if owner not in holders]
        if not missing:
            continue
        if len(slices) == 1 or not record.shape:
            out.append(g)
            continue
        first, rows = record.row_offset, record.rows
        if not g.is_dense:
            found = g.indices + first
            keep = np.zeros(len(found), bool)
            for lo, hi in missing:
                keep |= (found >= lo) & (found < hi)
            if keep.any():
                out.append(_rows(g, keep))
            continue
        ranges = tuple(
            (max(lo, first) - first, min(hi, first + rows) - first)
            for lo, hi in missing
            if min(hi, first + rows) > max(lo, first)
        )
        if ranges == ((0, rows),):
            out.append(g)
        elif ranges:
            out.append(dataclasses.replace(g, ranges=ranges))
    return out


def _rows(g: Gradient, keep: np.ndarray) -> Gradient:
    return dataclasses.replace(g, indices=g.indices[keep], values=g.values[keep])
