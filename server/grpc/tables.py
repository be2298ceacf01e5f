"""The hash-keyed table RPCs of ``adamax_ps.v1.ParameterServer`` (a mixin
of the servicer): create, list, describe and export tables."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from adamax_ps.proto.v1 import parameter_server_pb2 as pb
from adamax_ps.server.errors import InvalidArgumentError
from adamax_ps.server.grpc import messages
from adamax_ps.server.service import ParameterService


def table_info(
    service: ParameterService, name: str, created: bool = False, top: int = 0
) -> pb.TableInfo:
    info = service.table_info(name)
    config = service.table(name).config.to_json()
    if top:
        info["top_keys"] = service.top_keys(name, top)
    return pb.TableInfo(
        name=name,
        config_json=json.dumps(config),
        info_json=json.dumps(info),
        created=created,
    )


class TableRpcs:
    """CreateTable, ListTables, DescribeTable, ExportTable."""

    service: ParameterService

    def _create_table(self, request: pb.CreateTableRequest) -> pb.TableInfo:
        self.service.check_view(messages.view(request.view))
        try:
            config: Any = json.loads(request.config_json or "{}")
        except ValueError as e:
            raise InvalidArgumentError(f"config_json is not JSON: {e}") from None
        if not isinstance(config, dict):
            raise InvalidArgumentError("config_json is a JSON object")
        _, created = self.service.create_table(request.name, **config)
        return table_info(self.service, request.name, created)

    def _list_tables(self) -> pb.ListTablesResponse:
        return pb.ListTablesResponse(
            tables=[table_info(self.service, r.name) for r in self.service.tables()]
        )

    def _describe_table(self, request: pb.TableRequest) -> pb.TableInfo:
        return table_info(self.service, request.table, top=request.top_keys)

    def _export_table(self, request: pb.ExportRequest):
        since = request.since if request.HasField("since") else None
        keys, values, evicted, through = self.service.export_table(request.table, since)
        for tensor in (keys, values, evicted, np.array([through], np.int64)):
            yield from messages.tensor_chunks(tensor)
