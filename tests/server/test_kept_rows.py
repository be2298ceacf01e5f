"""The rows an old server keeps through a rescale (``server/kept_rows.py``):
which parts stay as views of the old arrays, which ranges are imported on a
free shard, when the variable is imported whole instead, and the pages of
the rows that left handed back while the kept rows stay intact."""

from __future__ import annotations

import mmap

import numpy as np

from adamax_ps.server.kept_rows import Held, layout, release_outside
from adamax_ps.server.store import ShardedStore, VariableRecord

DIM = 1024  # 4 KiB rows: a row is a page


def _held(first: int, rows: int, shards: int) -> Held:
    """A store's variable of global rows ``[first, first + rows)`` of 120,
    split over ``shards``, with one slot; every value is its global row."""
    store = ShardedStore(shards, split_bytes=1)  # split by rows over shards
    shape = (rows, DIM)
    record = VariableRecord(
        "emb",
        shape,
        np.dtype(np.float32),
        store.placement("emb", shape, np.dtype(np.float32)),
        "zeros",
        0,
        (120, DIM),
        first,
    )

    def fill(out: np.ndarray, lo: int) -> None:
        out[:] = np.arange(first + lo, first + lo + len(out))[:, None]

    store.add(record, fill)
    for part in store.parts(record):
        part.slots[("adamax", "m")] = -part.value
    return Held(record, store.parts(record))


def test_a_server_that_keeps_a_prefix_of_its_rows_keeps_them_all_in_place():
    held = _held(0, 60, 2)  # server 0 of 2 -> 0 of 3: rows 0..40 of 0..60
    parts = layout(held, (120, DIM), np.dtype(np.float32), (0, 40), 2)
    assert [(s, lo, hi, kept is not None) for s, lo, hi, kept in parts] == [
        (0, 0, 30, True),
        (1, 30, 40, True),
    ]
    for _, lo, hi, (old, view) in parts:
        assert np.shares_memory(view.value, old.value)
        assert (view.value[:, 0] == np.arange(lo, hi)).all()
        assert (view.slots[("adamax", "m")][:, 0] == -np.arange(lo, hi)).all()


def test_rows_from_elsewhere_go_on_a_free_shard_in_row_order():
    held = _held(60, 60, 2)  # server 1 of 2 -> 1 of 3: rows 40..80
    parts = layout(held, (120, DIM), np.dtype(np.float32), (40, 80), 2)
    assert [(s, lo, hi, kept is not None) for s, lo, hi, kept in parts] == [
        (1, 0, 20, False),  # rows 40..60 come from server 0's cut
        (0, 20, 40, True),  # rows 60..80 were held in shard 0
    ]


def test_without_a_free_shard_or_anything_kept_the_variable_is_imported_whole():
    float32 = np.dtype(np.float32)
    held = _held(0, 40, 2)  # 3 -> 2: rows 0..60, keeps 0..40 on both shards
    assert layout(held, (120, DIM), float32, (0, 60), 2) is None
    assert layout(held, (120, DIM), float32, (60, 120), 2) is None  # none kept
    assert layout(held, (121, DIM), float32, (0, 40), 2) is None  # not the same
    assert layout(held, (120, DIM), np.dtype(np.float64), (0, 40), 2) is None
    assert layout(None, (120, DIM), float32, (0, 40), 2) is None


def test_the_pages_of_rows_that_left_are_handed_back_and_the_kept_ones_stay():
    held = _held(60, 60, 2)  # shard 0: rows 60..90, shard 1: 90..120
    parts = layout(held, (120, DIM), np.dtype(np.float32), (40, 80), 2)
    (_, _, _, (old, view)) = next(p for p in parts if p[3] is not None)
    released = release_outside(parts)
    # Rows 80..90 of shard 0 left: 10 rows of a page each, for value and m;
    # only whole pages go (the arrays need not start on a page).
    assert 2 * 9 * mmap.PAGESIZE <= released <= 2 * 10 * DIM * 4
    assert (view.value[:, 0] == np.arange(60, 80)).all()
    assert (old.value[21:29] == 0).all()  # what the system gives back: zeros
    assert (view.slots[("adamax", "m")][:, 0] == -np.arange(60, 80)).all()
