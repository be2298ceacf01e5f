"""Properties of the kernel layer: agreement with a plain numpy replay in the
same dtype (bit for bit), lazy sparse rows, duplicates, dtypes, NaN handling
and clipping, over generated shapes and values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from adamax_ps.server import adamax
from adamax_ps.server.hyperparams import AdamaxConfig

DTYPES = [np.float16, np.float32, np.float64]
settings.register_profile("default", max_examples=60, deadline=None)
settings.load_profile("default")


def scalars(dtype, iterations=0, **kwargs):
    return AdamaxConfig.from_keras(**kwargs).step_scalars(iterations, dtype)


def finite(dtype, shape, lo=-4.0, hi=4.0):
    return hnp.arrays(
        dtype, shape, elements=st.floats(lo, hi, width=np.dtype(dtype).itemsize * 8)
    )


def numpy_dense(w, m, v, g, s):
    """Keras 2 dense step written with plain numpy operations in one dtype."""
    with np.errstate(all="ignore"):
        return _numpy_dense(w, m, v, g, s)


def _numpy_dense(w, m, v, g, s):
    m = m + (g - m) * s.one_minus_beta_1
    v = np.where(s.beta_2 * v < np.abs(g), np.abs(g), s.beta_2 * v)
    w = w - s.lr_hat * (m / (v + s.epsilon))
    return w, m, v


def numpy_sparse(w, m, v, indices, values, s):
    """Keras 2 sparse step: unique (first appearance), segment sum, row update."""
    with np.errstate(all="ignore"):
        return _numpy_sparse(w, m, v, indices, values, s)


def _numpy_sparse(w, m, v, indices, values, s):
    w, m, v = w.copy(), m.copy(), v.copy()
    _, first = np.unique(indices, return_index=True)
    rows = indices[np.sort(first)]
    for r in rows:
        g = np.zeros(w.shape[1:], w.dtype)
        for k in np.flatnonzero(indices == r):
            g = g + values[k]
        m_r = m[r] * s.beta_1 + g * s.one_minus_beta_1
        v_r = np.maximum(v[r] * s.beta_2, np.abs(g))
        m[r], v[r] = m_r, v_r
        w[r] = w[r] + s.neg_lr_hat * (m_r / (v_r + s.epsilon))
    return w, m, v


@st.composite
def dense_problem(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=9))
    w = draw(finite(dtype, shape))
    m = draw(finite(dtype, shape, -1, 1))
    v = np.array(np.abs(draw(finite(dtype, shape, 0, 2))))
    g = draw(finite(dtype, shape))
    iterations = draw(st.integers(0, 3000))
    return w, m, v, g, iterations


@given(dense_problem())
def test_dense_equals_numpy_replay_bit_for_bit(problem):
    w, m, v, g, iterations = problem
    s = scalars(w.dtype, iterations, learning_rate=0.01)
    expected = numpy_dense(w, m, v, g, s)
    adamax.dense_update(w, m, v, g, s)
    for actual, want in zip((w, m, v), expected, strict=True):
        assert actual.dtype == want.dtype
        assert actual.tobytes() == want.tobytes()


@st.composite
def sparse_problem(draw):
    dtype = draw(st.sampled_from(DTYPES))
    rows = draw(st.integers(1, 30))
    row_shape = draw(hnp.array_shapes(min_dims=0, max_dims=2, max_side=5))
    shape = (rows, *row_shape)
    n = draw(st.integers(0, 40))
    index_dtype = draw(st.sampled_from([np.int32, np.int64]))
    indices = np.asarray(
        draw(st.lists(st.integers(0, rows - 1), min_size=n, max_size=n)),
        dtype=index_dtype,
    )
    values = draw(finite(dtype, (n, *row_shape)))
    w = draw(finite(dtype, shape))
    m = draw(finite(dtype, shape, -1, 1))
    v = np.array(np.abs(draw(finite(dtype, shape, 0, 2))))
    return w, m, v, indices, values, draw(st.integers(0, 100))


@given(sparse_problem())
def test_sparse_equals_numpy_replay_and_leaves_other_rows_alone(problem):
    w, m, v, indices, values, iterations = problem
    s = scalars(w.dtype, iterations, learning_rate=0.02)
    before = (w.copy(), m.copy(), v.copy())
    expected = numpy_sparse(w, m, v, indices, values, s)
    adamax.sparse_update(w, m, v, indices, values, s)
    untouched = np.setdiff1d(np.arange(w.shape[0]), indices)
    for actual, want, old in zip((w, m, v), expected, before, strict=True):
        assert actual.tobytes() == want.tobytes()
        assert actual[untouched].tobytes() == old[untouched].tobytes()


@given(sparse_problem(), st.integers(0, 30))
def test_row_blocks_updated_apart_equal_the_whole(problem, split):
    """A variable split by rows (as over shards) updates exactly like one block."""
    w, m, v, indices, values, iterations = problem
    split = min(split, w.shape[0])
    s = scalars(w.dtype, iterations)
    row_size = int(np.prod(w.shape[1:], dtype=np.int64))
    rows, summed = adamax.deduplicate(indices, values.reshape(len(indices), row_size))
    whole = [a.copy() for a in (w, m, v)]
    adamax.sparse_update(*whole, indices, values, s)
    parts = [adamax.rows_view(a) for a in (w, m, v)]
    for lo, hi in ((0, split), (split, w.shape[0])):
        block = [np.ascontiguousarray(p[lo:hi]) for p in parts]
        adamax.sparse_rows_update(*block, rows, summed, s, lo=lo)
        for p, b in zip(parts, block, strict=True):
            p[lo:hi] = b
    for a, b in zip((w, m, v), whole, strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_first_step_moves_each_weight_by_about_lr_against_the_gradient(dtype):
    rng = np.random.default_rng(7)
    g = (rng.uniform(0.5, 2, 64) * rng.choice([-1, 1], 64)).astype(dtype)
    w, m, v = np.zeros(64, dtype), np.zeros(64, dtype), np.zeros(64, dtype)
    adamax.dense_update(w, m, v, g, scalars(dtype, learning_rate=0.01))
    assert w.dtype == dtype and m.dtype == dtype and v.dtype == dtype
    np.testing.assert_allclose(w, -0.01 * np.sign(g.astype(np.float64)), rtol=2e-3)


def test_duplicates_are_summed_before_one_update():
    w, m, v = (np.zeros((3, 2), np.float32) for _ in range(3))
    indices = np.array([1, 1, 1])
    values = np.ones((3, 2), np.float32)
    adamax.sparse_update(w, m, v, indices, values, scalars(np.float32))
    np.testing.assert_array_equal(v[1], [3, 3])  # one update with g = 3, not three
    np.testing.assert_allclose(m[1], [0.3, 0.3], rtol=1e-6)
    assert not w[[0, 2]].any() and not m[[0, 2]].any() and not v[[0, 2]].any()


def test_rows_whose_duplicates_cancel_are_still_touched():
    """docs/keras-semantics.md 3.4: g and -g at one row decay its m and v."""
    w = np.zeros((2, 2), np.float32)
    m, v = np.zeros_like(w), np.zeros_like(w)
    ones = np.ones_like(w)
    s0 = scalars(np.float32)
    adamax.dense_update(w, m, v, ones, s0)
    adamax.sparse_update(
        w,
        m,
        v,
        np.array([1, 1]),
        np.array([[0.5, 0.5], [-0.5, -0.5]], np.float32),
        scalars(np.float32, iterations=1),
    )
    np.testing.assert_allclose(m[1], [0.09, 0.09], rtol=1e-6)
    np.testing.assert_allclose(v[1], [0.999, 0.999], rtol=1e-6)
    np.testing.assert_allclose(w[1], [-0.0014742, -0.0014742], rtol=1e-4)
    np.testing.assert_allclose(
        m[0], [0.1, 0.1], rtol=1e-6
    )  # row 0: only the dense step


def test_empty_index_list_changes_nothing():
    w = np.arange(6, dtype=np.float32).reshape(3, 2)
    m, v = w.copy(), w.copy()
    adamax.sparse_update(
        w,
        m,
        v,
        np.zeros(0, np.int64),
        np.zeros((0, 2), np.float32),
        scalars(np.float32),
    )
    assert w.tobytes() == m.tobytes() == v.tobytes()


def test_nan_and_inf_follow_tensorflow():
    """Dense: NaN never enters v (Eigen max); sparse: tf.maximum propagates it."""
    s = scalars(np.float32, learning_rate=0.01)
    g = np.array([np.nan, -np.inf], np.float32)
    w, m, v = np.ones(2, np.float32), np.zeros(2, np.float32), np.zeros(2, np.float32)
    with np.errstate(invalid="ignore"):
        adamax.dense_update(w, m, v, g, s)
    assert np.isnan(m[0]) and m[1] == -np.inf
    assert v.tolist() == [0.0, np.inf]
    assert np.isnan(w).all()
    w, m, v = (np.zeros((2, 1), np.float32) for _ in range(3))
    with np.errstate(invalid="ignore"):
        adamax.sparse_update(w, m, v, np.array([0, 1]), g.reshape(2, 1), s)
    assert np.isnan(v[0, 0]) and v[1, 0] == np.inf


def test_non_contiguous_state_is_refused_rather_than_copied():
    w = np.zeros((4, 4), np.float32)[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        adamax.dense_update(w, w, w, w, scalars(np.float32))


def test_powf_is_the_c_library_pow():
    """numpy's float32 power differs from glibc powf at t = 4
    (docs/keras-semantics.md section 2)."""
    b1 = np.float32(0.9)
    assert adamax.powf(b1, np.float32(4)) == np.float32(0.6560999)
    assert adamax.c_pow(np.float64(0.9), np.float64(3)) == 0.9**3


def test_integer_dtypes_are_refused():
    with pytest.raises(ValueError, match="float16/32/64"):
        AdamaxConfig.from_keras().step_scalars(0, np.int32)


class TestClipping:
    def test_clipvalue_clips_raw_sparse_values_before_the_sum(self):
        values = np.array([[3, 0], [4, 0]], np.float32)
        (clipped,) = adamax.clip_gradients([values], clipvalue=2.0)
        _, summed = adamax.deduplicate(np.array([0, 0]), clipped)
        assert summed.tolist() == [[4.0, 0.0]]  # more than clipvalue, as in Keras

    def test_clipnorm_uses_raw_values(self):
        values = np.array([[3, 0], [4, 0]], np.float32)
        (clipped,) = adamax.clip_gradients([values], clipnorm=1.0)
        np.testing.assert_allclose(clipped, [[0.6, 0], [0.8, 0]], rtol=1e-6)

    def test_clipnorm_formula_applies_even_below_the_threshold(self):
        rng = np.random.default_rng(3)
        g = rng.normal(size=1000).astype(np.float32) * np.float32(1e-4)
        c = np.float32(0.37)
        (clipped,) = adamax.clip_gradients([g], clipnorm=0.37)
        assert clipped.tobytes() == ((g * c) / c).tobytes()
        assert clipped.tobytes() != g.tobytes()  # (g*c)/c is not the identity

    def test_global_clipnorm_over_sparse_and_dense(self):
        sparse = np.array([[3, 0], [4, 0]], np.float32)
        dense = np.array([12], np.float32)
        a, b = adamax.clip_gradients([sparse, dense], global_clipnorm=1.0)
        np.testing.assert_allclose(a, [[3 / 13, 0], [4 / 13, 0]], rtol=1e-6)
        np.testing.assert_allclose(b, [12 / 13], rtol=1e-6)

    def test_global_clipnorm_of_non_finite_gradients_is_nan(self):
        (clipped,) = adamax.clip_gradients(
            [np.array([np.inf, 1], np.float32)], global_clipnorm=1.0
        )
        assert np.isnan(clipped).all()

    def test_global_clipnorm_needs_one_dtype(self):
        with pytest.raises(ValueError, match="one dtype"):
            adamax.clip_gradients(
                [np.ones(2, np.float32), np.ones(2, np.float64)], global_clipnorm=1.0
            )

    def test_no_clipping_returns_the_same_arrays(self):
        g = np.ones(3, np.float32)
        assert adamax.clip_gradients([g])[0] is g
