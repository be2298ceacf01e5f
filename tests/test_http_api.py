"""The REST API of a real server: inspection, values, limits, errors, metrics,
exactly-once HTTP pushes, the OpenAPI schema, and a schemathesis fuzz run."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers.servers import Server

from adamax_ps.client import Adamax, IndexedSlices, connect
from adamax_ps.proto import codec

F32 = np.float32
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    server = Server(
        [
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--shards",
            "2",
            "--checkpoint-dir",
            str(folder / "ckpt"),
            "--json-limit",
            "1000",
            "--max-request-bytes",
            str(2 << 20),
            "--history-interval",
            "0.05",
        ],
        folder / "server.log",
    ).start()
    with connect(server.grpc_address) as cluster:
        opt = Adamax(learning_rate=0.01, cluster=cluster)
        emb = cluster.variable("emb", shape=(300, 4), initializer="glorot_uniform")
        dense = cluster.variable("dense/kernel", shape=(4, 2), initializer="ones")
        rng = np.random.default_rng(0)
        for _ in range(5):
            rows = rng.integers(0, 300, 16)
            opt.apply_gradients(
                [
                    (IndexedSlices(rng.normal(size=(16, 4)).astype(F32), rows), emb),
                    (rng.normal(size=(4, 2)).astype(F32), dense),
                ]
            )
    yield server
    server.kill()


@pytest.fixture
def api(server):
    with httpx.Client(base_url=server.http_address + "/api/v1", timeout=30) as client:
        yield client


def npy(response: httpx.Response) -> np.ndarray:
    assert response.headers["content-type"] == codec.NPY
    return np.load(io.BytesIO(response.content), allow_pickle=False)


def test_server_description(api):
    info = api.get("/server").json()
    assert info["ready"] and info["shards"] == 2 and info["num_servers"] == 1
    assert info["state_bytes"] == sum(info["shard_state_bytes"]) > 0
    assert info["resident_bytes"] > info["state_bytes"]


def test_optimizers(api):
    (optimizer,) = api.get("/optimizers").json()
    assert optimizer["name"] == "Adamax" and optimizer["iterations"] == 5
    assert optimizer["pushes"] == 5 and optimizer["config"][
        "learning_rate"
    ] == pytest.approx(0.01)
    assert optimizer["weights"][0]["kind"] == "iterations"


def test_variables_with_placement_and_statistics(api):
    variables = {v["name"]: v for v in api.get("/variables").json()}
    emb = variables["emb"]
    assert emb["shape"] == [300, 4] and emb["dtype"] == "float32"
    assert emb["value_bytes"] == 300 * 4 * 4 and emb["bytes"] == 3 * emb["value_bytes"]
    assert sum(p["hi"] - p["lo"] for p in emb["placement"]) == 300
    w = npy(api.get("/variables/emb/value", params={"format": "npy"}))
    m = npy(
        api.get(
            "/variables/emb/value",
            params={"format": "npy", "optimizer": "Adamax", "slot": "m"},
        )
    )
    stats = emb["stats"]
    assert stats["w"]["l2_norm"] == pytest.approx(np.linalg.norm(w), rel=1e-6)
    assert stats["w"]["min"] == pytest.approx(w.min()) and stats["w"][
        "max"
    ] == pytest.approx(w.max())
    assert stats["Adamax/m"]["nonzero_rows"] == int(np.any(m != 0, axis=1).sum())
    one = api.get("/variables/dense/kernel").json()  # names may hold slashes
    assert one["shape"] == [4, 2]


def test_values_as_json_npy_and_rows(api):
    value = api.get("/variables/dense/kernel/value").json()
    assert value["shape"] == [4, 2] and np.asarray(value["values"]).shape == (4, 2)
    rows = api.get("/variables/emb/value", params={"rows": "7,3"}).json()
    full = npy(api.get("/variables/emb/value", params={"format": "npy"}))
    np.testing.assert_array_equal(np.asarray(rows["values"], F32), full[[7, 3]])
    too_big = api.get("/variables/emb/value")  # 1200 values over a limit of 1000
    assert too_big.status_code == 413 and "format=npy" in too_big.json()["message"]


def test_top_rows_by_update_and_by_m(api):
    w = {
        s: npy(
            api.get(
                "/variables/emb/value",
                params={"format": "npy", "optimizer": "Adamax", "slot": s},
            )
        )
        for s in ("m", "v")
    }
    for by, score in (
        ("update", np.linalg.norm(w["m"] / (w["v"] + 1e-7), axis=1)),
        ("m", np.linalg.norm(w["m"], axis=1)),
    ):
        top = api.get(
            "/variables/emb/top", params={"optimizer": "Adamax", "k": 5, "by": by}
        ).json()
        rows = [r["row"] for r in top["rows"]]
        assert rows == list(np.argsort(-score, kind="stable")[:5])
        assert top["rows"][0]["score"] == pytest.approx(score.max(), rel=1e-5)
        assert len(top["rows"][0]["values"]) == 4


def test_history_samples_while_read(api):
    deadline = time.monotonic() + 30
    samples = api.get("/history").json()["samples"]
    while len(samples) < 3 and time.monotonic() < deadline:
        samples = api.get("/history").json()["samples"]
    assert len(samples) >= 3
    last = samples[-1]
    assert last["optimizers"]["Adamax"]["iterations"] == 5
    assert set(last["variables"]["emb"]) >= {
        "w",
        "Adamax/m",
        "Adamax/v",
        "Adamax/update",
    }


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "error"),
    [
        ("GET", "/variables/nope", {}, 404, "VariableNotFoundError"),
        ("GET", "/optimizers/nope", {}, 404, "OptimizerNotFoundError"),
        (
            "GET",
            "/variables/emb/value",
            {"params": {"rows": "1,x"}},
            422,
            "InvalidRequest",
        ),
        (
            "GET",
            "/variables/emb/value",
            {"params": {"rows": "400"}},
            400,
            "InvalidArgumentError",
        ),
        (
            "GET",
            "/variables/emb/top",
            {"params": {"optimizer": "Adamax", "k": 0}},
            422,
            "InvalidRequest",
        ),
        (
            "POST",
            "/optimizers/Adamax/apply",
            {"content": b"\x05\x00\x00\x00{oops"},
            400,
            "InvalidArgumentError",
        ),
        (
            "POST",
            "/optimizers",
            {"json": {"config": {"momentum": 1}}},
            400,
            "InvalidArgumentError",
        ),
        (
            "POST",
            "/optimizers",
            {"json": {"config": {"learning_rate": 0.5}}},
            409,
            "OptimizerExistsError",
        ),
        (
            "POST",
            "/optimizers/Adamax/apply",
            {"content": b"x" * (3 << 20)},
            413,
            "RequestTooLarge",
        ),
        (
            "PUT",
            "/optimizers/Adamax/iterations",
            {"json": {"iterations": "5"}},
            422,
            "InvalidRequest",
        ),
    ],
)
def test_errors_are_json_with_the_right_status(
    api, method, path, kwargs, status, error
):
    before = api.get("/optimizers").json()[0]["iterations"]
    response = api.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error and response.json()["message"]
    assert api.get("/optimizers").json()[0]["iterations"] == before


def framed_push(sequence: int) -> bytes:
    g = np.ones((4, 2), F32)
    header = {
        "gradients": [{"variable": "dense/kernel", "values": codec.describe(g)}],
        "push_id": {"client": "http-test", "sequence": sequence},
    }
    return b"".join(codec.frame(header, [g]))


def test_http_pushes_apply_exactly_once(api):
    before = api.get("/optimizers/Adamax").json()["iterations"]
    first = api.post(
        "/optimizers/Adamax/apply",
        content=framed_push(1),
        headers={"content-type": codec.FRAMED},
    )
    again = api.post(
        "/optimizers/Adamax/apply",
        content=framed_push(1),
        headers={"content-type": codec.FRAMED},
    )
    assert first.status_code == 200 and again.json() == first.json()
    assert api.get("/optimizers/Adamax").json()["iterations"] == before + 1


def test_checkpoint_on_request(api):
    answer = api.post("/checkpoint").json()
    assert answer["sequence"] >= 1 and Path(answer["path"]).is_dir()
    assert (
        api.get("/server").json()["checkpoint"]["last_sequence"] == answer["sequence"]
    )


def test_metrics(server, api):
    api.post(
        "/optimizers/Adamax/apply",
        content=b"\x02\x00\x00\x00{}",
        headers={"content-type": codec.FRAMED},
    )  # refused: no gradients list
    text = httpx.get(server.http_address + "/metrics").text
    lines = {
        line.split(" ")[0]: line
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert float(lines['adamax_ps_pushes_total{optimizer="Adamax"}'].split()[-1]) >= 5
    assert 'adamax_ps_received_bytes_total{transport="grpc"}' in lines
    assert 'adamax_ps_apply_seconds_count{mode="async"}' in lines
    assert 'adamax_ps_state_bytes{shard="0"}' in lines
    assert 'adamax_ps_iterations{optimizer="Adamax"}' in lines
    assert "adamax_ps_checkpoint_seconds_count" in lines
    assert "adamax_ps_checkpoint_age_seconds" in lines


def test_openapi_documents_every_route(api, server):
    schema = httpx.get(server.http_address + "/openapi.json").json()
    paths = schema["paths"]
    assert "/api/v1/optimizers/{name}/apply" in paths
    for path, operations in paths.items():
        for method, operation in operations.items():
            documented = set(operation["responses"])
            assert {"200"} <= documented or {"204"} <= documented, (method, path)
            if path.startswith("/api/"):
                assert {"400", "404", "422"} <= documented, (method, path)


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_nor_state_change(tmp_path):
    """A bounded, seeded schemathesis run against a live, throwaway server."""
    fuzzed = Server(
        [
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--shards",
            "2",
            "--max-request-bytes",
            str(2 << 20),
        ],
        tmp_path / "fuzz.log",
    ).start()
    try:
        with connect(fuzzed.grpc_address) as cluster:
            opt = Adamax(cluster=cluster)
            w = cluster.variable("w", shape=(8, 2))
            opt.apply_gradients([(np.ones((8, 2), F32), w)])
        env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
            "PYTHONPATH": str(HOOKS.parent),
            "ADAMAX_PS_FUZZ_URL": fuzzed.http_address,
        }
        result = subprocess.run(
            [
                Path(sys.executable).parent / "schemathesis",
                "run",
                fuzzed.http_address + "/openapi.json",
                "--checks",
                "all",
                # Framed bodies are raw bytes the schema can only call "binary":
                # random bytes are rightly refused, not "valid data refused".
                "--exclude-checks",
                "positive_data_acceptance",
                "--max-examples",
                "5",
                "--seed",
                "1",
                "--workers",
                "1",
                "--request-timeout",
                "10",
                "--generation-database",
                "none",
                "--report",
                "junit",
                "--report-junit-path",
                str(tmp_path / "fuzz.xml"),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    finally:
        fuzzed.kill()
