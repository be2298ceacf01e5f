"""The numba kernels are compiled before any request and never compile later."""

from __future__ import annotations

import numpy as np
import pytest

from adamax_ps.common import dedup_kernels
from adamax_ps.server import kernels

KERNELS = [
    kernels.dense_adamax,
    dedup_kernels.first_appearance,
    dedup_kernels.segment_sum,
    kernels.sparse_adamax,
]


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.__name__)
def test_compiled_at_import_for_every_supported_type(kernel):
    assert kernel.signatures, "explicit signatures compile (or load) at import"
    assert not kernel._can_compile, "a request can never trigger a JIT compile"


def test_an_unsupported_type_is_refused_not_compiled():
    a = np.zeros(4, np.int32)
    with pytest.raises(TypeError, match="No matching definition"):
        kernels.dense_adamax(a, a, a, a, 1, 1, 1, 1)


def test_first_appearance_keeps_order_and_positions():
    indices = np.array([7, 3, 7, 7, 0, 3, 9], np.int64)
    unique, position = dedup_kernels.first_appearance(indices)
    assert unique.tolist() == [7, 3, 0, 9]
    assert (unique[position] == indices).all()
    big = np.random.default_rng(0).integers(-(2**62), 2**62, 5000)
    unique, position = dedup_kernels.first_appearance(np.concatenate([big, big[::-1]]))
    assert unique.tolist() == list(dict.fromkeys(big.tolist()))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, -np.nan, np.inf, -np.inf])
def test_first_nonfinite_finds_the_first_nan_or_inf(dtype, bad):
    values = np.random.default_rng(1).normal(size=10_000).astype(dtype)
    values[[17, 9000]] = np.finfo(dtype).max  # large but finite
    values[[18, 9001]] = -np.finfo(dtype).max  # the sign bit is not magnitude
    values[19] = -0.0
    assert kernels.first_nonfinite(values) == -1
    values[[8191, 9999]] = bad
    assert kernels.first_nonfinite(values) == 8191
    assert kernels.first_nonfinite(values[:1]) == -1
    assert kernels.first_nonfinite(values[:0]) == -1
