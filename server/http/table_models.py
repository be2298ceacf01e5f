"""The HTTP API's models of hash-keyed tables: what creating one takes and
what describing one answers, with the server's rules stated in the schema.

A table's settings are ``table_config.table_config``'s: ``dim``, ``dtype``,
``initializer`` (a name, or a Keras config dict of one), ``seed``,
``capacity``, ``admission`` (``{"min_count": n[, "filter_bytes": b]}`` or
``{"probability": p}``) and ``eviction`` (``{"policy": "lru" | "lfu",
"ttl_steps": n}``, which needs a capacity or a ``ttl_steps``). The schema
bounds ``dim`` and ``filter_bytes`` tighter than the service does (see
``MAX_TABLE_DIM`` and ``MAX_FILTER_BYTES``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import ConfigDict, Field, create_model, model_validator

from adamax_ps.server.http.models import (
    INT64_END,
    Name,
    Strict,
    integer,
)
from adamax_ps.server.initializers import INITIALIZERS
from adamax_ps.server.table_config import DEFAULT_FILTER_BYTES, POLICIES

MAX_TABLE_DIM = 1 << 24  # values per row: one row of float64 is then 128 MiB
MAX_FILTER_BYTES = 1 << 30  # an admission filter's memory, split over the shards
MAX_MIN_COUNT = 60000  # the 16-bit counters of the admission filter
INT64_START = -(1 << 63)
TOP_KEYS_MAX = 1000


def _names(*snake: str) -> tuple[str, ...]:
    """Each initializer name as Keras writes it and as its class is named."""
    return tuple(snake) + tuple(
        "".join(w.capitalize() for w in n.split("_")) for n in snake
    )


Number = Annotated[float, Field(allow_inf_nan=False)]
Seed = integer(INT64_START, INT64_END)

# Each family of initializers takes the config keys ``initializers._only``
# allows it (zeros and ones: none).
_FAMILIES: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "Fixed": (_names("zeros", "ones"), {}),
    "Constant": (_names("constant"), {"value": (Number, 0.0)}),
    "Normal": (
        _names("random_normal", "truncated_normal"),
        {"mean": (Number, 0.0), "stddev": (Number, 0.05), "seed": (Seed | None, None)},
    ),
    "Uniform": (
        (*_names("random_uniform"), "uniform"),
        {
            "minval": (Number, -0.05),
            "maxval": (Number, 0.05),
            "seed": (Seed | None, None),
        },
    ),
    "Scaled": (
        _names("glorot_uniform", "glorot_normal", "he_normal", "he_uniform"),
        {"seed": (Seed | None, None)},
    ),
}


def _initializer_model(family: str) -> Any:
    names, fields = _FAMILIES[family]
    config = create_model(f"{family}InitializerArgs", __base__=Strict, **fields)
    return create_model(
        f"{family}InitializerConfig",
        __base__=Strict,
        class_name=(Literal[names], ...),
        config=(config, Field(default_factory=config)),
        module=(Any, Field(None, description="as Keras writes it; ignored")),
        registered_name=(Any, Field(None, description="as Keras writes it; ignored")),
    )


InitializerName = Literal[(*_names(*INITIALIZERS), "uniform", "normal")]
InitializerConfig = Annotated[
    Union[tuple(_initializer_model(f) for f in _FAMILIES)],  # noqa: UP007
    Field(discriminator="class_name"),
]


class CountAdmission(Strict):
    """A key gets a row once pushed ``min_count`` times (a count-min sketch
    of ``filter_bytes`` counts them)."""

    min_count: integer(1, MAX_MIN_COUNT + 1)
    filter_bytes: integer(1024, MAX_FILTER_BYTES + 1) | None = Field(
        None, description=f"default {DEFAULT_FILTER_BYTES}"
    )


class ChanceAdmission(Strict):
    """A key gets a row at each push with probability ``probability``."""

    probability: Annotated[float, Field(gt=0, le=1)]


class EvictionModel(Strict):
    """Which rows go beyond the capacity (``policy``), and rows not updated
    for ``ttl_steps`` steps."""

    policy: Literal[POLICIES] = "lru"
    ttl_steps: integer(1, INT64_END) | None = None


class CreateTableRequest(Strict):
    """A table's name and settings (see the module docstring)."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        # An eviction needs a capacity or ttl_steps.
        json_schema_extra={
            "not": {
                "required": ["eviction"],
                "properties": {
                    "eviction": {
                        "type": "object",
                        "not": {
                            "required": ["ttl_steps"],
                            "properties": {"ttl_steps": {"type": "integer"}},
                        },
                    },
                    "capacity": {"type": "null"},
                },
            }
        },
    )

    name: Name
    dim: integer(1, MAX_TABLE_DIM + 1)
    dtype: Literal["float16", "float32", "float64"] = "float32"
    initializer: InitializerName | InitializerConfig = "zeros"
    seed: Seed = Field(0, description="of the initial rows and admission by chance")
    capacity: integer(1, INT64_END) | None = Field(
        None, description="rows of the whole table at most"
    )
    admission: CountAdmission | ChanceAdmission | None = None
    eviction: EvictionModel | None = None

    @model_validator(mode="after")
    def _eviction_needs_a_bound(self) -> CreateTableRequest:
        if (
            self.eviction is not None
            and self.eviction.ttl_steps is None
            and self.capacity is None
        ):
            raise ValueError(
                "eviction needs a capacity (rows beyond it are evicted by the "
                "policy) or ttl_steps"
            )
        return self

    def config(self) -> dict[str, Any]:
        """The settings as ``ParameterService.create_table`` takes them (and
        as the client sends them over gRPC, so both attach to one table)."""
        initializer = self.initializer
        if not isinstance(initializer, str):
            initializer = initializer.model_dump(exclude_unset=True)
        return {
            "dim": self.dim,
            "dtype": self.dtype,
            "initializer": initializer,
            "seed": self.seed,
            "capacity": self.capacity,
            "admission": None
            if self.admission is None
            else self.admission.model_dump(exclude_none=True),
            "eviction": None if self.eviction is None else self.eviction.model_dump(),
        }


class TopKeyModel(Strict):
    key: int
    updates: int = Field(description="updates applied to the key's row")
    updated: int = Field(description="the step of its last update")


class TableResponse(Strict):
    """A table on this server: its settings, rows, memory and counts."""

    name: str
    dim: int
    dtype: str
    initializer: str | dict[str, Any]
    seed: int
    capacity: int | None
    admission: dict[str, Any] | None
    eviction: dict[str, Any] | None
    size: int = Field(description="rows held: keys admitted and not evicted")
    allocated: int = Field(description="rows allocated")
    bytes: int = Field(description="memory of rows, slots, index and filter")
    bytes_per_row: float
    admitted: int = Field(description="keys given a row so far")
    evicted: int = Field(description="rows evicted so far")
    filtered: int = Field(description="gradients of keys not (yet) admitted")
    latest_step: int = Field(description="the newest step a row shows")
    config: dict[str, Any] = Field(description="the settings, as created")
    created: bool = False
    top_keys: list[TopKeyModel] | None = Field(
        None, description="the keys updated most often, when asked (top_keys=N)"
    )
