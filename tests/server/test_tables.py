"""Hash-keyed tables in the service: rows on demand, initial rows, admission,
eviction with slots reset, capacity, the memory budget, bad input, export."""

from __future__ import annotations

import numpy as np
import pytest

from adamax_ps.common.keys import server_of, shard_of
from adamax_ps.server.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    MemoryBudgetError,
    VariableExistsError,
    VariableNotFoundError,
)
from adamax_ps.server.gradients import Gradient
from adamax_ps.server.service import ParameterService, ServiceSettings

DIM = 4


def service(**settings) -> ParameterService:
    made = ParameterService(
        ServiceSettings(shards=settings.pop("shards", 3), **settings)
    )
    made.create_optimizer({"name": "Adamax", "learning_rate": 0.01})
    return made


def push(s, keys, values=None, name="t") -> None:
    keys = np.asarray(keys, np.int64)
    if values is None:
        values = np.ones((len(keys), DIM), np.float32)
    s.apply("Adamax", [Gradient.sparse(name, keys, np.asarray(values, np.float32))])


def state(s, keys, name="t"):
    """(w, m, v) rows of keys."""
    return tuple(
        s.gather_keys(name, keys, optimizer=o, slot=k)
        for o, k in ((None, None), ("Adamax", "m"), ("Adamax", "v"))
    )


def test_an_unseen_key_reads_its_initial_row_everywhere():
    keys = np.array([0, -1, 2**63 - 1, -(2**63), 12345678901234], np.int64)
    a, b = service(shards=1), service(shards=5)
    for s in (a, b):
        s.create_table("t", dim=DIM, initializer="uniform", seed=9)
    rows = a.gather_keys("t", keys)
    assert rows.dtype == np.float32 and rows.shape == (5, DIM)
    assert np.all(np.abs(rows) <= 0.05) and len(np.unique(rows[:, 0])) == 5
    np.testing.assert_array_equal(rows, b.gather_keys("t", keys))
    assert a.table_info("t")["size"] == 0  # reads never make rows
    other = service()
    other.create_table("t", dim=DIM, initializer="uniform", seed=10)
    assert not np.array_equal(rows, other.gather_keys("t", keys))


@pytest.mark.parametrize(
    "initializer", ["zeros", "ones", "normal", "truncated_normal", "glorot_uniform"]
)
def test_initializers_draw_per_key(initializer):
    s = service()
    s.create_table("t", dim=64, initializer=initializer, seed=1)
    rows = s.gather_keys("t", np.arange(2000))
    if initializer == "zeros":
        assert not rows.any()
    elif initializer == "ones":
        assert (rows == 1).all()
    elif initializer == "truncated_normal":
        assert np.abs(rows).max() <= 2 * 0.05 + 1e-7
        assert 0.03 < rows.std() < 0.05
    else:  # a row is the shape (1, dim) for fan-based ones
        want = 0.05 if initializer == "normal" else np.sqrt(6 / 65) / np.sqrt(3)
        assert rows.std() == pytest.approx(want, rel=0.05)
        assert abs(rows.mean()) < 0.01


def test_a_push_makes_rows_and_leaves_others_untouched():
    s = service()
    s.create_table("t", dim=DIM, initializer="uniform", seed=3)
    s.assign_keys("t", np.arange(100), np.random.default_rng(0).normal(size=(100, DIM)))
    before = state(s, np.arange(100))
    push(s, [7, 7, 50, -5])
    after = state(s, np.arange(100))
    changed = np.flatnonzero(np.any(before[0] != after[0], axis=1))
    assert changed.tolist() == [7, 50]
    for b, a in zip(before, after, strict=True):
        untouched = np.setdiff1d(np.arange(100), [7, 50])
        assert b[untouched].tobytes() == a[untouched].tobytes()
    m = s.gather_keys("t", [7, 50, -5], optimizer="Adamax", slot="m")
    np.testing.assert_allclose(m[:, 0], [0.2, 0.1, 0.1], rtol=1e-6)  # 7 summed twice
    info = s.table_info("t")
    assert info["size"] == 101 and info["admitted"] == 101 and info["latest_step"] == 1
    assert s.iterations("Adamax") == 1


def test_admission_by_count_drops_gradients_until_the_nth_push():
    s = service()
    s.create_table("t", dim=DIM, admission={"min_count": 3})
    for attempt in range(1, 4):
        push(s, [42, 43])
        size = s.table_info("t")["size"]
        assert size == (2 if attempt == 3 else 0)
        if attempt < 3:  # dropped: the rows still read as initial (zeros)
            assert not s.gather_keys("t", [42, 43]).any()
    assert s.table_info("t")["filtered"] == 4
    assert s.gather_keys("t", [42, 43]).any()  # the third push applied
    assert s.iterations("Adamax") == 3  # each push counted as a step


def test_admission_by_probability_is_deterministic():
    runs = []
    for _ in range(2):
        s = service()
        s.create_table("t", dim=DIM, admission={"probability": 0.25}, seed=5)
        push(s, np.arange(4000))
        runs.append(s.gather_keys("t", np.arange(4000)).any(axis=1))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert 0.2 < runs[0].mean() < 0.3


def test_an_evicted_key_comes_back_fresh():
    """TTL eviction removes w, m and v; the key's next push starts from its
    initial row with zero slots, exactly like a key never seen."""
    s = service()
    s.create_table("t", dim=DIM, initializer="uniform", eviction={"ttl_steps": 2})
    s.create_table(
        "fresh", dim=DIM, initializer="uniform", seed=s.table("t").config.seed
    )
    for _ in range(3):
        push(s, [1, 2])
    for _ in range(3):
        push(s, [2])  # key 1 is now 3 steps old
    assert s.evict_now() == 1
    assert s.table_info("t")["evicted"] == 1 and s.table_info("t")["size"] == 1
    w, m, v = state(s, [1])
    assert not m.any() and not v.any()
    np.testing.assert_array_equal(w, s.gather_keys("fresh", [1]))
    iterations = s.iterations("Adamax")
    push(s, [1])
    push(s, [1], name="fresh")  # same step scalars: one step later
    got, want = state(s, [1]), state(s, [1], name="fresh")
    assert s.iterations("Adamax") == iterations + 2
    # Not bit-equal in w (one more step of bias correction), but slots restart:
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2])


@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_capacity_evicts_by_policy_inline(policy):
    """Key 1 is updated most often but least recently: LRU evicts it for a
    new key, LFU keeps it and evicts others."""
    s = service(shards=1)
    s.create_table("t", dim=DIM, capacity=4, eviction={"policy": policy})
    push(s, [1, 2, 3, 4])
    for _ in range(3):
        push(s, [1, 1])  # duplicates sum: one update a push
    push(s, [2, 3, 4])
    push(s, [9])  # over capacity: rows go inline, down to 90% (3 of 4)
    info = s.table_info("t")
    assert info["size"] == 3 and info["evicted"] == 2
    live = set(s.export_table("t")[0].tolist())
    # Ties (2, 3 and 4: same count, same step) go by the smaller key.
    assert live == ({3, 4, 9} if policy == "lru" else {1, 4, 9})


def test_an_assignment_keeps_the_capacity_too():
    s = service(shards=1)
    s.create_table("t", dim=DIM, capacity=10)
    push(s, np.arange(10))
    s.assign_keys("t", np.arange(100, 105), np.ones((5, DIM)))
    info = s.table_info("t")
    assert info["size"] <= 10 and info["evicted"] >= 5
    assert set(range(100, 105)) <= set(s.export_table("t")[0].tolist())
    with pytest.raises(InvalidArgumentError, match="capacity"):
        s.assign_keys("t", np.arange(1000, 1011), np.ones((11, DIM)))
    assert s.table_info("t")["size"] == info["size"]


def test_capacity_never_exceeded_by_one_big_push():
    s = service(shards=1)
    s.create_table("t", dim=DIM, capacity=10)
    push(s, np.arange(25))  # 15 keys cannot get a row: dropped
    info = s.table_info("t")
    assert info["size"] == 10 and info["filtered"] == 15
    push(s, np.arange(100, 110))
    info = s.table_info("t")
    assert info["size"] == 10 and info["evicted"] == 10


def test_the_memory_budget_refuses_growth_and_changes_nothing():
    s = service(shards=1, memory_limit=200_000)
    s.create_table("t", dim=64)
    push_rows = np.arange(40)
    push(s, push_rows, np.ones((40, 64)))
    before = state(s, np.arange(1000))
    iterations = s.iterations("Adamax")
    with pytest.raises(MemoryBudgetError, match="growing table"):
        push(s, np.arange(1000, 3000), np.ones((2000, 64)))
    after = state(s, np.arange(1000))
    for b, a in zip(before, after, strict=True):
        assert b.tobytes() == a.tobytes()
    assert s.iterations("Adamax") == iterations
    assert s.table_info("t")["size"] == 40
    assert s.table_growth_refused == 1
    assert s.memory.used <= s.memory.limit


def test_bad_table_input_is_refused_naming_the_problem():
    s = service()
    s.create_table("t", dim=DIM)
    s.create_variable("w", shape=(3,))
    cases = [
        (
            lambda: s.apply(
                "Adamax", [Gradient.dense("t", np.ones((2, DIM), np.float32))]
            ),
            "IndexedSlices",
        ),
        (lambda: push(s, [1, 2], np.ones((2, DIM + 1))), "shape"),
        (lambda: push(s, [1, 2], np.full((2, DIM), np.nan)), "non-finite"),
        (
            lambda: s.apply(
                "Adamax",
                [Gradient.sparse("t", np.array([1.5]), np.ones((1, DIM), np.float32))],
            ),
            "integer",
        ),
        (lambda: s.create_table("t", dim=DIM + 1), "exists with config"),
        (lambda: s.create_table("w", dim=DIM), "is a variable"),
        (lambda: s.create_table("u", dim=0), "dim"),
        (lambda: s.create_table("u", dim=2, admission={"min_count": 0}), "min_count"),
        (
            lambda: s.create_table("u", dim=2, admission={"probability": 2}),
            "probability",
        ),
        (lambda: s.create_table("u", dim=2, eviction={"policy": "fifo"}), "policy"),
        (lambda: s.create_table("u", dim=2, eviction={"policy": "lru"}), "capacity"),
        (
            lambda: s.create_table("u", dim=2, initializer="bogus"),
            "Unknown initializer",
        ),
        (lambda: s.assign_keys("t", [1, 1], np.ones((2, DIM))), "repeat"),
        (lambda: s.gather_keys("nope", [1]), "does not exist"),
        (lambda: s.assign("t", np.ones(3)), "by keys"),
    ]
    for call, message in cases:
        with pytest.raises(
            (InvalidArgumentError, VariableExistsError, VariableNotFoundError),
            match=message,
        ):
            call()
    assert s.table_info("t")["size"] == 0 and s.iterations("Adamax") == 0


def test_keys_of_another_server_are_refused():
    s = service(server_index=1, num_servers=3)
    s.create_table("t", dim=DIM)
    keys = np.arange(100)
    mine = keys[server_of(keys, 3) == 1]
    push(s, mine)
    with pytest.raises(FailedPreconditionError, match="refresh the cluster view"):
        push(s, keys)
    assert s.table_info("t")["size"] == len(mine)


def test_a_table_push_with_a_variable_is_one_step():
    s = service()
    s.create_table("t", dim=DIM)
    s.create_variable("w", shape=(3,))
    s.apply(
        "Adamax",
        [
            Gradient.sparse("t", np.array([5]), np.ones((1, DIM), np.float32)),
            Gradient.dense("w", np.ones(3, np.float32)),
        ],
    )
    assert s.iterations("Adamax") == 1
    names = [(w.kind, w.variable) for w in s.weight_refs("Adamax")]
    assert ("slot", "w") in names and all(v != "t" for _, v in names)


def test_export_and_delta_with_tombstones():
    s = service()
    s.create_table("t", dim=DIM, eviction={"ttl_steps": 1})
    push(s, [1, 2, 3])
    keys, values, evicted, through = s.export_table("t")
    assert sorted(keys.tolist()) == [1, 2, 3] and through == 1 and not len(evicted)
    np.testing.assert_array_equal(values, s.gather_keys("t", keys))
    push(s, [2, 4])
    push(s, [4])
    s.evict_now()  # 1 and 3 expire (2 too: last updated at step 2)
    push(s, [3])  # 3 comes back
    keys, values, evicted, _ = s.export_table("t", since=through)
    assert sorted(keys.tolist()) == [3, 4]
    assert sorted(evicted.tolist()) == [1, 2]
    np.testing.assert_array_equal(values, s.gather_keys("t", keys))


def test_a_table_named_twice_in_a_push_is_one_update_of_summed_rows():
    """Two modules sharing a table push it twice: each key gets one row and
    one update with its rows summed (as the shared embedding's gradient)."""
    s = service()
    s.create_table("t", dim=DIM)
    other = service()
    other.create_table("t", dim=DIM)
    keys = np.arange(100)  # 100 new keys, twice: growth planned once
    g = Gradient.sparse("t", keys, np.ones((100, DIM), np.float32))
    s.apply("Adamax", [g, g])
    push(other, np.concatenate([keys, keys]))  # the same rows summed
    assert s.table_info("t")["size"] == 100
    assert state(s, keys)[0].tobytes() == state(other, keys)[0].tobytes()


def test_a_delta_holds_every_change_after_its_export():
    """Assignments and evictions on a part that saw fewer steps than the
    others still come after the export in change numbers."""
    s = service(shards=2)
    s.create_table("t", dim=DIM, eviction={"ttl_steps": 5})
    keys = np.arange(200)
    lagging = keys[shard_of(keys, 2) == 1][:3]
    busy = keys[shard_of(keys, 2) == 0][:3]
    push(s, lagging)
    for _ in range(10):
        push(s, busy)
    through = s.export_table("t")[3]
    assert s.evict_now() == 3  # the lagging part's keys expire
    s.assign_keys("t", lagging[:1], np.full((1, DIM), 42.0))
    keys_d, values_d, evicted, _ = s.export_table("t", since=through)
    assert keys_d.tolist() == lagging[:1].tolist() and values_d[0, 0] == 42
    assert sorted(evicted.tolist()) == sorted(lagging[1:].tolist())


def test_assignments_are_not_steps_for_the_time_to_live():
    s = service()
    s.create_table("t", dim=DIM, eviction={"ttl_steps": 3})
    push(s, [1, 2])
    for key in range(100, 110):  # loading rows takes no training step
        s.assign_keys("t", [key], np.ones((1, DIM)))
    assert s.evict_now() == 0 and s.table_info("t")["size"] == 12
