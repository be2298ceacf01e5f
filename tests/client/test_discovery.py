"""connect() with no addresses: ADAMAX_PS_ADDRESS, else TF_CONFIG's ps tasks;
the worker's rank from torchrun's variables, else TF_CONFIG's worker task."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adamax_ps.client import ClusterViewError, connect
from adamax_ps.client.discovery import (
    WorkerRank,
    addresses_from_environment,
    replica_from_environment,
    worker_rank,
)


def tf_config(ps, task=None, workers=("w0:1", "w1:1")):
    config = {"cluster": {"ps": ps, "worker": list(workers), "chief": ["c:1"]}}
    if task is not None:
        config["task"] = task
    return json.dumps(config)


def test_adamax_ps_address_wins_over_tf_config():
    env = {
        "ADAMAX_PS_ADDRESS": "http://a:1,http://b:2",
        "TF_CONFIG": tf_config(["c:3"]),
    }
    assert addresses_from_environment(env) == "http://a:1,http://b:2"


def test_tf_config_ps_tasks_are_grpc_servers_in_order():
    env = {"TF_CONFIG": tf_config(["ps-0.ps:50051", "http://ps-1.ps:8080"])}
    assert addresses_from_environment(env) == "grpc://ps-0.ps:50051,http://ps-1.ps:8080"
    sparse = {"TF_CONFIG": json.dumps({"cluster": {"ps": {"1": "b:2", "0": "a:1"}}})}
    assert addresses_from_environment(sparse) == "grpc://a:1,grpc://b:2"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "set ADAMAX_PS_ADDRESS .* or TF_CONFIG"),
        ({"ADAMAX_PS_ADDRESS": "  "}, "set ADAMAX_PS_ADDRESS"),
        ({"TF_CONFIG": "{ps"}, "TF_CONFIG is not JSON"),
        ({"TF_CONFIG": "[1]"}, "not a JSON object"),
        ({"TF_CONFIG": tf_config([])}, "names no 'ps' tasks"),
        ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["w:1"]}})}, "no 'ps'"),
    ],
)
def test_nothing_usable_is_a_clear_error(env, message):
    with pytest.raises(ValueError, match=message):
        addresses_from_environment(env)


def test_rank_from_torchrun_then_tf_config():
    assert worker_rank({"RANK": "3", "WORLD_SIZE": "4"}) == WorkerRank(3, 4)
    task = {"type": "worker", "index": 1}
    assert worker_rank({"TF_CONFIG": tf_config(["p:1"], task)}) == WorkerRank(1, 2)
    chief = {"type": "chief", "index": 0}
    assert worker_rank({"TF_CONFIG": tf_config(["p:1"], chief)}) == WorkerRank(0, 1)
    assert worker_rank({}) == WorkerRank(0, 1)
    with pytest.raises(ValueError, match="RANK=4 is not below WORLD_SIZE=4"):
        worker_rank({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="RANK='x' is not an integer"):
        worker_rank({"RANK": "x", "WORLD_SIZE": "4"})


def test_the_replica_id_is_the_workers_rank_when_one_is_given():
    assert replica_from_environment({"RANK": "3", "WORLD_SIZE": "4"}) == 3
    task = {"type": "worker", "index": 1}
    assert replica_from_environment({"TF_CONFIG": tf_config(["p:1"], task)}) == 1
    chief = {"type": "chief", "index": 0}
    assert replica_from_environment({"TF_CONFIG": tf_config(["p:1"], chief)}) is None
    assert replica_from_environment({}) is None


def test_connect_with_no_arguments_reaches_the_tf_config_servers(
    three_servers, monkeypatch
):
    """A TFJob-style TF_CONFIG (ps tasks as host:port) reaches real servers,
    in their order: connect() checks that server i is server i of 3."""
    ps = [s.grpc_address.removeprefix("grpc://") for s in three_servers]
    monkeypatch.delenv("ADAMAX_PS_ADDRESS", raising=False)
    monkeypatch.setenv("TF_CONFIG", tf_config(ps, {"type": "worker", "index": 0}))
    with connect() as cluster:
        assert cluster.size == 3
        var = cluster.variable("discovered", initial_value=np.arange(4.0))
        np.testing.assert_array_equal(var.numpy(), np.arange(4.0))
    monkeypatch.setenv("TF_CONFIG", tf_config(ps[::-1]))
    with pytest.raises(ClusterViewError, match="says it is server 2 of 3"):
        connect()
