"""The hash-keyed table calls of ``GrpcTransport`` (a mixin): create, list,
describe, assign rows by key, export. Rows are read with ``read`` (rows are
keys) and pushed with ``apply``, as a variable's."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from adamax_ps.client import errors
from adamax_ps.proto import codec, streams
from adamax_ps.proto.v1 import parameter_server_pb2 as pb

View = tuple[int, int]


def table_info(message: pb.TableInfo) -> dict[str, Any]:
    """A ``TableInfo`` as a dict: config, counts, and ``created``."""
    return {
        **json.loads(message.info_json or "{}"),
        "config": json.loads(message.config_json or "{}"),
        "created": message.created,
    }


class GrpcTableCalls:
    """Table calls over the transport's ``stub`` and ``_call``."""

    stub: Any
    _call: Callable[..., Any]

    def create_table(self, view: View, name: str, config: dict) -> dict[str, Any]:
        response = self._call(
            self.stub.CreateTable,
            lambda: pb.CreateTableRequest(
                view=pb.ClusterView(server_index=view[0], num_servers=view[1]),
                name=name,
                config_json=json.dumps(config),
            ),
        )
        return table_info(response)

    def list_tables(self) -> list[dict[str, Any]]:
        response = self._call(self.stub.ListTables, pb.ListTablesRequest)
        return [table_info(t) for t in response.tables]

    def describe_table(self, name: str, top_keys: int = 0) -> dict[str, Any]:
        response = self._call(
            self.stub.DescribeTable,
            lambda: pb.TableRequest(table=name, top_keys=top_keys),
        )
        return table_info(response)

    def assign_keys(
        self, view: View, name: str, keys: np.ndarray, values: np.ndarray
    ) -> None:
        keys = codec.little_endian(np.ascontiguousarray(keys, dtype=np.int64))
        values = codec.little_endian(np.ascontiguousarray(values))

        def stream() -> Iterator[pb.AssignChunk]:
            yield pb.AssignChunk(
                header=pb.AssignRequest(
                    view=pb.ClusterView(server_index=view[0], num_servers=view[1]),
                    variable=name,
                    value=codec.header(values),
                    keys=codec.header(keys),
                )
            )
            for piece in streams.chunks([values, keys]):
                yield pb.AssignChunk(data=bytes(piece))

        self._call(self.stub.Assign, stream)

    def export_table(
        self, name: str, since: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """``(keys, values, evicted keys, through)`` of the rows held here."""

        def call(request, timeout=None, metadata=()):
            stream = self.stub.ExportTable(request, timeout=timeout, metadata=metadata)
            return list(_tensors(stream))

        tensors = self._call(call, lambda: pb.ExportRequest(table=name, since=since))
        if len(tensors) != 4:
            raise errors.TransportError("an export came with missing tensors")
        keys, values, evicted, through = tensors
        return keys, values, evicted, int(through[0])


def _tensors(stream: Iterator[pb.TensorChunk]) -> Iterator[np.ndarray]:
    """Tensors sent one after another, each a header and its bytes."""
    header, buffer, filled = None, None, 0
    for chunk in stream:
        if chunk.HasField("header"):
            if header is not None:
                yield _finished(header, buffer, filled)
            header = chunk.header
            buffer = np.empty(codec.declared_nbytes(header, 1 << 62), np.uint8)
            filled = 0
            continue
        if header is None or filled + len(chunk.data) > len(buffer):
            raise errors.TransportError("a streamed tensor carried too many bytes")
        buffer[filled : filled + len(chunk.data)] = np.frombuffer(chunk.data, np.uint8)
        filled += len(chunk.data)
    if header is not None:
        yield _finished(header, buffer, filled)


def _finished(header: pb.Tensor, buffer: np.ndarray, filled: int) -> np.ndarray:
    if filled != len(buffer):
        raise errors.TransportError("a streamed tensor ended early")
    return codec.decode(header, memoryview(buffer)).copy()
