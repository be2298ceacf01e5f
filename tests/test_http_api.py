"""The REST API of a real server: inspection, values, limits, errors, metrics,
exactly-once HTTP pushes, the OpenAPI schema (it states what the server
enforces), and a schemathesis run of every check."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema_rs
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
    # Later tests make more optimizers; the one of the fixture comes first.
    optimizer = api.get("/optimizers").json()[0]
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
            422,
            "InvalidRequest",
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


@pytest.fixture(scope="module")
def openapi(server) -> dict:
    return httpx.get(server.http_address + "/openapi.json").json()


def operations(openapi: dict) -> Iterator[tuple[str, str, dict]]:
    for path, methods in openapi["paths"].items():
        for method, operation in methods.items():
            yield method.upper(), path, operation


def test_openapi_documents_every_answer(openapi):
    """Every route names its operation, documents each error it can give with
    the error model, and raw bodies say their media type."""
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    for method, path, operation in operations(openapi):
        where = (method, path)
        answers = operation["responses"]
        assert {"200", "204"} & set(answers), where
        assert operation["operationId"].isidentifier(), where
        if not path.startswith("/api/"):
            continue
        assert "401" in answers, where
        if operation.get("parameters") or "requestBody" in operation:
            assert "422" in answers, where
        if operation["tags"] == ["writes"] and path != "/api/v1/checkpoint":
            assert {"400", "401", "409", "503"} <= set(answers), where
        for code, answer in answers.items():
            if code[0] in "45":
                assert answer["content"]["application/json"]["schema"] == error
        body = operation.get("requestBody", {}).get("content", {})
        if codec.FRAMED in body:
            assert body[codec.FRAMED]["schema"] == {
                "type": "string",
                "format": "binary",
            }
            assert {"400", "413"} <= set(answers), where


def test_openapi_links_new_things_to_their_reads(openapi):
    links = openapi["paths"]["/api/v1/optimizers"]["post"]["responses"]["200"]["links"]
    assert links["optimizer"] == {
        "operationId": "optimizer",
        "parameters": {"name": "$response.body#/name"},
    }
    weights = openapi["paths"]["/api/v1/optimizers/{name}/weights"]["post"]
    assert weights["responses"]["200"]["links"]["read_weight"]["parameters"] == {
        "name": "$response.body#/name",
        "weight": "$request.body#/name",
    }
    created = openapi["paths"]["/api/v1/variables"]["post"]["responses"]["200"]
    assert {"variable", "value", "rows", "top", "assign"} <= set(created["links"])


def allows(openapi: dict, schema: dict, instance: object) -> bool:
    """Whether ``instance`` is valid under ``schema`` (refs into the document)."""
    root = {"components": openapi["components"], **schema}
    return jsonschema_rs.Draft202012Validator(root).is_valid(instance)


def body_schema(openapi: dict, method: str, path: str) -> dict:
    operation = openapi["paths"][path][method.lower()]
    return operation["requestBody"]["content"]["application/json"]["schema"]


def slot_of_schema(openapi: dict) -> dict:
    (parameter,) = [
        p
        for p in openapi["paths"]["/api/v1/variables/{name}/value"]["get"]["parameters"]
        if p["name"] == "slot_of"
    ]
    assert parameter["style"] == "form" and parameter["explode"]
    return parameter["schema"]


def optimizers_state(api: httpx.Client) -> list[dict]:
    optimizers = api.get("/optimizers").json()
    for optimizer in optimizers:
        optimizer.pop("push_rate")  # derived from wall-clock samples
    return optimizers


LONG = "x" * 257  # names are 1 to 256 characters (validation.MAX_NAME)
PIECEWISE = {"class_name": "PiecewiseConstantDecay", "config": {"boundaries": [10]}}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/optimizers/{name}/slots", {"variable": "emb", "slot": ""}),
        ("POST", "/api/v1/optimizers/{name}/slots", {"variable": "", "slot": "s"}),
        ("POST", "/api/v1/optimizers/{name}/slots", {"variable": "emb", "slot": LONG}),
        (
            "POST",
            "/api/v1/optimizers/{name}/slots",
            {"variable": "emb", "slot": "s", "initializer": "nope"},
        ),
        ("POST", "/api/v1/optimizers/{name}/weights", {"name": ""}),
        ("POST", "/api/v1/optimizers/{name}/weights", {"name": "w", "shape": [-1]}),
        (
            "POST",
            "/api/v1/optimizers/{name}/reserve-step",
            {"variables": [], "push_id": {"client": "", "sequence": 0}},
        ),
        (
            "POST",
            "/api/v1/optimizers/{name}/reserve-step",
            {"variables": [], "push_id": {"client": "c", "sequence": 1 << 64}},
        ),
        ("POST", "/api/v1/optimizers/{name}/reserve-step", {"variables": [""]}),
        ("PUT", "/api/v1/optimizers/{name}/iterations", {"iterations": 1 << 63}),
        ("PUT", "/api/v1/optimizers/{name}/iterations", {"iterations": -1}),
        ("POST", "/api/v1/optimizers", {"config": {"name": ""}}),
        ("POST", "/api/v1/optimizers", {"config": {"decay": -1}}),
        (
            "POST",
            "/api/v1/optimizers",
            {"config": {"clipnorm": 1.0, "global_clipnorm": 1.0}},
        ),
    ],
    ids=[
        "empty slot",
        "empty variable",
        "long slot",
        "unknown initializer",
        "empty weight",
        "negative dimension",
        "empty client id",
        "sequence past uint64",
        "empty call variable",
        "iterations 2**63",
        "negative iterations",
        "empty optimizer name",
        "negative decay",
        "clipnorm with global_clipnorm",
    ],
)
def test_what_the_server_refuses_the_schema_refuses(api, openapi, method, path, body):
    """Requests the server used to refuse although the schema allowed them:
    the schema refuses them now, and so does the server (422, nothing done)."""
    assert not allows(openapi, body_schema(openapi, method, path), body)
    before = optimizers_state(api)
    response = api.request(
        method, path.replace("/api/v1", "").format(name="Adamax"), json=body
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "InvalidRequest"
    assert optimizers_state(api) == before


@pytest.mark.parametrize(
    "params",
    [{"optimizer": "Adamax"}, {"slot": "m"}, {"optimizer": "", "slot": "m"}],
    ids=["optimizer alone", "slot alone", "empty optimizer"],
)
def test_a_slot_is_named_by_optimizer_and_slot_together(api, openapi, params):
    assert not allows(openapi, slot_of_schema(openapi), params)
    response = api.get("/variables/emb/value", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "InvalidRequest"


def test_what_the_schema_allows_the_server_accepts(api, openapi):
    """Edges of the schema the server used to refuse, or takes as JSON Schema
    reads them: the largest iterations, a whole float as an integer, a long
    client id, both names of a slot."""
    config = {"name": "Edges", "clipnorm": 1.0, "lr": None, "epsilon": None}
    assert allows(
        openapi, body_schema(openapi, "POST", "/api/v1/optimizers"), {"config": config}
    )
    assert api.post("/optimizers", json={"config": config}).status_code == 200
    largest = {"iterations": (1 << 63) - 1}
    assert allows(
        openapi,
        body_schema(openapi, "PUT", "/api/v1/optimizers/{name}/iterations"),
        largest,
    )
    answer = api.put("/optimizers/Edges/iterations", json=largest)
    assert answer.status_code == 200 and answer.json()["iterations"] == (1 << 63) - 1
    step = {"variables": ["emb"], "push_id": {"client": "c" * 256, "sequence": 3.0}}
    assert allows(
        openapi,
        body_schema(openapi, "POST", "/api/v1/optimizers/{name}/reserve-step"),
        step,
    )
    assert api.post("/optimizers/Edges/reserve-step", json=step).status_code == 200
    slot = {"optimizer": "Adamax", "slot": "m"}
    assert allows(openapi, slot_of_schema(openapi), slot)
    assert (
        api.get("/variables/emb/value", params={**slot, "rows": "0"}).status_code == 200
    )


def test_a_rule_no_schema_states_is_refused_by_name(api, openapi):
    """A PiecewiseConstantDecay's values are one more than its boundaries: JSON
    Schema cannot relate two lengths, so the schema allows what the answer
    refuses, naming the rule."""
    config = {"name": "Piecewise", "learning_rate": {**PIECEWISE}}
    config["learning_rate"]["config"] = {"boundaries": [10], "values": [0.1]}
    assert allows(
        openapi, body_schema(openapi, "POST", "/api/v1/optimizers"), {"config": config}
    )
    response = api.post("/optimizers", json={"config": config})
    assert response.status_code == 422
    assert "1 less than the length of values" in response.json()["message"]
    config["learning_rate"]["config"]["values"] = [0.1, 0.01]
    answer = api.post("/optimizers", json={"config": config})
    assert answer.status_code == 200, answer.text
    assert (
        answer.json()["config"]["learning_rate"]["class_name"]
        == "PiecewiseConstantDecay"
    )


def test_openapi_integer_bounds_are_exact(openapi):
    """FastAPI keeps bounds as floats; the schema prints them as integers."""
    schemas = openapi["components"]["schemas"]
    assert (
        schemas["IterationsRequest"]["properties"]["iterations"]["exclusiveMaximum"]
        == 1 << 63
    )
    sequence = schemas["PushIdModel"]["properties"]["sequence"]
    assert sequence["exclusiveMaximum"] == 1 << 64 and sequence["minimum"] == 0
    assert '"gt"' not in json.dumps(openapi)  # pydantic's name for a union's bound


def test_a_push_after_add_slot_m_keeps_that_slot_and_makes_v(api):
    """add_slot(var, "m") before the first push: the push makes only v and
    keeps m as it was made (as Keras's add_slot returns an existing slot),
    lists m once in weights, and the sampler draws the update norm."""
    g = np.full((3, 2), 0.5, F32)
    spec = {"name": "slotted", "global_shape": [3, 2], "rows": 3, "dtype": "float32"}
    framed = {"headers": {"content-type": codec.FRAMED}}
    created = api.post(
        "/variables", content=b"".join(codec.frame({"variables": [spec]}, [])), **framed
    )
    assert created.status_code == 200, created.text
    assert (
        api.post("/optimizers", json={"config": {"name": "Slotted"}}).status_code == 200
    )
    added = api.post(
        "/optimizers/Slotted/slots",
        json={"variable": "slotted", "slot": "m", "initializer": "ones"},
    )
    assert added.status_code == 200, added.text
    header = {"gradients": [{"variable": "slotted", "values": codec.describe(g)}]}
    pushed = api.post(
        "/optimizers/Slotted/apply",
        content=b"".join(codec.frame(header, [g])),
        **framed,
    )
    assert pushed.status_code == 200, pushed.text
    read = {"format": "npy", "optimizer": "Slotted"}
    m = npy(api.get("/variables/slotted/value", params={**read, "slot": "m"}))
    v = npy(api.get("/variables/slotted/value", params={**read, "slot": "v"}))
    np.testing.assert_allclose(m, 0.9 + 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(v, 0.5)
    weights = api.get("/optimizers/Slotted").json()["weights"]
    assert [(w["variable"], w["name"]) for w in weights if w["kind"] == "slot"] == [
        ("slotted", "m"),
        ("slotted", "v"),
    ]
    assert api.get("/history").status_code == 200


def stateful_transitions(ndjson: Path) -> Counter:
    """(operation, status) of every case the stateful phase reached by a link."""
    reached: Counter = Counter()
    for line in ndjson.read_text().splitlines():
        finished = json.loads(line).get("ScenarioFinished")
        if not finished or finished["phase"] != "stateful":
            continue
        recorder = finished["recorder"]  # a skipped scenario records no case
        for case_id, case in recorder.get("cases", {}).items():
            interaction = recorder.get("interactions", {}).get(case_id)
            if case.get("is_transition_applied") and interaction:
                operation = f"{case['value']['method']} {case['value']['path']}"
                reached[operation, interaction["response"]["status_code"]] += 1
    return reached


@pytest.mark.slow
def test_schemathesis_finds_nothing(tmp_path):
    """A seeded schemathesis run of every check (tests/schemathesis.toml says
    where one cannot apply, and why), 100 examples per operation, and the
    stateful phase over the schema's links, against a live throwaway server;
    a refused request must change nothing (schemathesis_hooks.py), and the
    server logs no traceback."""
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
            # Generated shapes reach gigabytes: a small state budget refuses
            # them at once (507) rather than fill them for seconds.
            "--memory-limit",
            "256M",
        ],
        tmp_path / "fuzz.log",
    ).start()
    try:
        with connect(fuzzed.grpc_address) as cluster:
            opt = Adamax(cluster=cluster)
            w = cluster.variable("w", shape=(4, 2))  # the frames' shape (hooks)
            opt.apply_gradients([(np.ones((4, 2), F32), w)])
        env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
            "PYTHONPATH": str(HOOKS.parent),
            "ADAMAX_PS_FUZZ_URL": fuzzed.http_address,
        }
        result = subprocess.run(
            [
                Path(sys.executable).parent / "schemathesis",
                "--config-file",
                str(HOOKS.with_name("schemathesis.toml")),
                "run",
                fuzzed.http_address + "/openapi.json",
                "--max-examples",
                "100",
                "--seed",
                "1",
                "--workers",
                "1",  # the state-change check compares before and after
                "--request-timeout",
                "10",
                "--generation-database",
                "none",
                "--report",
                "junit,ndjson",
                "--report-junit-path",
                str(tmp_path / "fuzz.xml"),
                "--report-ndjson-path",
                str(tmp_path / "fuzz.ndjson"),
            ],
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        assert "Stateful" in result.stdout and "Scenarios" in result.stdout
        reached = stateful_transitions(tmp_path / "fuzz.ndjson")
        succeeded = {
            operation for (operation, status), _ in reached.items() if status < 300
        }
        assert {
            "GET /api/v1/optimizers/{name}",  # read what was made or pushed
            "POST /api/v1/optimizers/{name}/weights",  # extend what was made
        } <= succeeded, reached
        # A push to a listed optimizer is reached by its link; its framed body
        # is bytes the schema can only call binary, so whether a random one
        # is a valid push is the seed's luck, not the link's.
        assert any(op == "POST /api/v1/optimizers/{name}/apply" for op, _ in reached)
    finally:
        fuzzed.kill()
    assert "Traceback" not in (tmp_path / "fuzz.log").read_text()


def test_a_read_never_creates_iterations_a_post_does(api):
    """Keras's read of ``iterations`` creates it; over HTTP that is a POST,
    and no GET changes anything (the old ``create_iterations`` query is gone)."""
    config = {"name": "lazy", "learning_rate": 0.01}
    assert api.post("/optimizers", json={"config": config}).status_code == 200
    for _ in range(2):
        read = api.get("/optimizers/lazy", params={"create_iterations": "true"})
        assert read.status_code == 200
        assert read.json()["weights"] == []
    created = api.post("/optimizers/lazy/iterations")
    assert created.status_code == 200
    assert created.json()["weights"][0]["kind"] == "iterations"
    again = api.post("/optimizers/lazy/iterations")  # idempotent
    assert again.json()["weights"] == created.json()["weights"]
    assert api.post("/optimizers/nothing/iterations").status_code == 404
