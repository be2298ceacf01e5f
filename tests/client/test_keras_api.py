"""The client's Adamax behaves as Keras's (golden errors.json,
docs/keras-semantics.md sections 6-8), raising before anything is sent, against
real servers."""

from __future__ import annotations

import itertools
import logging
import re

import numpy as np
import pytest
from helpers.golden import load_errors

from adamax_ps.client import Adamax, IndexedSlices, connect, errors

F32 = np.float32
_unique = itertools.count()


def golden(case: str) -> dict:
    return next(e for e in load_errors() if e["case"].startswith(case))


def fresh(cluster, **kwargs):
    """An optimizer and two variables of their own, a = [1, 2], c = [1, 2]."""
    name = f"opt{next(_unique)}"
    opt = Adamax(name=name, cluster=cluster, **kwargs)
    a = cluster.variable(f"{name}/a", np.array([1.0, 2.0], F32))
    c = cluster.variable(f"{name}/c", np.array([1.0, 2.0], F32))
    return opt, a, c


def test_constructor_errors_are_raised_before_anything_is_sent(cluster):
    with pytest.raises(
        TypeError, match="Unexpected keyword argument passed to optimizer: foo"
    ):
        Adamax(foo=1, cluster=cluster)
    with pytest.raises(ValueError, match=re.escape("Expected lr >= 0, received: -0.5")):
        Adamax(lr=-0.5, cluster=cluster)
    with pytest.raises(ValueError, match="Cannot accept both `clipnorm`"):
        Adamax(clipnorm=1.0, global_clipnorm=1.0, cluster=cluster)


def test_all_gradients_none(cluster, caplog):
    opt, a, _ = fresh(cluster)
    with pytest.raises(
        ValueError,
        match=r"No gradients provided for any variable: "
        r"\(\['opt\d+/a'\],\)",
    ):
        opt.apply_gradients([(None, a)])
    assert int(opt.iterations) == 0


def test_none_gradient_is_skipped_with_a_warning(cluster, caplog):
    opt, a, c = fresh(cluster)
    with caplog.at_level(logging.WARNING, logger="adamax_ps.client"):
        opt.apply_gradients([(np.ones(2, F32), a), (None, c)])
    assert "Gradients do not exist for variables" in caplog.text
    with pytest.raises(KeyError):
        opt.get_slot(c, "m")
    np.testing.assert_array_equal(c.numpy(), [1, 2])


def test_empty_list_is_a_no_op(cluster):
    opt, a, _ = fresh(cluster)
    expected = golden("apply_gradients([])")["result"]
    assert opt.apply_gradients([]) is None
    assert int(opt.iterations) == expected["iterations"]
    assert a.numpy().tolist() == expected["var"]


@pytest.mark.parametrize("shape", ["not pairs", "swapped"])
def test_malformed_pairs_are_type_errors(cluster, shape):
    opt, a, _ = fresh(cluster)
    g = np.ones(2, F32)
    items = [g] if shape == "not pairs" else [(a, g)]
    with pytest.raises(TypeError, match="RemoteVariable"):
        opt.apply_gradients(items)


def test_triples_raise_keras_value_error(cluster):
    opt, a, _ = fresh(cluster)
    with pytest.raises(ValueError) as info:
        opt.apply_gradients([(np.ones(2, F32), a, 1)])
    assert str(info.value) == golden("apply_gradients([(g, a, 1)])")["message"]


@pytest.mark.parametrize(
    ("gradient", "message"),
    [
        (np.ones(3, F32), r"must have shape \(2,\). Received: \(3,\)"),
        (np.ones(2, np.float64), "must have dtype float32. Received: float64"),
        (
            IndexedSlices(np.ones((1,), F32), np.array([5])),
            r"indices\[0\] = 5 is not "
            r"in \[0, 2\)",
        ),
    ],
)
def test_mismatches_are_value_errors_and_change_nothing(cluster, gradient, message):
    opt, a, c = fresh(cluster)
    with pytest.raises(ValueError, match=message):
        opt.apply_gradients([(np.ones(2, F32), c), (gradient, a)])
    # Atomic, better than TensorFlow: c is not updated either.
    assert int(opt.iterations) == 0
    np.testing.assert_array_equal(c.numpy(), [1, 2])


def test_the_same_variable_twice(cluster):
    expected = golden("apply_gradients with the same variable twice")["result"]
    name = f"opt{next(_unique)}"
    opt = Adamax(name=name, cluster=cluster)
    a = cluster.variable(f"{name}/a", np.zeros(2, F32))
    assert opt.apply_gradients([(np.ones(2, F32), a), (np.ones(2, F32), a)]) == 1
    np.testing.assert_array_equal(a.numpy(), np.asarray(expected["var"], F32))
    np.testing.assert_array_equal(
        opt.get_slot(a, "m").numpy(), np.asarray(expected["m"], F32)
    )


def test_set_weights_messages(cluster):
    opt, a, _ = fresh(cluster)
    opt.apply_gradients([(np.ones(2, F32), a)])
    with pytest.raises(ValueError) as info:
        opt.set_weights([np.array(3)])
    assert str(info.value) == golden("set_weights with wrong length")[
        "message"
    ].replace("optimizer Adamax", f"optimizer {opt.name}")
    with pytest.raises(ValueError) as info:
        opt.set_weights([np.array(3), np.zeros(3), np.zeros(2)])
    assert str(info.value) == golden("set_weights with wrong shape")["message"]


def test_get_and_set_weights_round_trip(cluster):
    opt, a, c = fresh(cluster)
    opt.apply_gradients([(np.ones(2, F32), a), (np.full(2, 2, F32), c)])
    weights = opt.get_weights()
    assert [w.shape for w in weights] == [(), (2,), (2,), (2,), (2,)]
    opt.apply_gradients([(np.ones(2, F32), a), (np.ones(2, F32), c)])
    opt.set_weights(weights)
    assert [w.tobytes() for w in opt.get_weights()] == [w.tobytes() for w in weights]


def test_get_slot_errors_are_keras_key_errors(cluster):
    opt, a, c = fresh(cluster)
    opt.apply_gradients([(np.ones(2, F32), a)])
    with pytest.raises(KeyError) as info:
        opt.get_slot(a, "u")
    assert str(info.value) == golden("get_slot(var, 'u')")["message"]
    with pytest.raises(KeyError):
        opt.get_slot(c, "m")


def test_reading_iterations_creates_it(cluster):
    opt, _a, _ = fresh(cluster)
    assert opt.get_weights() == []
    assert opt.iterations.numpy() == 0
    assert [w.tolist() for w in opt.get_weights()] == [0]


def test_slots_and_weights_added_by_hand(cluster):
    opt, a, _ = fresh(cluster)
    opt.apply_gradients([(np.ones(2, F32), a)])
    z = opt.add_slot(a, "z", initializer="ones")
    assert z.numpy().tolist() == [1, 1]
    scale = opt.add_weight("scale", shape=(3,), initializer="ones")
    assert opt.get_slot_names() == ["m", "v", "z"]
    assert [w.name for w in opt.weights][-2:] == [f"{opt.name}/{a.name}/z:0", "scale"]
    scale.assign(np.array([1, 2, 3], F32))
    assert opt.get_weights()[-1].tolist() == [1, 2, 3]


def test_from_config_and_get_config(cluster, monkeypatch):
    opt, _a, _ = fresh(cluster, learning_rate=0.02, clipvalue=0.5)
    config = opt.get_config()
    assert config == {
        "name": opt.name,
        "clipvalue": 0.5,
        "learning_rate": 0.02,
        "decay": 0.0,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-07,
    }
    monkeypatch.setenv("ADAMAX_PS_ADDRESS", ",".join(cluster.addresses))
    monkeypatch.setattr("adamax_ps.client.cluster._default", cluster)
    again = Adamax.from_config(config)
    assert again.get_config() == config
    assert again.lr == 0.02 and again.beta_1 == 0.9


def test_attaching_with_another_config_is_a_value_error(cluster):
    opt, _, _ = fresh(cluster)
    with pytest.raises(ValueError, match="exists with another config"):
        Adamax(name=opt.name, learning_rate=0.5, cluster=cluster)
    assert isinstance(Adamax(name=opt.name, cluster=cluster), Adamax)  # same config


def test_variables_attach_or_refuse(cluster):
    name = f"v{next(_unique)}"
    v = cluster.variable(name, shape=(4, 2), initializer="ones")
    again = cluster.variable(name, shape=(4, 2))
    assert again.numpy().tolist() == v.numpy().tolist() == [[1, 1]] * 4
    with pytest.raises(ValueError, match="exists with shape"):
        cluster.variable(name, shape=(4, 3))
    v.assign(np.arange(8).reshape(4, 2))
    assert np.asarray(v).tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert v.gather([3, 0]).tolist() == [[6, 7], [0, 1]]


def test_the_dtype_comes_from_the_initial_value(cluster):
    """As ``tf.Variable``: ``dtype`` when given, else the initial value's
    floating dtype, else float32 (Python numbers too)."""
    import torch

    name = f"d{next(_unique)}"
    wide = cluster.variable(f"{name}/f64", initial_value=np.array([1.5, 2.5]))
    assert wide.dtype == np.float64 and wide.numpy().dtype == np.float64
    assert wide.numpy().tolist() == [1.5, 2.5]
    tensor = cluster.variable(f"{name}/t", torch.ones(3, dtype=torch.float64))
    assert tensor.dtype == np.float64
    half = cluster.variable(f"{name}/f16", np.ones(2, np.float16))
    assert half.dtype == np.float16
    assert cluster.variable(f"{name}/list", [1.0, 2.0]).dtype == np.float32
    assert cluster.variable(f"{name}/ints", np.arange(3)).dtype == np.float32
    given = cluster.variable(f"{name}/given", np.ones(2), dtype="float32")
    assert given.dtype == np.float32
    with pytest.raises(ValueError, match="exists with"):
        cluster.variable(f"{name}/f64", initial_value=np.ones(2, F32))


@pytest.mark.slow
def test_a_large_initial_value_is_created_whole(cluster):
    """A 1,000,000 x 64 float32 table (256 MB, four times one gRPC message)."""
    value = np.random.default_rng(5).standard_normal((1_000_000, 64), F32)
    table = cluster.variable(f"big{next(_unique)}", initial_value=value)
    assert table.shape == value.shape and table.dtype == np.float32
    assert np.array_equal(table.numpy(), value)
    rows = np.array([0, 999_999, 123_456])
    assert np.array_equal(table.gather(rows), value[rows])


def test_gradients_from_anything_asarray_takes(cluster):
    opt, a, _ = fresh(cluster)

    class Tensor:  # what TF eager tensors and JAX arrays offer
        def __array__(self, dtype=None, copy=None):
            return np.ones(2, F32)

    class Slices:  # a tf.IndexedSlices look-alike
        values = np.ones((1,), F32)
        indices = np.array([1], np.int32)
        dense_shape = (2,)

    opt.apply_gradients([(Tensor(), a)])
    opt.apply_gradients([(Slices(), a)])
    assert int(opt.iterations) == 2


def test_minimize_needs_gradients(cluster):
    opt, a, _ = fresh(cluster)
    with pytest.raises(ValueError, match="`tape` is required"):
        opt.minimize(np.float32(1.0), [a])
    with pytest.raises(ValueError, match="no automatic differentiation"):
        opt.minimize(lambda: 1.0, [a])
    assert opt.minimize(lambda: (1.0, [np.ones(2, F32)]), [a]) == 1
    assert opt.get_gradients(lambda: (1.0, {a.name: np.ones(2, F32)}), [a])[
        0
    ].shape == (2,)


def test_minimize_with_torch_autograd(cluster):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    from adamax_ps.client.autodiff import torch_loss

    opt, a, _ = fresh(cluster, learning_rate=0.1)
    target = torch.tensor([3.0, -1.0])
    for _ in range(200):
        opt.minimize(torch_loss(lambda w: ((w - target) ** 2).sum(), [a]), [a])
    np.testing.assert_allclose(a.numpy(), [3.0, -1.0], atol=0.05)


def test_unknown_scheme_and_bad_addresses():
    with pytest.raises(ValueError, match="grpc://host:port"):
        connect("ps-0:50051")
    with pytest.raises(ValueError, match="at least one"):
        connect("")


def test_an_unreachable_server_is_a_transport_error_after_retries():
    from adamax_ps.client import RetryPolicy

    with pytest.raises(errors.TransportError, match="UNAVAILABLE"):
        connect(
            "grpc://127.0.0.1:1", retry=RetryPolicy(attempts=2, initial_backoff=0.01)
        )
