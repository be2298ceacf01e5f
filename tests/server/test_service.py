"""ParameterService rules: variables, validation, atomic and exactly-once pushes,
concurrency, optimizer weights and slots, statistics."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers.state import snapshot

from adamax_ps.server.errors import (
    InvalidArgumentError,
    OptimizerExistsError,
    OptimizerNotFoundError,
    PushTooOldError,
    SlotNotFoundError,
    VariableExistsError,
    VariableNotFoundError,
)
from adamax_ps.server.hyperparams import AdamaxConfig
from adamax_ps.server.ledger import ApplyResult, PushId
from adamax_ps.server.service import Gradient, NonFinitePolicy

F32 = np.float32


def dense(name, values):
    return Gradient.dense(name, np.asarray(values, F32))


def sparse(name, indices, values):
    return Gradient.sparse(name, np.asarray(indices, np.int64), np.asarray(values, F32))


class TestVariables:
    def test_create_then_attach_with_the_same_shape_and_dtype(self, service):
        record, created = service.create_variable("emb", shape=(10, 4))
        again, created_again = service.create_variable("emb", shape=[10, 4])
        assert created and not created_again and again == record

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"shape": (10, 5)}, r"shape \(10, 4\).*Requested: shape \(10, 5\)"),
            (
                {"shape": (10, 4), "dtype": "float64"},
                "Requested: shape .* dtype float64",
            ),
        ],
    )
    def test_attach_with_another_shape_or_dtype_is_an_error(
        self, service, kwargs, message
    ):
        service.create_variable("emb", shape=(10, 4))
        with pytest.raises(VariableExistsError, match=message):
            service.create_variable("emb", **kwargs)

    def test_initial_value_sets_shape_dtype_and_values(self, service):
        value = np.arange(24, dtype=np.float64).reshape(6, 4)
        record, _ = service.create_variable("w", initial_value=value)
        assert record.shape == (6, 4) and record.dtype == np.float64
        assert service.pull("w").tobytes() == value.tobytes()
        assert len(record.parts) == 3  # split by rows over the shards

    def test_split_variable_reads_back_whole(self, service):
        value = np.random.default_rng(0).normal(size=(100, 3)).astype(F32)
        service.create_variable("big", initial_value=value)
        assert service.pull("big").tobytes() == value.tobytes()
        rows = np.array([99, 0, 50, 50, 34])
        assert service.gather("big", rows).tobytes() == value[rows].tobytes()

    @pytest.mark.parametrize(
        "initializer",
        ["glorot_uniform", "random_normal", "he_normal", "ones", "glorot_normal"],
    )
    def test_initializers_do_not_depend_on_placement(self, make_service, initializer):
        one = make_service(shards=1)
        three = make_service(shards=3, split_bytes=1)
        for service in (one, three):
            service.create_variable(
                "e", shape=(9000, 3), initializer=initializer, seed=5
            )
        assert one.pull("e").tobytes() == three.pull("e").tobytes()

    def test_glorot_uniform_has_keras_limits(self, service):
        service.create_variable(
            "k", shape=(300, 200), initializer="glorot_uniform", seed=1
        )
        value = service.pull("k")
        limit = np.sqrt(6 / 500)
        assert value.min() >= -limit and value.max() <= limit
        assert value.std() == pytest.approx(limit / np.sqrt(3), rel=0.02)

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"shape": (2,), "dtype": "int32"}, "float16, float32 or float64"),
            ({"shape": (-1,)}, ">= 0"),
            ({}, "needs a shape or an initial value"),
            ({"shape": (2,), "initializer": "magic"}, "Unknown initializer"),
            ({"initial_value": np.zeros(3), "shape": (4,)}, "does not match"),
            ({"initial_value": np.array(["a"])}, "must be numeric"),
        ],
    )
    def test_bad_creations_are_refused_clearly(self, service, kwargs, message):
        with pytest.raises(InvalidArgumentError, match=message):
            service.create_variable("x", **kwargs)
        assert service.variables() == []

    def test_unknown_variable(self, service):
        with pytest.raises(VariableNotFoundError, match="'nope' does not exist"):
            service.pull("nope")


class TestOptimizers:
    def test_same_name_and_config_attaches(self, service):
        state, created = service.create_optimizer(
            AdamaxConfig.from_keras(learning_rate=0.01)
        )
        assert not created and state.name == "Adamax"

    def test_same_name_other_config_is_an_error(self, service):
        with pytest.raises(OptimizerExistsError, match="exists with another config"):
            service.create_optimizer({"learning_rate": 0.5})

    def test_config_dict_with_keras_errors(self, service):
        with pytest.raises(InvalidArgumentError, match="Unexpected keyword argument"):
            service.create_optimizer({"name": "x", "momentum": 0.9})

    def test_unknown_optimizer(self, service):
        with pytest.raises(OptimizerNotFoundError):
            service.apply("Nope", [])

    def test_weights_before_and_after_reading_iterations(self, service):
        assert service.get_weights("Adamax") == []
        assert service.iterations("Adamax") == 0
        assert [w.tolist() for w in service.get_weights("Adamax")] == [0]

    def test_get_slot_before_any_gradient_is_not_found(self, service):
        service.create_variable("w", shape=(2,))
        with pytest.raises(SlotNotFoundError, match="no slot 'm'"):
            service.get_slot("Adamax", "w", "m")

    def test_set_weights_checks_length_then_shapes_with_keras_messages(self, service):
        service.create_variable("a", shape=(2,))
        service.apply("Adamax", [dense("a", [1, 1])])
        with pytest.raises(InvalidArgumentError) as info:
            service.set_weights("Adamax", [np.array(3)])
        assert str(info.value) == (
            "You called `set_weights(weights)` on optimizer Adamax with a  weight "
            "list of length 1, but the optimizer was expecting 3 weights. "
            "Provided weights: [array(3)]..."
        )
        with pytest.raises(InvalidArgumentError) as info:
            service.set_weights("Adamax", [np.array(3), np.zeros(3), np.zeros(2)])
        assert str(info.value) == (
            "Optimizer weight shape (2,) not compatible with provided weight "
            "shape (3,)."
        )

    def test_set_weights_round_trip(self, service):
        service.create_variable("a", shape=(40,))
        service.apply("Adamax", [dense("a", np.ones(40))])
        weights = service.get_weights("Adamax")
        service.apply("Adamax", [dense("a", np.full(40, 3.0))])
        service.set_weights("Adamax", weights)
        again = service.get_weights("Adamax")
        assert [w.tobytes() for w in again] == [w.tobytes() for w in weights]
        assert service.iterations("Adamax") == 1

    def test_add_slot_and_add_weight_append_in_keras_order(self, service):
        service.create_variable("a", shape=(2,))
        service.create_variable("b", shape=(3,))
        service.apply("Adamax", [dense("a", [1, 1])])
        assert service.add_slot("Adamax", "a", "z", initializer="ones")
        assert not service.add_slot("Adamax", "a", "z")
        service.add_weight("Adamax", "scale", shape=(2,), initializer="ones")
        service.apply("Adamax", [dense("b", [1, 1, 1])])
        order = [(r.kind, r.variable, r.name) for r in service.weight_refs("Adamax")]
        assert order == [
            ("iterations", "", ""),
            ("slot", "a", "m"),
            ("slot", "a", "v"),
            ("slot", "a", "z"),
            ("weight", "", "scale"),
            ("slot", "b", "m"),
            ("slot", "b", "v"),
        ]
        assert service.slot_names("Adamax") == ["m", "v", "z"]
        assert service.get_slot("Adamax", "a", "z").tolist() == [1, 1]


class TestApply:
    def test_one_step_per_push_and_same_t_for_every_variable(self, service):
        service.create_variable("a", shape=(2,))
        service.create_variable("b", shape=(2,))
        result = service.apply("Adamax", [dense("a", [1, 1]), dense("b", [1, 1])])
        assert (result.step, result.iterations) == (0, 1)
        np.testing.assert_allclose(service.pull("a"), [-0.01, -0.01], rtol=1e-5)
        np.testing.assert_allclose(service.pull("b"), [-0.01, -0.01], rtol=1e-5)
        assert service.iterations("Adamax") == 1

    def test_same_variable_twice_is_two_sequential_updates_with_the_same_t(
        self, service
    ):
        """docs/keras-semantics.md 6, golden errors.json: m = 0.19, var = -0.0029."""
        service.create_optimizer({"name": "k"})
        service.create_variable("a", initial_value=np.zeros(2, F32))
        service.apply("k", [dense("a", [1, 1]), dense("a", [1, 1])])
        np.testing.assert_allclose(
            service.get_slot("k", "a", "m"), [0.19, 0.19], rtol=1e-6
        )
        np.testing.assert_allclose(service.pull("a"), [-0.0029, -0.0029], rtol=1e-5)
        assert service.iterations("k") == 1

    def test_empty_push_is_a_no_op(self, service):
        result = service.apply("Adamax", [])
        assert result.iterations == 0 and service.get_weights("Adamax") == []

    @pytest.mark.parametrize(
        ("bad", "message"),
        [
            (dense("b", [1, 1, 1]), r"'b' must have shape \(2,\). Received: \(3,\)"),
            (Gradient.dense("b", np.ones(2, np.float64)), "must have dtype float32"),
            (
                sparse("e", [0, 5], np.ones((2, 3))),
                r"indices\[1\] = 5 is not in \[0, 4\)",
            ),
            (sparse("e", [-1], np.ones((1, 3))), r"indices\[0\] = -1 is not in"),
            (
                Gradient.sparse("e", np.array([0.5]), np.ones((1, 3), F32)),
                "int32 or int64",
            ),
            (
                Gradient.sparse("e", np.zeros((1, 1), np.int64), np.ones((1, 3), F32)),
                "1-D",
            ),
            (sparse("e", [0], np.ones((1, 2))), r"must have shape \(1, 3\)"),
            (dense("b", [1, np.nan]), "non-finite value"),
            (sparse("e", [1], [[0, np.inf, 0]]), "non-finite value"),
            (dense("missing", [1]), "'missing' does not exist"),
            (sparse("s", [0], [1.0]), "rank >= 1"),
        ],
    )
    def test_a_bad_pair_changes_nothing(self, service, bad, message):
        service.create_variable("a", shape=(40,), initializer="ones")
        service.create_variable("b", shape=(2,), initializer="ones")
        service.create_variable("e", shape=(4, 3), initializer="ones")
        service.create_variable("s", shape=(), initializer="ones")
        service.apply("Adamax", [dense("a", np.ones(40))], PushId("w", 0))
        before = snapshot(service)
        with pytest.raises(
            (InvalidArgumentError, VariableNotFoundError), match=message
        ):
            service.apply(
                "Adamax",
                [dense("a", np.ones(40)), bad, dense("b", [1, 1])],
                PushId("w", 1),
            )
        assert snapshot(service) == before
        # The refused push id is not remembered: a corrected retry applies.
        service.apply("Adamax", [dense("a", np.ones(40))], PushId("w", 1))
        assert service.iterations("Adamax") == 2

    def test_nonfinite_allowed_by_policy_reaches_the_weights(self, make_service):
        service = make_service(shards=1, nonfinite=NonFinitePolicy.ALLOW)
        service.create_optimizer({})
        service.create_variable("a", shape=(2,))
        service.apply("Adamax", [dense("a", [np.nan, 1])])
        assert np.isnan(service.pull("a")[0])

    def test_sparse_leaves_other_rows_bit_for_bit(self, service):
        value = np.random.default_rng(1).normal(size=(60, 5)).astype(F32)
        service.create_variable("e", initial_value=value)
        service.apply("Adamax", [dense("e", np.ones((60, 5)))])
        before = {s: service.get_slot("Adamax", "e", s) for s in "mv"}
        w_before = service.pull("e")
        service.apply("Adamax", [sparse("e", [3, 3, 41], np.ones((3, 5)))])
        untouched = np.setdiff1d(np.arange(60), [3, 41])
        assert service.pull("e")[untouched].tobytes() == w_before[untouched].tobytes()
        for s in "mv":
            now = service.get_slot("Adamax", "e", s)
            assert now[untouched].tobytes() == before[s][untouched].tobytes()
            assert now[3].tobytes() != before[s][3].tobytes()

    def test_sparse_push_locks_only_the_shards_it_touches(self, service):
        service.create_variable("e", shape=(30, 4))
        record = service.variable("e")
        first_shard = record.parts[0][0]
        last_shard = record.parts[-1][0]
        with service.store.shards[last_shard].lock:  # another push holds the last shard
            service.apply("Adamax", [sparse("e", [0, 1], np.ones((2, 4)))])
        assert first_shard != last_shard and service.iterations("Adamax") == 1


class TestExactlyOnce:
    def test_a_retried_push_applies_once_and_gets_the_first_answer(self, service):
        service.create_variable("a", shape=(2,))
        first = service.apply("Adamax", [dense("a", [1, 1])], PushId("w1", 7))
        after = service.pull("a")
        again = service.apply("Adamax", [dense("a", [5, 5])], PushId("w1", 7))
        assert again == first
        assert service.pull("a").tobytes() == after.tobytes()
        assert service.iterations("Adamax") == 1

    def test_a_duplicate_of_a_push_in_flight_gets_its_answer(self, service):
        """Whether the duplicate arrives before or after the first completes, it
        gets the first's answer and applies nothing."""
        service.create_variable("a", shape=(2,))
        push_id = PushId("w", 1)
        assert service.ledger.begin(push_id) is None  # a first copy is in flight
        results = []
        duplicate = threading.Thread(
            target=lambda: results.append(
                service.apply("Adamax", [dense("a", [1, 1])], push_id)
            )
        )
        duplicate.start()
        answer = ApplyResult("Adamax", 41, 42)
        service.ledger.complete(push_id, answer)
        duplicate.join(10)
        assert results == [answer]
        assert service.pull("a").tolist() == [0, 0]

    def test_an_abandoned_push_lets_its_duplicate_apply(self, service):
        service.create_variable("a", shape=(2,))
        push_id = PushId("w", 2)
        assert service.ledger.begin(push_id) is None
        results = []
        duplicate = threading.Thread(
            target=lambda: results.append(
                service.apply("Adamax", [dense("a", [1, 1])], push_id)
            )
        )
        duplicate.start()
        service.ledger.abandon(push_id)  # the first copy failed, changed nothing
        duplicate.join(10)
        assert results[0].iterations == 1 and service.iterations("Adamax") == 1

    def test_memory_is_bounded_and_old_retries_are_refused(self, make_service):
        service = make_service(shards=1, ledger_per_client=4)
        service.create_optimizer({})
        service.create_variable("a", shape=(1,))
        for seq in range(10):
            service.apply("Adamax", [dense("a", [1])], PushId("w", seq))
        assert len(service.ledger) == 4
        with pytest.raises(PushTooOldError, match="older than the server remembers"):
            service.apply("Adamax", [dense("a", [1])], PushId("w", 3))
        assert (
            service.apply("Adamax", [dense("a", [1])], PushId("w", 8)).iterations == 9
        )
        assert service.iterations("Adamax") == 10

    @pytest.mark.parametrize("push_id", [("", 1), ("w", -1), ("x" * 300, 1)])
    def test_bad_push_ids(self, push_id):
        with pytest.raises(InvalidArgumentError):
            PushId(*push_id)


class TestConcurrency:
    def test_threads_pushing_disjoint_rows_equal_serial_pushes(self, make_service):
        """8 threads x 200 sparse pushes on disjoint rows: m and v exactly serial."""
        threads, pushes, rows = 8, 200, 64
        rng = np.random.default_rng(3)
        grads = rng.normal(size=(threads, pushes, 4, 8)).astype(F32)
        indices = [
            rng.integers(0, rows // threads, (pushes, 4)) * threads + t
            for t in range(threads)
        ]
        concurrent = make_service(shards=4, split_bytes=64)
        concurrent.create_optimizer({})
        concurrent.create_variable("e", shape=(rows, 8))

        def worker(t: int) -> None:
            for i in range(pushes):
                concurrent.apply(
                    "Adamax",
                    [Gradient.sparse("e", indices[t][i], grads[t, i])],
                    PushId(f"w{t}", i),
                )

        pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        serial = make_service(shards=1)
        serial.create_optimizer({})
        serial.create_variable("e", shape=(rows, 8))
        for t in range(threads):
            for i in range(pushes):
                serial.apply(
                    "Adamax", [Gradient.sparse("e", indices[t][i], grads[t, i])]
                )
        assert concurrent.iterations("Adamax") == serial.iterations("Adamax") == 1600
        for slot in "mv":
            a = concurrent.get_slot("Adamax", "e", slot)
            b = serial.get_slot("Adamax", "e", slot)
            assert a.tobytes() == b.tobytes()

    def test_concurrent_pushes_are_applied_in_step_order(self, make_service):
        """Replaying every push serially in the order of its step gives the
        same bits: pushes that share a shard apply in t order."""
        service = make_service(shards=3, split_bytes=64)
        service.create_optimizer({"learning_rate": 0.05})
        service.create_variable("e", shape=(30, 2))
        service.create_variable("d", shape=(5,))
        rng = np.random.default_rng(9)
        plan = [
            [
                Gradient.sparse(
                    "e", rng.integers(0, 30, 3), rng.normal(size=(3, 2)).astype(F32)
                )
            ]
            + (
                [Gradient.dense("d", rng.normal(size=5).astype(F32))]
                if i % 3 == 0
                else []
            )
            for i in range(400)
        ]
        steps = [0] * len(plan)

        def worker(start: int) -> None:
            for i in range(start, len(plan), 4):
                steps[i] = service.apply("Adamax", plan[i]).step

        pool = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        replay = make_service(shards=1)
        replay.create_optimizer({"learning_rate": 0.05})
        replay.create_variable("e", shape=(30, 2))
        replay.create_variable("d", shape=(5,))
        for i in sorted(range(len(plan)), key=lambda i: steps[i]):
            replay.apply("Adamax", plan[i])
        assert sorted(steps) == list(range(len(plan)))
        for name in ("e", "d"):
            assert service.pull(name).tobytes() == replay.pull(name).tobytes()


class TestStats:
    def test_statistics_of_value_and_slots(self, service):
        value = np.zeros((50, 2), F32)
        value[7] = [3, -4]
        service.create_variable("e", initial_value=value)
        service.apply("Adamax", [sparse("e", [7], [[1, 1]])])
        stats = service.stats("e")
        assert set(stats) == {"w", "Adamax/m", "Adamax/v"}
        w = service.pull("e")
        assert stats["w"]["l2_norm"] == pytest.approx(np.linalg.norm(w), rel=1e-6)
        assert stats["w"]["min"] == pytest.approx(w.min())
        assert stats["w"]["max"] == pytest.approx(w.max())
        assert stats["w"]["mean"] == pytest.approx(w.mean(), rel=1e-6)
        assert stats["w"]["nonzero_rows"] == 1
        assert stats["Adamax/v"]["nonzero_rows"] == 1

    def test_float16_statistics(self, make_service):
        service = make_service(shards=1)
        service.create_variable(
            "h", initial_value=np.array([[1, 2], [0, 0]], np.float16)
        )
        assert service.stats("h")["w"]["nonzero_rows"] == 1


def test_global_clipnorm_over_mixed_dtypes_is_refused(make_service):
    service = make_service(shards=1)
    service.create_optimizer({"global_clipnorm": 1.0})
    service.create_variable("a", shape=(2,), dtype="float32")
    service.create_variable("b", shape=(2,), dtype="float64")
    with pytest.raises(InvalidArgumentError, match="one dtype"):
        service.apply(
            "Adamax", [dense("a", [1, 1]), Gradient.dense("b", np.ones(2, np.float64))]
        )
