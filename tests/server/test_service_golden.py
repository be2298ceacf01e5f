"""Every TensorFlow reference run through ParameterService.apply, on one shard
and on three shards with variables split by rows: the same bits as the kernel
replay (and so as TensorFlow), the same iterations, weights order and config."""

from __future__ import annotations

import pytest
from helpers.golden import assert_matches, case_names, load_case

from adamax_ps.server.hyperparams import AdamaxConfig
from adamax_ps.server.optimizer_state import WeightRef
from adamax_ps.server.service import Gradient, ParameterService, ServiceSettings

LAYOUTS = {
    "one-shard": ServiceSettings(shards=1),
    "three-shards-split": ServiceSettings(shards=3, split_bytes=1),
}


def make_config(case) -> AdamaxConfig:
    if "lr" in case.kwargs:
        with pytest.warns(UserWarning):
            return AdamaxConfig.from_keras(**case.kwargs)
    return AdamaxConfig.from_keras(**case.kwargs)


def weight_order(case, refs: list[WeightRef]) -> list:
    names = {f"w{j}": j for j in range(len(case.shapes))}
    return [
        "iterations" if r.kind == "iterations" else [names[r.variable], r.name]
        for r in refs
    ]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", case_names())
def test_service_replays_tensorflow(name, layout):
    case = load_case(name)
    service = ParameterService(LAYOUTS[layout])
    try:
        config = make_config(case)
        service.create_optimizer(config)
        for j in range(len(case.shapes)):
            service.create_variable(f"w{j}", initial_value=case.init(j))
        for i, step in enumerate(case.steps()):
            gradients = [
                Gradient.dense(f"w{p.var}", p.grad)
                if p.kind == "dense"
                else Gradient.sparse(f"w{p.var}", p.indices, p.grad)
                for p in step
                if p.kind != "none"
            ]
            result = service.apply(config.name, gradients)
            assert (
                result.step == i and result.iterations == case.arrays["iterations"][i]
            )
            for j in range(len(case.shapes)):
                assert_matches(case, service.pull(f"w{j}"), j, "var", i)
                if case.has_slots(j, i):
                    for slot in ("m", "v"):
                        value = service.get_slot(config.name, f"w{j}", slot)
                        assert_matches(case, value, j, slot, i)
        refs = service.weight_refs(config.name)
        assert weight_order(case, refs) == case.entry["weights_order_final"]
        assert service.get_config(config.name) == case.entry["get_config"]
        assert len(service.get_weights(config.name)) == len(refs)
    finally:
        service.close()
