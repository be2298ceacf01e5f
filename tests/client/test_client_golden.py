"""Every TensorFlow reference run through the client's Adamax.apply_gradients
against real servers: one server, and three servers with every variable split
by rows (so each call spans servers, clipping happens in the client, and the
coordinator hands out the steps). Bit-exact as in the kernel tests."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from helpers.golden import assert_matches, case_names, load_case

from adamax_ps.client import Adamax, IndexedSlices

_unique = itertools.count()


def test_every_golden_case(cluster):
    for name in case_names():
        replay(cluster, load_case(name))


def replay(cluster, case):
    prefix = f"{case.name}-{next(_unique)}"
    kwargs = dict(case.kwargs)
    if "lr" in kwargs:
        with pytest.warns(UserWarning, match="`lr` argument is deprecated"):
            opt = Adamax(name=prefix, cluster=cluster, **kwargs)
    else:
        opt = Adamax(name=prefix, cluster=cluster, **kwargs)
    variables = [
        cluster.variable(f"{prefix}/w{j}", case.init(j), dtype=case.dtype)
        for j in range(len(case.shapes))
    ]
    for i, step in enumerate(case.steps()):
        pairs = []
        for p in step:
            if p.kind == "dense":
                pairs.append((p.grad, variables[p.var]))
            elif p.kind == "sparse":
                shape = case.shapes[p.var]
                pairs.append(
                    (IndexedSlices(p.grad, p.indices, shape), variables[p.var])
                )
            else:
                pairs.append((None, variables[p.var]))
        assert opt.apply_gradients(pairs) == case.arrays["iterations"][i]
        for j, var in enumerate(variables):
            assert_matches(case, var.numpy(), j, "var", i)
        for j, var in enumerate(variables):
            if case.has_slots(j, i):
                assert_matches(case, opt.get_slot(var, "m").numpy(), j, "m", i)
                assert_matches(case, opt.get_slot(var, "v").numpy(), j, "v", i)
            else:
                with pytest.raises(KeyError):
                    opt.get_slot(var, "m")
    expected = dict(case.entry["get_config"], name=prefix)
    assert opt.get_config() == expected
    order = []
    names = {v.name: j for j, v in enumerate(variables)}
    for w in opt.weights:
        order.append(
            "iterations" if w.name == "iter:0" else [names[w.variable.name], w.slot]
        )
    assert order == case.entry["weights_order_final"]
    assert int(opt.iterations) == case.n_steps
    np.testing.assert_equal(opt.get_weights()[0], case.n_steps)
