"""Where the servers are and who this worker is, read from the environment.

``connect()`` with no addresses, and every framework layer given no cluster,
finds the servers here: ``ADAMAX_PS_ADDRESS`` first (what ``adamax-ps
cluster`` prints and deploy/ sets), else the ``ps`` tasks of ``TF_CONFIG``
(what a TFJob, or TensorFlow's own parameter-server tutorial, gives every
task), so a manifest written for TensorFlow's parameter servers works as it
is. A ``ps`` address without a scheme is gRPC. The token, when the servers
want one, is ``ADAMAX_PS_TOKEN``, as for the servers themselves.

The worker's rank is the one ``torchrun`` sets (``RANK``/``WORLD_SIZE``),
else the index of a ``worker`` task in ``TF_CONFIG``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

ADDRESS_ENV = "ADAMAX_PS_ADDRESS"
TOKEN_ENV = "ADAMAX_PS_TOKEN"
TF_CONFIG_ENV = "TF_CONFIG"


def addresses_from_environment(environ: Mapping[str, str] | None = None) -> str:
    """The comma-separated server addresses named by the environment.

    Raises ``ValueError`` naming both variables when neither names a server,
    and naming ``TF_CONFIG`` when it is not the JSON TensorFlow documents.
    """
    env = os.environ if environ is None else environ
    address = env.get(ADDRESS_ENV, "").strip()
    if address:
        return address
    raw = env.get(TF_CONFIG_ENV, "").strip()
    if not raw:
        raise ValueError(
            f"no cluster: pass cluster=connect(...), or set {ADDRESS_ENV} "
            f"(e.g. grpc://ps-0:50051,grpc://ps-1:50051) or {TF_CONFIG_ENV} "
            "with 'ps' tasks"
        )
    tasks = _tf_config(raw).get("cluster", {}).get("ps")
    if isinstance(tasks, Mapping):  # the sparse form: {"0": "host:port", ...}
        tasks = [tasks[k] for k in sorted(tasks, key=int)]
    if not tasks or not all(isinstance(t, str) and t.strip() for t in tasks):
        raise ValueError(
            f"{TF_CONFIG_ENV} names no 'ps' tasks: its 'cluster' needs "
            '"ps": ["host:port", ...] (one per adamax-ps server, in server order)'
        )
    return ",".join(t if "://" in t else f"grpc://{t.strip()}" for t in tasks)


def token_from_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """The servers' bearer token, ``ADAMAX_PS_TOKEN`` (as the servers and the
    CLI read it), or None."""
    env = os.environ if environ is None else environ
    return env.get(TOKEN_ENV, "").strip() or None


@dataclass(frozen=True)
class WorkerRank:
    """This worker's place among the workers (0 of 1 when nothing says)."""

    rank: int
    world_size: int


def worker_rank(environ: Mapping[str, str] | None = None) -> WorkerRank:
    """``torchrun``'s ``RANK``/``WORLD_SIZE``, else ``TF_CONFIG``'s worker task."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, size = _integer(env, "RANK"), _integer(env, "WORLD_SIZE")
        if not 0 <= rank < size:
            raise ValueError(f"RANK={rank} is not below WORLD_SIZE={size}")
        return WorkerRank(rank, size)
    raw = env.get(TF_CONFIG_ENV, "").strip()
    if raw:
        config = _tf_config(raw)
        task = config.get("task", {})
        workers = config.get("cluster", {}).get("worker", [])
        if task.get("type") == "worker" and workers:
            return WorkerRank(int(task.get("index", 0)), len(workers))
    return WorkerRank(0, 1)


WIRE_ENV = "ADAMAX_PS_WIRE_DTYPE"


def wire_from_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """``ADAMAX_PS_WIRE_DTYPE`` (float16 or bfloat16), or None: float32."""
    env = os.environ if environ is None else environ
    return env.get(WIRE_ENV) or None


def replica_from_environment(environ: Mapping[str, str] | None = None) -> int | None:
    """The worker's replica id for synchronous training: its rank when
    ``RANK``/``WORLD_SIZE`` or a ``TF_CONFIG`` worker task say it, else None
    (the client id stands in)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return worker_rank(env).rank
    raw = env.get(TF_CONFIG_ENV, "").strip()
    if raw and _tf_config(raw).get("task", {}).get("type") == "worker":
        return worker_rank(env).rank
    return None


def _tf_config(raw: str) -> dict:
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{TF_CONFIG_ENV} is not JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{TF_CONFIG_ENV} is not a JSON object")
    return config


def _integer(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise ValueError(f"{key}={env[key]!r} is not an integer") from None
