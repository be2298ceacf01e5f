"""What a hash-keyed table is: its row width, dtype, initializer, admission,
eviction and capacity, checked once and kept as JSON in logs and checkpoints.

- ``admission``: ``{"min_count": n}`` gives a key a row once it was pushed
  ``n`` times (counted in a count-min sketch of ``filter_bytes``, whose
  counters halve after every ``8 x width`` counts so the filter keeps
  telling new keys from old ones in an endless stream), or
  ``{"probability": p}`` admits a key at each push with probability ``p``
  (decided by a hash of the key, the table's seed and the step: the same on
  every replay). Until then its gradients are dropped (counted as filtered).
- ``eviction``: ``{"policy": "lru" | "lfu", "ttl_steps": n}``. ``ttl_steps``
  removes rows not updated for ``n`` steps; the policy chooses which rows go
  when the table is over ``capacity`` rows. An evicted key's row and slots
  are gone; if it comes back it starts from its initial row with zero slots.
- ``capacity``: rows of the whole table at most, split evenly over the
  servers and their shards (each part holds at most its share).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from adamax_ps.server.errors import InvalidArgumentError
from adamax_ps.server.key_init import KeyInitializer

DEFAULT_FILTER_BYTES = 4 << 20
POLICIES = ("lru", "lfu")


@dataclass(frozen=True)
class Admission:
    min_count: int = 0  # 0: by probability
    probability: float = 1.0
    filter_bytes: int = DEFAULT_FILTER_BYTES

    def to_json(self) -> dict[str, Any]:
        if self.min_count:
            return {"min_count": self.min_count, "filter_bytes": self.filter_bytes}
        return {"probability": self.probability}


@dataclass(frozen=True)
class Eviction:
    policy: str = "lru"
    ttl_steps: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "ttl_steps": self.ttl_steps}


@dataclass(frozen=True)
class TableConfig:
    dim: int
    dtype: np.dtype
    initializer: str | dict
    seed: int
    capacity: int | None = None
    admission: Admission | None = None
    eviction: Eviction | None = None

    def key_initializer(self) -> KeyInitializer:
        return KeyInitializer(self.initializer, self.dim, self.seed)

    def part_capacity(self, parts: int) -> int | None:
        """Rows one of ``parts`` equal parts may hold."""
        return None if self.capacity is None else math.ceil(self.capacity / parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "dtype": self.dtype.name,
            "initializer": self.initializer,
            "seed": self.seed,
            "capacity": self.capacity,
            "admission": self.admission.to_json() if self.admission else None,
            "eviction": self.eviction.to_json() if self.eviction else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TableConfig:
        return table_config(**dict(data))


def table_config(
    *,
    dim: Any,
    dtype: Any = "float32",
    initializer: Any = "zeros",
    seed: Any = 0,
    capacity: Any = None,
    admission: Any = None,
    eviction: Any = None,
) -> TableConfig:
    """A checked ``TableConfig``; ``InvalidArgumentError`` names what is wrong."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise InvalidArgumentError(f"a table's dim is a positive integer: {dim!r}")
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise InvalidArgumentError(f"unknown dtype {dtype!r}") from None
    if dtype.name not in ("float16", "float32", "float64"):
        raise InvalidArgumentError(
            f"a table holds float16, float32 or float64 rows. Received: {dtype}"
        )
    if capacity is not None and (
        isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1
    ):
        raise InvalidArgumentError(
            f"a table's capacity is a positive number of rows: {capacity!r}"
        )
    config = TableConfig(
        dim,
        dtype,
        initializer,
        int(seed),
        capacity,
        _admission(admission),
        _eviction(eviction, capacity),
    )
    config.key_initializer()  # a bad initializer is refused now
    return config


def _admission(spec: Any) -> Admission | None:
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise InvalidArgumentError(
            "admission is {'min_count': n} or {'probability': p}. "
            f"Received: {spec!r}"
        )
    spec = dict(spec)
    if set(spec) - {"min_count", "filter_bytes", "probability"}:
        raise InvalidArgumentError(f"unknown admission settings in {spec!r}")
    if ("min_count" in spec) == ("probability" in spec):
        raise InvalidArgumentError(
            f"admission takes either min_count or probability. Received: {spec!r}"
        )
    if "probability" in spec:
        p = spec["probability"]
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 1:
            raise InvalidArgumentError(f"admission probability is in (0, 1]: {p!r}")
        return Admission(probability=float(p))
    n = spec["min_count"]
    size = spec.get("filter_bytes", DEFAULT_FILTER_BYTES)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 60000:
        raise InvalidArgumentError(f"admission min_count is in [1, 60000]: {n!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1024:
        raise InvalidArgumentError(f"admission filter_bytes is at least 1024: {size!r}")
    return Admission(min_count=n, filter_bytes=size)


def _eviction(spec: Any, capacity: int | None) -> Eviction | None:
    if spec is None:
        return Eviction() if capacity is not None else None
    if not isinstance(spec, Mapping) or set(spec) - {"policy", "ttl_steps"}:
        raise InvalidArgumentError(
            "eviction is {'policy': 'lru' | 'lfu', 'ttl_steps': n}. "
            f"Received: {spec!r}"
        )
    policy = spec.get("policy", "lru")
    ttl = spec.get("ttl_steps")
    if policy not in POLICIES:
        raise InvalidArgumentError(
            f"eviction policy is 'lru' or 'lfu'. Received: {policy!r}"
        )
    if ttl is not None and (
        isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1
    ):
        raise InvalidArgumentError(f"eviction ttl_steps is a positive integer: {ttl!r}")
    if ttl is None and capacity is None:
        raise InvalidArgumentError(
            "eviction needs a capacity (rows beyond it are evicted by the policy) "
            "or ttl_steps"
        )
    return Eviction(policy, ttl)
