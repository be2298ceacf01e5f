"""Schemathesis hooks for the HTTP fuzz test: a rejected request must change
nothing on the server (compared through the REST API before and after)."""

from __future__ import annotations

import json
import os

import httpx
import schemathesis

BASE = os.environ["ADAMAX_PS_FUZZ_URL"]
_before: dict[int, str] = {}


def fingerprint() -> str:
    optimizers = httpx.get(BASE + "/api/v1/optimizers", timeout=30).json()
    for optimizer in optimizers:
        optimizer.pop("push_rate", None)  # derived from wall-clock samples
    variables = httpx.get(BASE + "/api/v1/variables", timeout=30).json()
    return json.dumps([optimizers, variables], sort_keys=True)


# Framed bodies are declared as binary strings: send what was generated as is.
schemathesis.serializer.alias("application/x-adamax-ps", "application/octet-stream")


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
