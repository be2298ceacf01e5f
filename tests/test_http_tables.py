"""Hash-keyed tables over HTTP, on a real two-server cluster: every
``/api/v1/tables`` route, rows by key through the table and the variable
routes, keyed pushes through the HTTP push route, refusals (status, JSON
error, nothing changed), and the ``http://`` client giving the rows, slots,
counts and exports the ``grpc://`` client gives, bit for bit."""

from __future__ import annotations

import io

import httpx
import jsonschema_rs
import numpy as np
import pytest
from helpers.servers import start_cluster

from adamax_ps.client import Adamax, IndexedSlices, connect
from adamax_ps.common.keys import server_of, shard_of
from adamax_ps.proto import codec
from adamax_ps.proto.wire import VIEW_HEADER

F32 = np.float32
INIT = {
    "class_name": "RandomUniform",
    "config": {"minval": -0.1, "maxval": 0.1, "seed": 5},
}
MAX_ROWS = 1000


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("http-tables")
    # Inline eviction only (no background rounds): counts follow the pushes.
    started = start_cluster(
        2, folder, "--max-request-rows", str(MAX_ROWS), "--eviction-interval", "0"
    )
    yield started
    for server in started:
        server.kill()


@pytest.fixture(scope="module")
def apis(servers):
    clients = [
        httpx.Client(base_url=s.http_address + "/api/v1", timeout=30) for s in servers
    ]
    yield clients
    for client in clients:
        client.close()


@pytest.fixture(scope="module")
def http(servers):
    with connect(",".join(s.http_address for s in servers)) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def grpc(servers):
    with connect(",".join(s.grpc_address for s in servers)) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def openapi(servers) -> dict:
    return httpx.get(servers[0].http_address + "/openapi.json").json()


def allows(openapi: dict, instance: object) -> bool:
    """Whether the schema of ``POST /tables`` allows ``instance``."""
    operation = openapi["paths"]["/api/v1/tables"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    root = {"components": openapi["components"], **schema}
    return jsonschema_rs.Draft202012Validator(root).is_valid(instance)


def view(index: int) -> dict[str, str]:
    return {VIEW_HEADER: f"{index}/2"}


def framed(header: dict, *arrays: np.ndarray) -> bytes:
    return b"".join(bytes(piece) for piece in codec.frame(header, list(arrays)))


FRAMED = {"content-type": codec.FRAMED}


def keys_of(server: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` distinct int64 keys (negative and huge ones too) ``server`` holds."""
    keys = np.random.default_rng(seed).integers(-(2**63), 2**63 - 1, 8 * count)
    keys = np.unique(keys[server_of(keys, 2) == server])
    return np.random.default_rng(seed).permutation(keys)[:count]


def npy(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == codec.NPY
    return np.load(io.BytesIO(response.content), allow_pickle=False)


def refused(response: httpx.Response, status: int, error: str = "", words: str = ""):
    """A JSON error of ``status`` (and class ``error``) naming ``words``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == (error or body["error"]) and body["message"], body
    assert words in body["message"], body


def create(api, index: int, name: str, **config) -> httpx.Response:
    return api.post("/tables", json={"name": name, **config}, headers=view(index))


def rows(api, name: str, keys: np.ndarray, **params) -> httpx.Response:
    body = framed({"keys": codec.describe(keys)}, keys)
    return api.post(f"/tables/{name}/rows", content=body, headers=FRAMED, params=params)


def assign(api, name: str, keys, values, headers=None) -> httpx.Response:
    body = framed(
        {"keys": codec.describe(keys), "values": codec.describe(values)}, keys, values
    )
    return api.put(
        f"/tables/{name}/rows", content=body, headers={**FRAMED, **(headers or {})}
    )


def test_create_attach_and_refusals(apis, http):
    settings = {"dim": 4, "initializer": INIT, "seed": 5, "capacity": 100}
    settings["admission"] = {"min_count": 2}
    first = create(apis[0], 0, "made", **settings)
    assert first.status_code == 200, first.text
    made = first.json()
    assert made["created"] and made["name"] == "made" and made["size"] == 0
    assert made["config"] == {
        **settings,
        "dtype": "float32",
        "admission": {"min_count": 2, "filter_bytes": 4 << 20},
        "eviction": {"policy": "lru", "ttl_steps": None},
    }
    assert {k: made[k] for k in made["config"]} == made["config"]
    again = create(apis[0], 0, "made", **settings)
    assert again.status_code == 200 and not again.json()["created"]
    refused(create(apis[0], 0, "made", dim=8), 409, "VariableExistsError", "exists")
    http.variable("plain", shape=(4, 2))  # held whole by one server
    (holder,) = [
        i for i, api in enumerate(apis) if api.get("/variables/plain").is_success
    ]
    refused(
        create(apis[holder], holder, "plain", dim=2),
        409,
        "VariableExistsError",
        "a variable",
    )
    # The cluster view: absent, another server's, malformed.
    body = {"name": "viewless", "dim": 2}
    refused(apis[0].post("/tables", json=body), 409, "FailedPreconditionError", "view")
    refused(create(apis[0], 1, "viewless", dim=2), 409, "ClusterViewError")
    refused(
        apis[0].post("/tables", json=body, headers={VIEW_HEADER: "x"}),
        400,
        "InvalidArgumentError",
        VIEW_HEADER,
    )
    names = [t["name"] for t in apis[0].get("/tables").json()]
    assert "viewless" not in names


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"dim": 0}, "dim"),
        ({"dim": "4"}, "dim"),
        ({"dim": 4, "dtype": "int32"}, "dtype"),
        ({"dim": 4, "initializer": "nope"}, "initializer"),
        (
            {
                "dim": 4,
                "initializer": {"class_name": "HeNormal", "config": {"mean": 1}},
            },
            "",
        ),
        ({"dim": 4, "admission": {"min_count": 2, "probability": 0.5}}, "admission"),
        ({"dim": 4, "admission": {"probability": 0}}, "admission"),
        ({"dim": 4, "admission": {"min_count": 0}}, "admission"),
        ({"dim": 4, "capacity": 9, "eviction": {"policy": "fifo"}}, "policy"),
        ({"dim": 4, "eviction": {"policy": "lfu"}}, "needs a capacity"),
        ({"dim": 4, "colour": "red"}, "colour"),
    ],
)
def test_bad_settings_are_422_naming_them(apis, openapi, settings, words):
    """The schema refuses them too (it states the server's rules)."""
    assert not allows(openapi, {"name": "bad", **settings})
    refused(create(apis[0], 0, "bad", **settings), 422, "InvalidRequest", words)
    assert "bad" not in [t["name"] for t in apis[0].get("/tables").json()]


def test_what_the_schema_allows_the_server_accepts(apis, openapi):
    edges = {
        "name": "e" * 256,
        "dim": 3.0,  # a whole float is an integer in JSON
        "dtype": "float16",
        "initializer": {"class_name": "he_normal"},
        "seed": -(2**63),
        "admission": {"probability": 1},
        "eviction": {"policy": "lfu", "ttl_steps": 5},
        "capacity": None,
    }
    assert allows(openapi, edges)
    for index, api in enumerate(apis):
        answer = api.post("/tables", json=edges, headers=view(index))
        assert answer.status_code == 200, answer.text
        assert answer.json()["dim"] == 3 and answer.json()["created"]


def test_openapi_documents_the_table_routes(openapi):
    paths = openapi["paths"]
    assert {
        operation["operationId"]
        for path, methods in paths.items()
        if path.startswith("/api/v1/tables")
        for operation in methods.values()
    } == {
        "create_table",
        "list_tables",
        "table",
        "table_rows",
        "assign_table_rows",
        "export_table",
    }
    created = paths["/api/v1/tables"]["post"]["responses"]["200"]["links"]
    assert set(created) == {"table", "export_table", "table_rows", "assign_table_rows"}
    assert created["table"]["parameters"] == {"name": "$response.body#/name"}
    for method in ("post", "put"):
        rows = paths["/api/v1/tables/{name}/rows"][method]
        assert set(rows["requestBody"]["content"]) == {codec.FRAMED}
        assert {"400", "404", "409", "413"} <= set(rows["responses"])
    export = paths["/api/v1/tables/{name}/export"]["get"]["responses"]
    assert set(export["200"]["content"]) == {"application/zip"}
    assert export["404"]["description"] == "no such table"


def test_list_and_describe_with_top_keys(apis, http):
    table = http.embedding_table("ranked", 2, capacity=1000)
    opt = Adamax(0.01, cluster=http, name="ranking")
    hot = keys_of(0, 3, seed=1)
    for step in range(3):  # key 0 three times, key 1 twice, key 2 once
        keys = hot[: 3 - step]
        opt.apply_gradients(
            [(IndexedSlices(np.ones((len(keys), 2), F32), keys), table)]
        )
    described = apis[0].get("/tables/ranked", params={"top_keys": 2}).json()
    assert described["top_keys"] == [
        {"key": int(hot[0]), "updates": 3, "updated": 3},
        {"key": int(hot[1]), "updates": 2, "updated": 2},
    ]
    assert described["size"] == 3 and described["admitted"] == 3
    # Rows, slots, bookkeeping and index by row; the fixed costs (admission
    # filter, tombstones) are in bytes only.
    assert 0 < described["bytes_per_row"] <= described["bytes"] / 3
    listed = {t["name"]: t for t in apis[0].get("/tables").json()}
    assert listed["ranked"] == {**described, "top_keys": None}
    assert apis[1].get("/tables/ranked").json()["size"] == 0  # server 1 has none
    refused(apis[0].get("/tables/nope"), 404, "VariableNotFoundError", "'nope'")
    refused(apis[0].get("/tables/plain"), 404, "VariableNotFoundError")
    for bad in (-1, 1001, "x"):
        refused(apis[0].get("/tables/ranked", params={"top_keys": bad}), 422)


def test_rows_by_key_through_the_table_and_variable_routes(apis, http, grpc):
    table = http.embedding_table("read", 3, initializer=INIT)
    opt = Adamax(0.01, cluster=http, name="reader")
    pushed = keys_of(0, 4, seed=2)
    grads = np.arange(12, dtype=F32).reshape(4, 3) - 5
    opt.apply_gradients([(IndexedSlices(grads, pushed), table)])
    keys = np.concatenate([pushed, keys_of(0, 3, seed=3)])  # and unseen ones
    by_table = npy(rows(apis[0], "read", keys))
    body = framed({"rows": codec.describe(keys)}, keys)
    by_variable = npy(
        apis[0].post("/variables/read/rows", content=body, headers=FRAMED)
    )
    assert by_table.dtype == F32 and by_table.shape == (7, 3)
    assert by_table.tobytes() == by_variable.tobytes()
    assert by_table.tobytes() == grpc.gather("read", keys).tobytes()
    for slot in ("m", "v"):
        got = npy(rows(apis[0], "read", keys, optimizer="reader", slot=slot))
        want = grpc.gather("read", keys, optimizer="reader", slot=slot)
        assert got.tobytes() == want.tobytes()
        assert got[:4].any(axis=1).all() and not got[4:].any()
    theirs = keys_of(1, 2, seed=4)
    refused(rows(apis[0], "read", theirs), 409, "FailedPreconditionError", "server 1")
    refused(rows(apis[0], "read", keys.astype(np.float64)), 400, "InvalidArgumentError")
    refused(rows(apis[0], "read", keys[:6].reshape(2, 3)), 400, "", "1-D")
    many = np.repeat(pushed[:1], MAX_ROWS + 1)
    refused(rows(apis[0], "read", many), 413, "ResourceExhaustedError", "keys")
    bad = apis[0].post("/tables/read/rows", content=b"\x09\x00", headers=FRAMED)
    refused(bad, 400, "InvalidArgumentError")
    refused(rows(apis[0], "nope", keys), 404, "VariableNotFoundError")
    refused(rows(apis[0], "read", keys, slot="m"), 422, "InvalidRequest")


def test_assign_rows_by_key(apis, grpc):
    for index, api in enumerate(apis):
        assert create(api, index, "set", dim=2).status_code == 200
    keys = keys_of(0, 3, seed=5)
    values = np.arange(6, dtype=F32).reshape(3, 2)
    answer = assign(apis[0], "set", keys, values, view(0))
    assert answer.status_code == 204, answer.text
    np.testing.assert_array_equal(npy(rows(apis[0], "set", keys)), values)
    np.testing.assert_array_equal(grpc.gather("set", keys), values)

    def unchanged() -> None:
        np.testing.assert_array_equal(npy(rows(apis[0], "set", keys)), values)
        assert apis[0].get("/tables/set").json()["size"] == 3

    other = values + 100
    for response, status, words in [
        (assign(apis[0], "set", keys, other[:2], view(0)), 400, "shape"),
        (assign(apis[0], "set", keys[[0, 0, 1]], other, view(0)), 400, "repeat"),
        (assign(apis[0], "set", keys, other), 409, "view"),
        (assign(apis[0], "set", keys, other, view(1)), 409, "view mismatch"),
        (assign(apis[0], "set", keys_of(1, 3), other, view(0)), 409, "server 1"),
        (assign(apis[0], "nope", keys, other, view(0)), 404, "'nope'"),
    ]:
        assert response.status_code == status, response.text
        assert words in response.json()["message"]
        unchanged()
    short = framed(
        {"keys": codec.describe(keys), "values": codec.describe(other)}, keys, other[0]
    )
    answer = apis[0].put(
        "/tables/set/rows", content=short, headers={**FRAMED, **view(0)}
    )
    refused(answer, 400, "InvalidArgumentError", "declares")
    unchanged()


def exported(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    with np.load(io.BytesIO(response.content), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def replayed(whole: dict, delta: dict) -> dict[int, list[float]]:
    """An export with a delta applied: its deletions first, then its rows."""
    state = dict(zip(whole["keys"].tolist(), whole["values"].tolist(), strict=True))
    for key in delta["evicted"].tolist():
        state.pop(key, None)
    state.update(zip(delta["keys"].tolist(), delta["values"].tolist(), strict=True))
    return state


def as_rows(export: dict) -> dict[int, list[float]]:
    return dict(zip(export["keys"].tolist(), export["values"].tolist(), strict=True))


def test_export_whole_and_as_a_delta(apis, http):
    table = http.embedding_table("served", 2, capacity=16)  # 4 rows a shard
    opt = Adamax(0.1, cluster=http, name="server")
    keys = keys_of(0, 40, seed=6)

    def push(some: np.ndarray) -> None:
        grads = np.ones((len(some), 2), F32)
        opt.apply_gradients([(IndexedSlices(grads, some), table)])

    push(keys[:4])
    whole = exported(apis[0].get("/tables/served/export"))
    assert set(whole) == {"keys", "values", "evicted", "through"}
    assert whole["through"].dtype == np.int64 and int(whole["through"]) == 1
    assert len(whole["evicted"]) == 0 and len(whole["keys"]) == 4
    np.testing.assert_array_equal(
        whole["values"], npy(rows(apis[0], "served", whole["keys"]))
    )
    push(keys[:2])  # updates only (see the next test)
    for start in range(4, 40, 6):  # over the capacity: evictions
        push(keys[start : start + 6])
    push(keys[:2])
    delta = exported(apis[0].get("/tables/served/export", params={"since": 1}))
    now = exported(apis[0].get("/tables/served/export"))
    assert len(delta["evicted"]) and int(delta["through"]) == int(now["through"])
    assert replayed(whole, delta) == as_rows(now)
    refused(apis[0].get("/tables/nope/export"), 404, "VariableNotFoundError")
    refused(apis[0].get("/tables/plain/export"), 404, "VariableNotFoundError")
    refused(apis[0].get("/tables/served/export", params={"since": -1}), 422)


def test_a_delta_holds_the_evictions_of_its_first_step(apis, http):
    table = http.embedding_table("first", 2, capacity=4)  # 1 row a shard
    opt = Adamax(0.1, cluster=http, name="first")
    keys = keys_of(0, 40, seed=11)
    first, second = keys[shard_of(keys, 2) == 0][:2]  # one shard of server 0
    grads = np.ones((1, 2), F32)
    opt.apply_gradients([(IndexedSlices(grads, [first]), table)])
    whole = exported(apis[0].get("/tables/first/export"))
    opt.apply_gradients([(IndexedSlices(grads, [second]), table)])  # evicts first
    since = {"since": int(whole["through"])}
    delta = exported(apis[0].get("/tables/first/export", params=since))
    now = exported(apis[0].get("/tables/first/export"))
    assert now["keys"].tolist() == [second]
    assert replayed(whole, delta) == as_rows(now)


def push_body(name: str, keys, values, sequence: int) -> bytes:
    gradient = {
        "variable": name,
        "indices": codec.describe(keys),
        "values": codec.describe(values),
    }
    header = {"gradients": [gradient], "push_id": {"client": "t", "sequence": sequence}}
    return framed(header, keys, values)


def test_keyed_pushes_through_the_http_push_route(apis, grpc):
    """A raw framed push of keys to one server (the HTTP push route checks
    no row count of its own) matches the gRPC client's push of the same keys."""
    config = {"name": "raw", "learning_rate": 0.05}
    keys = np.concatenate([keys_of(0, 5, seed=7), keys_of(0, 1, seed=7)])  # a repeat
    values = np.random.default_rng(8).normal(size=(6, 3)).astype(F32)
    twin = grpc.embedding_table("twin", 3, initializer=INIT)
    Adamax(cluster=grpc, **{**config, "name": "twin"}).apply_gradients(
        [(IndexedSlices(values, keys), twin)]
    )
    for index, api in enumerate(apis):
        assert create(api, index, "raw", dim=3, initializer=INIT, seed=5).is_success
        answer = api.post("/optimizers", json={"config": config}, headers=view(index))
        assert answer.status_code == 200, answer.text
    answer = apis[0].post(
        "/optimizers/raw/apply",
        content=push_body("raw", keys, values, 1),
        headers={**FRAMED, **view(0)},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["iterations"] == 1
    for slot in ({}, {"optimizer": "raw", "slot": "m"}):
        twin = {**slot, "optimizer": "twin"} if slot else {}
        got = npy(rows(apis[0], "raw", keys, **slot))
        assert got.tobytes() == npy(rows(apis[0], "twin", keys, **twin)).tobytes()
    before = apis[0].get("/tables/raw").json()

    def pushed(name, some_keys, some_values, sequence) -> httpx.Response:
        return apis[0].post(
            "/optimizers/raw/apply",
            content=push_body(name, some_keys, some_values, sequence),
            headers={**FRAMED, **view(0)},
        )

    theirs = keys_of(1, 6, seed=9)
    refused(pushed("raw", theirs, values, 2), 409, "FailedPreconditionError")
    refused(pushed("raw", keys[:3], values, 3), 400, "InvalidArgumentError", "shape")
    refused(pushed("raw", keys.reshape(2, 3), values, 4), 400, "", "1-D")
    dense = framed(
        {"gradients": [{"variable": "raw", "values": codec.describe(values)}]}, values
    )
    answer = apis[0].post(
        "/optimizers/raw/apply", content=dense, headers={**FRAMED, **view(0)}
    )
    refused(answer, 400, "InvalidArgumentError", "IndexedSlices")
    assert apis[0].get("/tables/raw").json() == before
    assert apis[0].get("/optimizers/raw").json()["iterations"] == 1


def test_http_client_matches_grpc_bit_for_bit(http, grpc):
    settings = {
        "initializer": INIT,
        "admission": {"min_count": 2},
        "capacity": 16,
        "eviction": {"policy": "lfu"},
    }
    tables = {
        "http": http.embedding_table("parity-http", 8, **settings),
        "grpc": grpc.embedding_table("parity-grpc", 8, **settings),
    }
    optimizers = {
        "http": Adamax(0.01, cluster=http, name="parity-http"),
        "grpc": Adamax(0.01, cluster=grpc, name="parity-grpc"),
    }
    rng = np.random.default_rng(10)
    seen = []
    for _ in range(8):
        keys = rng.zipf(1.3, 48).astype(np.int64) * rng.choice([-(2**40), 1, 7], 48)
        values = rng.normal(size=(48, 8)).astype(F32)
        seen.append(keys)
        for side in ("http", "grpc"):
            optimizers[side].apply_gradients(
                [(IndexedSlices(values, keys), tables[side])]
            )
    keys = np.unique(np.concatenate([*seen, [123456789, -5]]))
    for reader in (http, grpc):  # either transport reads either table
        for slot in ({}, {"optimizer": "parity-http", "slot": "m"}):
            other = {**slot, "optimizer": "parity-grpc"} if slot else {}
            a = reader.gather("parity-http", keys, **slot)
            b = reader.gather("parity-grpc", keys, **other)
            assert a.tobytes() == b.tobytes()
    assert optimizers["http"].iterations.numpy() == 8
    info = {side: tables[side].info(top_keys=5) for side in tables}
    for side in info:
        info[side].pop("name")
    assert info["http"] == info["grpc"]
    assert info["http"]["filtered"] > 0 and info["http"]["evicted"] > 0
    assert tables["http"].size() == tables["grpc"].size() == info["http"]["size"]
    exports = {side: tables[side].export() for side in tables}
    for part in ("keys", "values", "evicted"):
        a, b = (getattr(exports[side], part) for side in ("http", "grpc"))
        assert a.tobytes() == b.tobytes(), part
    through = exports["http"].through  # each server's change number
    assert through == exports["grpc"].through and len(through) == 2
    assert all(number > 0 for number in through)
    fresh = np.array([1 << 50, -(1 << 50)])
    for side in tables:
        tables[side].assign(fresh, np.full((2, 8), 0.5, F32))
    assert (
        tables["http"].gather(fresh).tobytes()
        == grpc.gather("parity-grpc", fresh).tobytes()
    )
