"""Constants of the wire protocol, shared by the servers and the clients."""

from __future__ import annotations

API = "/api/v1"  # the HTTP API's path prefix
VIEW_HEADER = "x-adamax-ps-view"  # HTTP: the sender's view, "index/servers"
ERROR_KEY = "adamax-ps-error"  # gRPC trailing metadata: the domain error's name
MESSAGE_LIMIT = 64 << 20  # gRPC messages; larger requests and answers stream
INLINE_READ_BYTES = 4 << 20  # gRPC ReadInline answers; larger reads stream
