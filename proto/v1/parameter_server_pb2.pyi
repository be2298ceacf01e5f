from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT64: _ClassVar[DType]
    INT32: _ClassVar[DType]
    INT64: _ClassVar[DType]
    BFLOAT16: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
FLOAT16: DType
FLOAT32: DType
FLOAT64: DType
INT32: DType
INT64: DType
BFLOAT16: DType

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ClusterView(_message.Message):
    __slots__ = ("server_index", "num_servers")
    SERVER_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_SERVERS_FIELD_NUMBER: _ClassVar[int]
    server_index: int
    num_servers: int
    def __init__(self, server_index: _Optional[int] = ..., num_servers: _Optional[int] = ...) -> None: ...

class PushId(_message.Message):
    __slots__ = ("client", "sequence", "attempt")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    client: str
    sequence: int
    attempt: int
    def __init__(self, client: _Optional[str] = ..., sequence: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class Gradient(_message.Message):
    __slots__ = ("variable", "values", "indices")
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    variable: str
    values: Tensor
    indices: Tensor
    def __init__(self, variable: _Optional[str] = ..., values: _Optional[_Union[Tensor, _Mapping]] = ..., indices: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "server_index", "num_servers", "shards", "replicas", "replicas_to_aggregate", "ready", "max_message_bytes", "max_request_rows", "rescale_state", "addresses", "http_addresses")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_SERVERS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_TO_AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_ROWS_FIELD_NUMBER: _ClassVar[int]
    RESCALE_STATE_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    HTTP_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    version: str
    server_index: int
    num_servers: int
    shards: int
    replicas: int
    replicas_to_aggregate: int
    ready: bool
    max_message_bytes: int
    max_request_rows: int
    rescale_state: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    http_addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[str] = ..., server_index: _Optional[int] = ..., num_servers: _Optional[int] = ..., shards: _Optional[int] = ..., replicas: _Optional[int] = ..., replicas_to_aggregate: _Optional[int] = ..., ready: _Optional[bool] = ..., max_message_bytes: _Optional[int] = ..., max_request_rows: _Optional[int] = ..., rescale_state: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ..., http_addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class VariableSpec(_message.Message):
    __slots__ = ("name", "global_shape", "dtype", "row_offset", "rows", "initial_value", "initializer_json", "seed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    ROW_OFFSET_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_VALUE_FIELD_NUMBER: _ClassVar[int]
    INITIALIZER_JSON_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    name: str
    global_shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    row_offset: int
    rows: int
    initial_value: Tensor
    initializer_json: str
    seed: int
    def __init__(self, name: _Optional[str] = ..., global_shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., row_offset: _Optional[int] = ..., rows: _Optional[int] = ..., initial_value: _Optional[_Union[Tensor, _Mapping]] = ..., initializer_json: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class CreateVariablesRequest(_message.Message):
    __slots__ = ("view", "variables")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    view: ClusterView
    variables: _containers.RepeatedCompositeFieldContainer[VariableSpec]
    def __init__(self, view: _Optional[_Union[ClusterView, _Mapping]] = ..., variables: _Optional[_Iterable[_Union[VariableSpec, _Mapping]]] = ...) -> None: ...

class VariableInfo(_message.Message):
    __slots__ = ("name", "shape", "dtype", "global_shape", "row_offset", "created")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_SHAPE_FIELD_NUMBER: _ClassVar[int]
    ROW_OFFSET_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    global_shape: _containers.RepeatedScalarFieldContainer[int]
    row_offset: int
    created: bool
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., global_shape: _Optional[_Iterable[int]] = ..., row_offset: _Optional[int] = ..., created: _Optional[bool] = ...) -> None: ...

class CreateVariablesChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: CreateVariablesRequest
    data: bytes
    def __init__(self, header: _Optional[_Union[CreateVariablesRequest, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class CreateVariablesResponse(_message.Message):
    __slots__ = ("variables",)
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    variables: _containers.RepeatedCompositeFieldContainer[VariableInfo]
    def __init__(self, variables: _Optional[_Iterable[_Union[VariableInfo, _Mapping]]] = ...) -> None: ...

class ListVariablesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListVariablesResponse(_message.Message):
    __slots__ = ("variables",)
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    variables: _containers.RepeatedCompositeFieldContainer[VariableInfo]
    def __init__(self, variables: _Optional[_Iterable[_Union[VariableInfo, _Mapping]]] = ...) -> None: ...

class CreateOptimizerRequest(_message.Message):
    __slots__ = ("view", "config_json")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    view: ClusterView
    config_json: str
    def __init__(self, view: _Optional[_Union[ClusterView, _Mapping]] = ..., config_json: _Optional[str] = ...) -> None: ...

class OptimizerRequest(_message.Message):
    __slots__ = ("optimizer",)
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    optimizer: str
    def __init__(self, optimizer: _Optional[str] = ...) -> None: ...

class WeightRef(_message.Message):
    __slots__ = ("kind", "variable", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: str
    variable: str
    name: str
    def __init__(self, kind: _Optional[str] = ..., variable: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class OptimizerState(_message.Message):
    __slots__ = ("name", "config_json", "iterations", "weights", "slot_names", "created", "pushes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    SLOT_NAMES_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    PUSHES_FIELD_NUMBER: _ClassVar[int]
    name: str
    config_json: str
    iterations: int
    weights: _containers.RepeatedCompositeFieldContainer[WeightRef]
    slot_names: _containers.RepeatedScalarFieldContainer[str]
    created: bool
    pushes: int
    def __init__(self, name: _Optional[str] = ..., config_json: _Optional[str] = ..., iterations: _Optional[int] = ..., weights: _Optional[_Iterable[_Union[WeightRef, _Mapping]]] = ..., slot_names: _Optional[_Iterable[str]] = ..., created: _Optional[bool] = ..., pushes: _Optional[int] = ...) -> None: ...

class ReserveStepRequest(_message.Message):
    __slots__ = ("view", "optimizer", "variables", "push_id")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    PUSH_ID_FIELD_NUMBER: _ClassVar[int]
    view: ClusterView
    optimizer: str
    variables: _containers.RepeatedScalarFieldContainer[str]
    push_id: PushId
    def __init__(self, view: _Optional[_Union[ClusterView, _Mapping]] = ..., optimizer: _Optional[str] = ..., variables: _Optional[_Iterable[str]] = ..., push_id: _Optional[_Union[PushId, _Mapping]] = ...) -> None: ...

class ReserveStepResponse(_message.Message):
    __slots__ = ("step",)
    STEP_FIELD_NUMBER: _ClassVar[int]
    step: int
    def __init__(self, step: _Optional[int] = ...) -> None: ...

class ApplyRequest(_message.Message):
    __slots__ = ("view", "optimizer", "push_id", "gradients", "step", "aggregated", "call_variables", "clipped", "reads", "replica", "reserve_next", "step_reserved_ahead")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    PUSH_ID_FIELD_NUMBER: _ClassVar[int]
    GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    AGGREGATED_FIELD_NUMBER: _ClassVar[int]
    CALL_VARIABLES_FIELD_NUMBER: _ClassVar[int]
    CLIPPED_FIELD_NUMBER: _ClassVar[int]
    READS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    RESERVE_NEXT_FIELD_NUMBER: _ClassVar[int]
    STEP_RESERVED_AHEAD_FIELD_NUMBER: _ClassVar[int]
    view: ClusterView
    optimizer: str
    push_id: PushId
    gradients: _containers.RepeatedCompositeFieldContainer[Gradient]
    step: int
    aggregated: bool
    call_variables: _containers.RepeatedScalarFieldContainer[str]
    clipped: bool
    reads: _containers.RepeatedCompositeFieldContainer[ReadRequest]
    replica: int
    reserve_next: bool
    step_reserved_ahead: bool
    def __init__(self, view: _Optional[_Union[ClusterView, _Mapping]] = ..., optimizer: _Optional[str] = ..., push_id: _Optional[_Union[PushId, _Mapping]] = ..., gradients: _Optional[_Iterable[_Union[Gradient, _Mapping]]] = ..., step: _Optional[int] = ..., aggregated: _Optional[bool] = ..., call_variables: _Optional[_Iterable[str]] = ..., clipped: _Optional[bool] = ..., reads: _Optional[_Iterable[_Union[ReadRequest, _Mapping]]] = ..., replica: _Optional[int] = ..., reserve_next: _Optional[bool] = ..., step_reserved_ahead: _Optional[bool] = ...) -> None: ...

class ApplyResponse(_message.Message):
    __slots__ = ("step", "iterations", "values", "next_step")
    STEP_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    NEXT_STEP_FIELD_NUMBER: _ClassVar[int]
    step: int
    iterations: int
    values: _containers.RepeatedCompositeFieldContainer[Tensor]
    next_step: int
    def __init__(self, step: _Optional[int] = ..., iterations: _Optional[int] = ..., values: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., next_step: _Optional[int] = ...) -> None: ...

class ApplyChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: ApplyRequest
    data: bytes
    def __init__(self, header: _Optional[_Union[ApplyRequest, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ReadRequest(_message.Message):
    __slots__ = ("variable", "optimizer", "slot", "rows", "weight", "wire_dtype", "view")
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIRE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    variable: str
    optimizer: str
    slot: str
    rows: Tensor
    weight: str
    wire_dtype: DType
    view: ClusterView
    def __init__(self, variable: _Optional[str] = ..., optimizer: _Optional[str] = ..., slot: _Optional[str] = ..., rows: _Optional[_Union[Tensor, _Mapping]] = ..., weight: _Optional[str] = ..., wire_dtype: _Optional[_Union[DType, str]] = ..., view: _Optional[_Union[ClusterView, _Mapping]] = ...) -> None: ...

class TensorChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: Tensor
    data: bytes
    def __init__(self, header: _Optional[_Union[Tensor, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class AssignRequest(_message.Message):
    __slots__ = ("view", "variable", "optimizer", "slot", "value", "weight", "keys")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    view: ClusterView
    variable: str
    optimizer: str
    slot: str
    value: Tensor
    weight: str
    keys: Tensor
    def __init__(self, view: _Optional[_Union[ClusterView, _Mapping]] = ..., variable: _Optional[str] = ..., optimizer: _Optional[str] = ..., slot: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ..., weight: _Optional[str] = ..., keys: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class AssignChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: AssignRequest
    data: bytes
    def __init__(self, header: _Optional[_Union[AssignRequest, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class AssignResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetIterationsRequest(_message.Message):
    __slots__ = ("view", "optimizer", "iterations")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    view: ClusterView
    optimizer: str
    iterations: int
    def __init__(self, view: _Optional[_Union[ClusterView, _Mapping]] = ..., optimizer: _Optional[str] = ..., iterations: _Optional[int] = ...) -> None: ...

class AddSlotRequest(_message.Message):
    __slots__ = ("view", "optimizer", "variable", "slot", "initializer")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    INITIALIZER_FIELD_NUMBER: _ClassVar[int]
    view: ClusterView
    optimizer: str
    variable: str
    slot: str
    initializer: str
    def __init__(self, view: _Optional[_Union[ClusterView, _Mapping]] = ..., optimizer: _Optional[str] = ..., variable: _Optional[str] = ..., slot: _Optional[str] = ..., initializer: _Optional[str] = ...) -> None: ...

class AddWeightRequest(_message.Message):
    __slots__ = ("view", "optimizer", "name", "shape", "dtype", "initializer")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    INITIALIZER_FIELD_NUMBER: _ClassVar[int]
    view: ClusterView
    optimizer: str
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    initializer: str
    def __init__(self, view: _Optional[_Union[ClusterView, _Mapping]] = ..., optimizer: _Optional[str] = ..., name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., initializer: _Optional[str] = ...) -> None: ...

class AddWeightResponse(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: Tensor
    def __init__(self, value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class CheckpointRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CheckpointResponse(_message.Message):
    __slots__ = ("path", "sequence", "bytes", "seconds")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    path: str
    sequence: int
    bytes: int
    seconds: float
    def __init__(self, path: _Optional[str] = ..., sequence: _Optional[int] = ..., bytes: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class RescaleRequest(_message.Message):
    __slots__ = ("phase", "rescale_id", "server_index", "num_servers", "addresses", "old_addresses", "split_bytes", "timeout_seconds", "http_addresses")
    class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PHASE_UNSPECIFIED: _ClassVar[RescaleRequest.Phase]
        STATUS: _ClassVar[RescaleRequest.Phase]
        FREEZE: _ClassVar[RescaleRequest.Phase]
        ADOPT: _ClassVar[RescaleRequest.Phase]
        COMMIT: _ClassVar[RescaleRequest.Phase]
        ABORT: _ClassVar[RescaleRequest.Phase]
        SETTLE: _ClassVar[RescaleRequest.Phase]
        RELEASE: _ClassVar[RescaleRequest.Phase]
    PHASE_UNSPECIFIED: RescaleRequest.Phase
    STATUS: RescaleRequest.Phase
    FREEZE: RescaleRequest.Phase
    ADOPT: RescaleRequest.Phase
    COMMIT: RescaleRequest.Phase
    ABORT: RescaleRequest.Phase
    SETTLE: RescaleRequest.Phase
    RELEASE: RescaleRequest.Phase
    PHASE_FIELD_NUMBER: _ClassVar[int]
    RESCALE_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_SERVERS_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    OLD_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    SPLIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HTTP_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    phase: RescaleRequest.Phase
    rescale_id: str
    server_index: int
    num_servers: int
    addresses: _containers.RepeatedScalarFieldContainer[str]
    old_addresses: _containers.RepeatedScalarFieldContainer[str]
    split_bytes: int
    timeout_seconds: float
    http_addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, phase: _Optional[_Union[RescaleRequest.Phase, str]] = ..., rescale_id: _Optional[str] = ..., server_index: _Optional[int] = ..., num_servers: _Optional[int] = ..., addresses: _Optional[_Iterable[str]] = ..., old_addresses: _Optional[_Iterable[str]] = ..., split_bytes: _Optional[int] = ..., timeout_seconds: _Optional[float] = ..., http_addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class RescaleStatus(_message.Message):
    __slots__ = ("rescale_id", "state", "server_index", "num_servers", "cut_sequence", "addresses", "old_num_servers", "settling", "rebuilding", "http_port", "http_tls", "rebuild_error")
    RESCALE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SERVER_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_SERVERS_FIELD_NUMBER: _ClassVar[int]
    CUT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    OLD_NUM_SERVERS_FIELD_NUMBER: _ClassVar[int]
    SETTLING_FIELD_NUMBER: _ClassVar[int]
    REBUILDING_FIELD_NUMBER: _ClassVar[int]
    HTTP_PORT_FIELD_NUMBER: _ClassVar[int]
    HTTP_TLS_FIELD_NUMBER: _ClassVar[int]
    REBUILD_ERROR_FIELD_NUMBER: _ClassVar[int]
    rescale_id: str
    state: str
    server_index: int
    num_servers: int
    cut_sequence: int
    addresses: _containers.RepeatedScalarFieldContainer[str]
    old_num_servers: int
    settling: bool
    rebuilding: bool
    http_port: int
    http_tls: bool
    rebuild_error: str
    def __init__(self, rescale_id: _Optional[str] = ..., state: _Optional[str] = ..., server_index: _Optional[int] = ..., num_servers: _Optional[int] = ..., cut_sequence: _Optional[int] = ..., addresses: _Optional[_Iterable[str]] = ..., old_num_servers: _Optional[int] = ..., settling: _Optional[bool] = ..., rebuilding: _Optional[bool] = ..., http_port: _Optional[int] = ..., http_tls: _Optional[bool] = ..., rebuild_error: _Optional[str] = ...) -> None: ...

class CheckpointFileRequest(_message.Message):
    __slots__ = ("sequence", "file", "offset", "length", "direct")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    DIRECT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    file: str
    offset: int
    length: int
    direct: bool
    def __init__(self, sequence: _Optional[int] = ..., file: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., direct: _Optional[bool] = ...) -> None: ...

class CheckpointFileChunk(_message.Message):
    __slots__ = ("sequence", "data", "direct_port", "ticket", "local_socket")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DIRECT_PORT_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    LOCAL_SOCKET_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    data: bytes
    direct_port: int
    ticket: bytes
    local_socket: str
    def __init__(self, sequence: _Optional[int] = ..., data: _Optional[bytes] = ..., direct_port: _Optional[int] = ..., ticket: _Optional[bytes] = ..., local_socket: _Optional[str] = ...) -> None: ...

class CreateTableRequest(_message.Message):
    __slots__ = ("view", "name", "config_json")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    view: ClusterView
    name: str
    config_json: str
    def __init__(self, view: _Optional[_Union[ClusterView, _Mapping]] = ..., name: _Optional[str] = ..., config_json: _Optional[str] = ...) -> None: ...

class TableInfo(_message.Message):
    __slots__ = ("name", "config_json", "info_json", "created")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    INFO_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    name: str
    config_json: str
    info_json: str
    created: bool
    def __init__(self, name: _Optional[str] = ..., config_json: _Optional[str] = ..., info_json: _Optional[str] = ..., created: _Optional[bool] = ...) -> None: ...

class ListTablesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTablesResponse(_message.Message):
    __slots__ = ("tables",)
    TABLES_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedCompositeFieldContainer[TableInfo]
    def __init__(self, tables: _Optional[_Iterable[_Union[TableInfo, _Mapping]]] = ...) -> None: ...

class TableRequest(_message.Message):
    __slots__ = ("table", "top_keys")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    TOP_KEYS_FIELD_NUMBER: _ClassVar[int]
    table: str
    top_keys: int
    def __init__(self, table: _Optional[str] = ..., top_keys: _Optional[int] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ("table", "since")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    table: str
    since: int
    def __init__(self, table: _Optional[str] = ..., since: _Optional[int] = ...) -> None: ...
