"""The reduced-precision wire: a worker's gradients and gathered rows of
float32 variables travel as bfloat16 or float16, the servers keep float32;
whole variables (dense weights, checkpoints) stay exact."""

from __future__ import annotations

import re

import httpx
import ml_dtypes
import numpy as np
import pytest
from helpers.servers import start_cluster

from adamax_ps.client import Adamax, IndexedSlices, connect
from adamax_ps.client.transport import Read
from adamax_ps.proto import codec
from adamax_ps.server.ledger import PushId
from adamax_ps.server.service import Gradient, ParameterService, ServiceSettings

F32 = np.float32
REDUCED = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    (started,) = start_cluster(1, tmp_path_factory.mktemp("wire"), checkpoints=False)
    yield started
    started.kill()


def received(server) -> float:
    text = httpx.get(server.http_address + "/metrics").text
    found = re.search(r'adamax_ps_received_bytes_total\{transport="grpc"\} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def rounded(values: np.ndarray, wire: str) -> np.ndarray:
    return values.astype(REDUCED[wire]).astype(F32)


@pytest.mark.parametrize("wire", ["bfloat16", "float16"])
def test_rows_and_gradients_travel_reduced_and_apply_in_float32(server, wire):
    rng = np.random.default_rng(0)
    table = rng.normal(size=(64, 8)).astype(F32)
    dense = rng.normal(size=(8,)).astype(F32)
    rows = np.array([3, 9, 3, 40])
    grads = rng.normal(size=(4, 8)).astype(F32)
    dense_grad = rng.normal(size=(8,)).astype(F32)
    with connect(server.grpc_address, wire_dtype=wire) as cluster:
        emb = cluster.variable(f"wire_{wire}", initial_value=table)
        w = cluster.variable(f"wire_{wire}_w", initial_value=dense)
        np.testing.assert_array_equal(emb.gather(rows), rounded(table[rows], wire))
        before = received(server)
        optimizer = Adamax(learning_rate=0.01, name=f"wire_{wire}", cluster=cluster)
        _, (after_rows, after_dense) = optimizer.apply_and_read(
            [(IndexedSlices(grads, rows), emb), (dense_grad, w)],
            [Read(emb.name, rows), Read(w.name)],
        )
        sent = received(server) - before
        exact = emb.numpy()  # whole variables stay float32
        np.testing.assert_array_equal(after_rows, rounded(exact[rows], wire))
        np.testing.assert_array_equal(after_dense, w.numpy())
    # The servers applied the rounded gradient, in float32 (duplicate rows
    # summed by the client first, as Keras sums them).
    reference = ParameterService(ServiceSettings(shards=1))
    try:
        reference.create_optimizer({"learning_rate": 0.01, "name": "ref"})
        reference.create_variable("emb", initial_value=table)
        reference.create_variable("w", initial_value=dense)
        summed = np.stack([grads[0] + grads[2], grads[1], grads[3]])
        reference.apply(
            "ref",
            [
                Gradient.sparse("emb", np.array([3, 9, 40]), rounded(summed, wire)),
                Gradient.dense("w", rounded(dense_grad, wire)),
            ],
            PushId("ref", 0),
        )
        assert exact.tobytes() == reference.pull("emb").tobytes()
    finally:
        reference.close()
    # Half the gradient values' bytes of float32 (ids stay int64).
    assert sent == 3 * 8 * 2 + 3 * 8 + 8 * 2


def test_reduced_reads_of_other_dtypes_are_refused_before_the_push(server):
    with connect(server.grpc_address) as cluster:
        w = cluster.variable("wire_f64", initial_value=np.zeros(4))
        optimizer = Adamax(learning_rate=0.01, name="wire_f64", cluster=cluster)
        stub_read = Read("wire_f64", np.array([1]), "bfloat16")
        with pytest.raises(ValueError, match="wire dtype is float16 or bfloat16"):
            optimizer.apply_and_read([(np.ones(4), w)], [stub_read])
        assert optimizer.iterations.numpy() == 0
    with pytest.raises(ValueError, match="wire_dtype is float16 or bfloat16"):
        connect(server.grpc_address, wire_dtype="int8")
    assert codec.REDUCED["bfloat16"] == np.dtype(ml_dtypes.bfloat16)


def test_over_http_gradients_travel_reduced_and_reads_stay_float32(server):
    table = np.linspace(-1, 1, 40, dtype=F32).reshape(10, 4)
    with connect(server.http_address, wire_dtype="bfloat16") as cluster:
        emb = cluster.variable("wire_http", initial_value=table)
        np.testing.assert_array_equal(emb.gather([1, 2]), table[[1, 2]])
        Adamax(learning_rate=0.1, name="wire_http", cluster=cluster).apply_gradients(
            [(IndexedSlices(np.full((1, 4), 0.3, F32), [5]), emb)]
        )
        assert not np.array_equal(emb.numpy()[5], table[5])
