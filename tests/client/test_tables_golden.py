"""The TensorFlow reference runs of sparse Adamax, through hash-keyed tables on
real servers: each row of a golden variable becomes a key (far apart,
negative ones too), the golden initial rows are assigned, and every step is
pushed as IndexedSlices of keys. Rows, m and v match TensorFlow bit for bit
(clipnorm within its stated tolerance), untouched rows included."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from helpers.golden import assert_matches, case_names, load_case

from adamax_ps.client import Adamax, IndexedSlices

_unique = itertools.count()
SPARSE_CASES = [
    name
    for name in case_names()
    if {p.kind for step in load_case(name).steps() for p in step} == {"sparse"}
]


def keys_of(rows: np.ndarray) -> np.ndarray:
    """Row ``r`` of a golden variable is key ``r * 7_919_000_003 - 2**62``."""
    return np.asarray(rows, np.int64) * 7_919_000_003 - 2**62


def test_the_sparse_cases_are_there():
    assert len(SPARSE_CASES) >= 6


@pytest.mark.parametrize("name", SPARSE_CASES)
def test_sparse_golden_cases_through_a_table(cluster, name):
    case = load_case(name)
    (shape,) = case.shapes
    prefix = f"{name}-{next(_unique)}"
    opt = Adamax(name=prefix, cluster=cluster, **case.kwargs)
    table = cluster.embedding_table(f"{prefix}/t", shape[1], dtype=case.dtype)
    every = keys_of(np.arange(shape[0]))
    table.assign(every, case.init(0))
    for i, step in enumerate(case.steps()):
        (p,) = step
        grad = IndexedSlices(p.grad, keys_of(p.indices))
        assert opt.apply_gradients([(grad, table)]) == case.arrays["iterations"][i]
        assert_matches(case, table.gather(every), 0, "var", i)
        assert_matches(case, table.gather_slot(every, prefix, "m"), 0, "m", i)
        assert_matches(case, table.gather_slot(every, prefix, "v"), 0, "v", i)
    assert table.size() == shape[0]
