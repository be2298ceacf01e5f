"""Hostile HTTP input, the REST twin of ``test_fuzz_grpc``: random bytes into
every write route, truncated and mutated framed pushes, and well-formed bodies
carrying bad tensors (wrong dtype or shape, NaN, Inf, negative, huge and
out-of-range indices, sizes that lie). Never a server error, never a hang; a refusal is
a JSON error naming the problem and leaves the state bit for bit as it was.
(The schemathesis run over the whole schema is in ``test_http_api``.)"""

from __future__ import annotations

import hashlib
import json

import httpx
import numpy as np
import pytest
from helpers import memory
from helpers.servers import start_fuzz_target

from adamax_ps.proto import codec

F32 = np.float32
WRITES = [
    ("POST", "/optimizers/Adamax/apply"),
    ("POST", "/optimizers/Adamax/reserve-step"),
    ("PUT", "/optimizers/Adamax/iterations"),
    ("POST", "/optimizers/Adamax/slots"),
    ("POST", "/optimizers/Adamax/weights"),
    ("PUT", "/optimizers/Adamax/weights/iterations"),
    ("POST", "/optimizers"),
    ("POST", "/variables"),
    ("PUT", "/variables/w/value"),
    ("PUT", "/variables/emb/value"),
    ("POST", "/variables/emb/rows"),
]
CONTENT_TYPES = [codec.FRAMED, "application/json", "application/octet-stream"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_fuzz_target(tmp_path_factory.mktemp("fuzz-http"))
    yield server
    assert server.process.poll() is None, "the server died during the fuzz run"
    server.kill()


@pytest.fixture(scope="module")
def api(server):
    with httpx.Client(base_url=server.http_address + "/api/v1", timeout=15) as client:
        yield client


def fingerprint(api: httpx.Client) -> str:
    """Every variable, slot and optimizer field, hashed (values as npy bytes)."""
    digest = hashlib.sha256()
    variables = api.get("/variables")
    assert variables.status_code == 200
    for variable in sorted(variables.json(), key=lambda v: v["name"]):
        digest.update(json.dumps(variable, sort_keys=True).encode())
        name = variable["name"]
        for slot in ({}, {"slot": "m"}, {"slot": "v"}):
            params = {"format": "npy", **slot}
            if slot:
                params["optimizer"] = "Adamax"
            response = api.get(f"/variables/{name}/value", params=params)
            digest.update(str(response.status_code).encode() + response.content)
    optimizers = api.get("/optimizers").json()
    for optimizer in optimizers:
        optimizer.pop("pushes_per_second", None)  # a rate, not state
    digest.update(json.dumps(optimizers, sort_keys=True).encode())
    return digest.hexdigest()


def refused(status: int) -> bool:
    """A client error, or the memory budget's 507 (Insufficient Storage)."""
    return 400 <= status < 500 or status == 507


def check(api, method: str, path: str, before: str, **kwargs) -> tuple[int, str]:
    """Send; never a server error (5xx but the budget's 507); a refusal is a
    JSON error and changes nothing."""
    response = api.request(method, path, **kwargs)
    assert response.status_code < 500 or response.status_code == 507, (
        method,
        path,
        response.text,
    )
    after = fingerprint(api)
    if response.status_code >= 400:
        error = response.json()
        assert error["error"] and error["message"], (path, error)
        assert after == before, f"{method} {path} was refused but changed the state"
    return response.status_code, after


def test_random_bytes_into_every_write_route(api):
    rng = np.random.default_rng(11)
    before = fingerprint(api)
    for method, path in WRITES:
        for _ in range(12):
            size = int(rng.choice([0, 1, 4, 9, 64, 1000]))
            content_type = CONTENT_TYPES[int(rng.integers(len(CONTENT_TYPES)))]
            _, before = check(
                api,
                method,
                path,
                before,
                content=rng.bytes(size),
                headers={"content-type": content_type},
            )


def framed(header: dict, *arrays: np.ndarray) -> bytes:
    return b"".join(codec.frame(header, arrays))


def push(*gradients: dict, arrays: tuple = (), **fields) -> bytes:
    return framed({"gradients": list(gradients), **fields}, *arrays)


def dense_w(values: np.ndarray) -> bytes:
    return push({"variable": "w", "values": codec.describe(values)}, arrays=(values,))


def sparse_emb(indices: np.ndarray, values: np.ndarray) -> bytes:
    return push(
        {
            "variable": "emb",
            "indices": codec.describe(indices),
            "values": codec.describe(values),
        },
        arrays=(indices, values),
    )


def test_truncated_and_mutated_pushes(api):
    rng = np.random.default_rng(12)
    valid = push(
        {
            "variable": "emb",
            "indices": {"shape": [2], "dtype": "int64"},
            "values": {"shape": [2, 4], "dtype": "float32"},
        },
        {"variable": "w", "values": {"shape": [6], "dtype": "float64"}},
        arrays=(np.array([3, 9]), np.ones((2, 4), F32), np.ones(6)),
        push_id={"client": "fuzz-http", "sequence": 1},
    )
    before = fingerprint(api)
    for _ in range(60):
        data = bytearray(valid)
        if rng.random() < 0.5:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(0, len(data)))] ^= int(rng.integers(1, 256))
        _, before = check(
            api,
            "POST",
            "/optimizers/Adamax/apply",
            before,
            content=bytes(data),
            headers={"content-type": codec.FRAMED},
        )


ONES = np.ones((1, 4), F32)
HOSTILE = {
    "float32 values for a float64 variable": dense_w(np.ones(6, F32)),
    "wrong shape": dense_w(np.ones(5)),
    "NaN": dense_w(np.array([1, np.nan, 1, 1, 1, 1])),
    "Inf": dense_w(np.array([np.inf, 1, 1, 1, 1, 1])),
    "negative index": sparse_emb(np.array([-1]), ONES),
    "index past the last row": sparse_emb(np.array([50]), ONES),
    "huge index": sparse_emb(np.array([1 << 62]), ONES),
    "float indices": sparse_emb(np.array([1.5]), ONES),
    "more indices than rows": sparse_emb(np.array([1, 2]), ONES),
    "fewer bytes than declared": push(
        {"variable": "w", "values": {"shape": [6], "dtype": "float64"}},
        arrays=(np.ones(5),),
    ),
    "more bytes than declared": push(
        {"variable": "w", "values": {"shape": [6], "dtype": "float64"}},
        arrays=(np.ones(7),),
    ),
    "an enormous declared size and a small body": push(
        {"variable": "w", "values": {"shape": [1 << 40, 1 << 20], "dtype": "float32"}},
        arrays=(np.ones(6),),
    ),
    "a negative dimension": push(
        {"variable": "w", "values": {"shape": [-6], "dtype": "float64"}},
        arrays=(np.ones(6),),
    ),
    "an unknown dtype": push(
        {"variable": "w", "values": {"shape": [6], "dtype": "complex128"}},
        arrays=(np.ones(6),),
    ),
    "a negative step": push(
        {"variable": "w", "values": codec.describe(np.ones(6))},
        arrays=(np.ones(6),),
        step=-5,
    ),
    "an unknown variable": push(
        {"variable": "nope", "values": codec.describe(np.ones(6))},
        arrays=(np.ones(6),),
    ),
    "a push id that is not an object": push(
        {"variable": "w", "values": codec.describe(np.ones(6))},
        arrays=(np.ones(6),),
        push_id=[1, 2],
    ),
    "gradients that are not a list": framed({"gradients": {"w": 1}}),
    "a header that is not an object": b"\x02\x00\x00\x00[]",
    "a header length past the end": b"\xff\xff\xff\x7f{}",
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_but_well_formed_pushes_are_refused(api, case):
    before = fingerprint(api)
    status, _ = check(
        api,
        "POST",
        "/optimizers/Adamax/apply",
        before,
        content=HOSTILE[case],
        headers={"content-type": codec.FRAMED},
    )
    assert 400 <= status < 500, case


@pytest.mark.parametrize(
    ("path", "body", "method"),
    [
        ("/variables/w/value", framed({"value": codec.describe(np.ones(7))}), "PUT"),
        (
            "/variables/w/value",
            framed({"value": {"shape": [1 << 40], "dtype": "float64"}}, np.ones(6)),
            "PUT",
        ),
        (
            "/variables/emb/value",
            framed({"value": codec.describe(np.ones((50, 3)))}, np.ones((50, 3))),
            "PUT",
        ),
        (
            "/optimizers/Adamax/weights/iterations",
            framed({"value": codec.describe(np.ones(3))}, np.ones(3)),
            "PUT",
        ),
    ],
)
def test_hostile_assignments_are_refused(api, path, body, method):
    before = fingerprint(api)
    status, _ = check(
        api, method, path, before, content=body, headers={"content-type": codec.FRAMED}
    )
    assert 400 <= status < 500, path


@pytest.mark.parametrize(
    ("path", "method", "payload"),
    [
        ("/optimizers", "POST", {"config": {"learning_rate": "fast"}}),
        ("/optimizers", "POST", {"config": {"learning_rate": float("nan")}}),
        (
            "/optimizers/Adamax/weights",
            "POST",
            {"name": "huge", "shape": [1 << 40], "dtype": "float64"},
        ),
        ("/optimizers/Adamax/iterations", "PUT", {"iterations": -1}),
        ("/optimizers/Adamax/iterations", "PUT", {"iterations": 1 << 70}),
    ],
)
def test_hostile_json_bodies_are_refused(api, path, method, payload):
    before = fingerprint(api)
    status, _ = check(
        api,
        method,
        path,
        before,
        content=json.dumps(payload, allow_nan=True),
        headers={"content-type": "application/json"},
    )
    assert refused(status), (path, payload)


def spec(name: str, shape: list[int], **fields) -> dict:
    return {"name": name, "global_shape": shape, "rows": shape[0], **fields}


@pytest.mark.parametrize(
    "specs",
    [
        [spec("big", [1 << 40, 1 << 20])],
        [spec("x", [4], dtype="int32")],
        [spec("x", [-4])],
        [spec("x", [4], initializer="no-such-initializer")],
        [spec("x", [4], rows=9)],
        [spec("", [4])],
        [spec("w", [7], dtype="float64")],  # exists with another shape
        [spec("fine", [4]), spec("x", [4], dtype="int32")],  # all or nothing
        ["not an object"],
    ],
)
def test_hostile_variable_creations_are_refused(api, specs):
    before = fingerprint(api)
    status, _ = check(
        api,
        "POST",
        "/variables",
        before,
        content=framed({"variables": specs}),
        headers={"content-type": codec.FRAMED},
    )
    assert refused(status), specs


ROWS = np.zeros(5000, np.int64)  # the fuzz target's --max-request-rows is 1000


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        (
            "POST",
            "/variables/emb/rows",
            {"content": framed({"rows": codec.describe(ROWS)}, ROWS)},
        ),
        ("GET", "/variables/emb/value", {"params": {"rows": ",".join(["1"] * 5000)}}),
        (
            "POST",
            "/variables/emb/rows",
            {
                "content": framed(
                    {"rows": {"shape": [1 << 40], "dtype": "int64"}}, ROWS[:1]
                )
            },
        ),
    ],
    ids=["5000 rows in a body", "5000 rows in the URL", "a claimed 2^40 rows"],
)
def test_huge_row_lists_are_refused(api, method, path, kwargs):
    before = fingerprint(api)
    headers = {"content-type": codec.FRAMED} if method == "POST" else {}
    status, _ = check(api, method, path, before, headers=headers, **kwargs)
    assert status in (400, 413), status


def test_a_body_without_a_length_is_refused_beyond_the_request_limit(server, api):
    """A chunked body claims no length: it is counted as it arrives and cut off
    at --max-request-bytes (4 MB here), not buffered whole."""
    before = fingerprint(api)

    def chunks():
        for _ in range(64):
            yield b"\0" * (1 << 20)

    start = memory.reset_peak(server.process.pid)
    status, _ = check(
        api,
        "POST",
        "/optimizers/Adamax/apply",
        before,
        content=chunks(),
        headers={"content-type": codec.FRAMED},
    )
    assert status == 413
    assert memory.peak(server.process.pid) - start < 24 << 20
