"""The HTTP API's models: what ``/openapi.json`` states and the app enforces.

Request models carry the server's own rules (name lengths, integer ranges,
initializer names, the optimizer config's keys), so a client generated from
the schema sends nothing the server refuses; FastAPI checks them before a
handler runs (422). Rules no schema can state (a variable's rows, a body's
framing) stay with the service, and their answers are documented per route.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    create_model,
    model_validator,
)

from adamax_ps.server.initializers import INITIALIZERS
from adamax_ps.server.ledger import MAX_CLIENT_ID
from adamax_ps.server.schedules import SCHEDULE_CLASSES
from adamax_ps.server.validation import MAX_NAME

# Integer ranges end below a power of two: a float spells it exactly, and the
# OpenAPI model holds bounds as floats (see ``standard_bounds``).
INT64_END = 1 << 63
UINT64_END = 1 << 64  # a push's sequence number is a uint64 over gRPC
UINT32_END = 1 << 32  # and its attempt a uint32
MAX_DIMENSIONS = 32  # numpy 1.26's limit on an array's dimensions (2.x: 64)
TOP_K_MAX = 1000  # the most rows /top ranks (Inspector.top_rows)
ROW_NUMBER = "[0-9]{1,18}"  # below 2**62, the largest row number a read may name
ROWS_PATTERN = f"^{ROW_NUMBER}(,{ROW_NUMBER})*$"  # "3,17"


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


def _whole(value: Any) -> Any:
    """JSON has one number type: ``3.0`` is the integer 3, as JSON Schema says."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def integer(low: int, end: int) -> Any:
    """An integer in ``[low, end)`` (a whole float such as 3.0 counts)."""
    return Annotated[int, Field(ge=low, lt=end), BeforeValidator(_whole)]


Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
OptimizerName = Annotated[str, Field(min_length=1)]
Initializer = Literal[  # each name as Keras writes it, or its class's name
    tuple(INITIALIZERS)
    + tuple("".join(w.capitalize() for w in n.split("_")) for n in INITIALIZERS)
]
Iterations = integer(0, INT64_END)
Dimension = integer(0, INT64_END)
SequenceNumber = integer(0, UINT64_END)
Attempt = integer(0, UINT32_END)


# Responses --------------------------------------------------------------------------

# A value read from state: NaN and infinities (a push may make them, when the
# server allows them or hyper-parameters overflow) are null, as JSON has none.
Real = Annotated[float | None, Field(description="null when NaN or infinite")]


class ErrorResponse(Strict):
    error: str = Field(description="the error's class, e.g. VariableNotFoundError")
    message: str


class StatusResponse(Strict):
    status: str
    reason: str | None = Field(None, description="why it is not ready, if known")


class CheckpointStatus(Strict):
    folder: str | None
    last_path: str | None
    last_sequence: int | None
    last_bytes: int | None
    last_seconds: float | None
    age_seconds: float | None


class LimitsModel(Strict):
    memory_limit_bytes: int
    memory_used_bytes: int
    max_inflight_bytes: int
    max_request_rows: int


class ServerResponse(Strict):
    version: str
    server_index: int
    num_servers: int
    shards: int
    replicas: int
    replicas_to_aggregate: int
    ready: bool
    uptime_seconds: float
    resident_bytes: int
    state_bytes: int
    shard_state_bytes: list[int]
    limits: LimitsModel
    writes_stopped: str | None = Field(
        description="why the server refuses changes (fail-stop), or null"
    )
    rescale_state: str = Field(
        description="serving, freezing, frozen or adopted (a rescale under "
        "way), spare (waiting to be taken in) or retired (left the cluster)"
    )
    rebuild_error: str = Field(
        "",
        description="while the state is rebuilt from a rescale's cuts after a "
        "restart: why the last try failed (empty otherwise)",
    )
    addresses: list[str] = Field(
        description="every server's address in server order, once a rescale "
        "has placed this server (else empty)"
    )
    http_addresses: list[str] = Field(
        default_factory=list,
        description="the same servers' HTTP addresses, when the rescale that "
        "placed this server knew them (workers on HTTP follow to these)",
    )
    checkpoint: CheckpointStatus


class WeightRefModel(Strict):
    kind: Literal["iterations", "slot", "weight"]
    variable: str
    name: str


class OptimizerResponse(Strict):
    name: str
    config: dict[str, Any]
    iterations: int
    pushes: int
    push_rate: float | None = Field(description="pushes/s over the sampled history")
    slot_names: list[str]
    weights: list[WeightRefModel]
    created: bool = False


class StatsModel(Strict):
    l2_norm: Real
    min: Real
    max: Real
    mean: Real
    nonzero_rows: int


class PlacementModel(Strict):
    shard: int
    lo: int
    hi: int


class SlotRefModel(Strict):
    optimizer: str
    slot: str


class VariableResponse(Strict):
    name: str
    shape: list[int]
    dtype: str
    global_shape: list[int]
    row_offset: int
    value_bytes: int
    bytes: int
    placement: list[PlacementModel]
    slots: list[SlotRefModel]
    stats: dict[str, StatsModel] | None
    created: bool = False


class ValueResponse(Strict):
    name: str
    shape: list[int]
    dtype: str
    rows: list[int] | None
    values: Any = Field(
        description="nested lists of numbers (null when NaN or infinite), shaped "
        "as `shape`"
    )


class TopRowModel(Strict):
    row: int
    score: Real
    values: list[Real] | None


class TopResponse(Strict):
    variable: str
    optimizer: str
    by: Literal["update", "m"]
    rows: list[TopRowModel]


class HistorySample(Strict):
    time: float
    optimizers: dict[str, dict[str, int]]
    variables: dict[str, dict[str, Real]]
    tables: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="each table's size, admitted, evicted, filtered and bytes",
    )


class HistoryResponse(Strict):
    interval_seconds: float
    samples: list[HistorySample]


class ApplyResponse(Strict):
    step: int
    iterations: int
    # The step handed out for the client's next call (reserve_next).
    next_step: int | None = None


class StepResponse(Strict):
    step: int


class CheckpointResponse(Strict):
    path: str
    sequence: int
    bytes: int
    seconds: float


# Requests ---------------------------------------------------------------------------


def _schedule_model(cls: type[BaseModel]) -> type[BaseModel]:
    """``{"class_name": ..., "config": {...}}`` of one Keras schedule class."""
    return create_model(
        f"{cls.__name__}Schedule",
        __base__=Strict,
        class_name=(Literal[cls.class_name], ...),
        config=(cls, ...),
        module=(Any, Field(None, description="as Keras writes it; ignored")),
        registered_name=(Any, Field(None, description="as Keras writes it; ignored")),
    )


Schedule = Annotated[
    Union[tuple(_schedule_model(cls) for cls in SCHEDULE_CLASSES.values())],  # noqa: UP007
    Field(discriminator="class_name"),
]
LearningRate = float | Schedule
NonNegative = Annotated[float, Field(ge=0)]


class OptimizerConfig(Strict):
    """A Keras 2 Adamax ``get_config()`` (every key optional: Keras's defaults).

    ``clipnorm`` and ``global_clipnorm`` exclude each other; epsilon null or 0
    is 1e-7; ``lr`` is Keras's old name of learning_rate.
    """

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "not": {
                "required": ["clipnorm", "global_clipnorm"],
                "properties": {
                    "clipnorm": {"type": "number"},
                    "global_clipnorm": {"type": "number"},
                },
            }
        },
    )

    name: OptimizerName = "Adamax"
    clipnorm: NonNegative | None = None
    clipvalue: NonNegative | None = None
    global_clipnorm: NonNegative | None = None
    learning_rate: LearningRate = 0.001
    lr: LearningRate | None = Field(None, description="old name of learning_rate")
    decay: NonNegative | None = 0.0
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float | None = 1e-7

    @model_validator(mode="after")
    def _one_clipnorm(self) -> OptimizerConfig:
        if self.clipnorm is not None and self.global_clipnorm is not None:
            raise ValueError("clipnorm and global_clipnorm exclude each other")
        return self

    def to_keras(self) -> dict[str, Any]:
        """The config as the client sent it (keys it left out stay out; a null
        ``lr`` is no ``lr``)."""
        config = self.model_dump(exclude_unset=True)
        if config.get("lr", 0) is None:
            del config["lr"]
        return config


class CreateOptimizerRequest(Strict):
    config: OptimizerConfig = Field(description="an Adamax get_config() dict")


class PushIdModel(Strict):
    client: Annotated[str, Field(min_length=1, max_length=MAX_CLIENT_ID)]
    sequence: SequenceNumber
    attempt: Attempt = Field(0, description="0 when first sent; 1, 2... for retries")


class ReserveStepRequest(Strict):
    variables: list[Name]
    push_id: PushIdModel | None = None


class IterationsRequest(Strict):
    iterations: Iterations


class AddSlotRequest(Strict):
    variable: Name
    slot: Name
    initializer: Initializer = "zeros"


class AddWeightRequest(Strict):
    name: Name
    shape: list[Dimension] = Field(
        [],
        max_length=MAX_DIMENSIONS,
        description="numpy must be able to index it, even when empty: dimensions "
        "multiplying past 2**63 bytes (zeros aside) are a 400, past the state "
        "budget a 507",
    )
    dtype: Literal["float16", "float32", "float64"] = "float32"
    initializer: Initializer = "zeros"
