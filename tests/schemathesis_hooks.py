"""Schemathesis hooks for the HTTP fuzz test (``tests/test_http_api.py``).

- A rejected request must change nothing on the server (compared through the
  REST API before and after).
- Framed bodies (``application/x-adamax-ps``, "binary" in the schema) are
  random bytes or well-formed frames: new 4x2 variables, 4x2 values, pushes to
  the 4x2 variable ``w``, row lists. The stateful phase then follows real
  variables (create -> read, assign -> read).
- A request refused by a rule no JSON Schema can state (``UNSTATABLE``: two
  lengths that must agree, rows past a variable's end, a product of
  dimensions) is not "valid data refused".
"""

from __future__ import annotations

import json
import os

import httpx
import numpy as np
import schemathesis
from hypothesis import strategies as st

from adamax_ps.proto import codec

# One client for the whole run: a new one per call costs an SSL context.
STATE = httpx.Client(base_url=os.environ["ADAMAX_PS_FUZZ_URL"], timeout=30)
SHAPE = (4, 2)  # of every variable the frames create, assign or push to
_before: dict[int, str] = {}


def fingerprint() -> str:
    optimizers = STATE.get("/api/v1/optimizers").json()
    for optimizer in optimizers:
        optimizer.pop("push_rate", None)  # derived from wall-clock samples
    variables = STATE.get("/api/v1/variables").json()
    return json.dumps([optimizers, variables], sort_keys=True)


def framed(header: dict, arrays: list[np.ndarray] | None = None) -> bytes:
    return b"".join(bytes(piece) for piece in codec.frame(header, arrays or []))


def _new_variable(name: str) -> bytes:
    spec = {"name": name, "global_shape": list(SHAPE), "rows": SHAPE[0]}
    return framed({"variables": [{**spec, "dtype": "float32"}]})


def _value(array: np.ndarray) -> bytes:
    return framed({"value": codec.describe(array)}, [array])


def _push(array: np.ndarray) -> bytes:
    gradient = {"variable": "w", "values": codec.describe(array)}
    return framed({"gradients": [gradient]}, [array])


def _rows(rows: list[int]) -> bytes:
    array = np.asarray(rows, np.int64)
    return framed({"rows": codec.describe(array)}, [array])


_names = st.text("abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=12)
_size = SHAPE[0] * SHAPE[1]
_arrays = st.lists(st.floats(-10, 10, width=32), min_size=_size, max_size=_size).map(
    lambda values: np.asarray(values, np.float32).reshape(SHAPE)
)
schemathesis.openapi.media_type(
    codec.FRAMED,
    st.one_of(
        _names.map(_new_variable),
        _arrays.map(_push),
        _arrays.map(_value),
        st.lists(st.integers(0, SHAPE[0] - 1), min_size=1, max_size=4).map(_rows),
        st.binary(max_size=64),
    ),
)


APPLY = "POST /api/v1/optimizers/{name}/apply"


@schemathesis.hook
def before_generate_body(context, strategy):
    """Pushes get a well-formed push to ``w`` half the time (the framed media
    type's strategy, else), so the stateful phase reliably reaches applies
    that succeed, not only their refusals."""
    operation = getattr(context, "operation", None)
    if operation is not None and operation.label == APPLY:
        return st.one_of(strategy, _arrays.map(_push))
    return strategy


# Rules no JSON Schema can state, by operation: a schema-valid request refused
# by one of them, with an answer naming it, is not "valid data refused".
UNSTATABLE = {
    # two lists' lengths: a PiecewiseConstantDecay's values and boundaries
    "POST /api/v1/optimizers": "The length of boundaries should be 1 less than",
    # rows against the variable's current shape
    "GET /api/v1/variables/{name}/value": "is not in [0, ",
    # a product: numpy cannot index dimensions multiplying past 2**63 bytes
    "POST /api/v1/optimizers/{name}/weights": "cannot be allocated",
}


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:
    """Every failure counts but a refusal by a rule in ``UNSTATABLE``."""
    rule = UNSTATABLE.get(case.operation.label)
    return not (
        failure.code == "ST202"  # schema-valid request rejected
        and rule is not None
        and rule in response.text
    )


@schemathesis.hook
def before_call(context, case, kwargs) -> None:
    _before[id(case)] = fingerprint()


@schemathesis.check
def rejected_requests_change_nothing(ctx, response, case) -> None:
    before = _before.pop(id(case), None)
    if response.status_code >= 400 and before is not None and fingerprint() != before:
        raise AssertionError(
            f"{case.method} {case.path} was refused ({response.status_code}) but "
            "changed the server's state"
        )
