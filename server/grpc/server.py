"""The gRPC server of one process: our service with its chunk parsing, the
standard health and reflection services, and the transport's settings."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from adamax_ps.proto import streams
from adamax_ps.proto.v1 import parameter_server_pb2 as pb
from adamax_ps.proto.v1 import parameter_server_pb2_grpc as pb_grpc
from adamax_ps.proto.wire import MESSAGE_LIMIT
from adamax_ps.server.grpc.servicer import ParameterServerServicer
from adamax_ps.server.service import ParameterService

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ParameterServer"].full_name
# Bytes gRPC reads ahead on each stream before its handler asks for them. With
# the default bandwidth-delay probing the window grows to megabytes, so
# streams waiting for the in-flight budget were buffered whole by gRPC
# itself (16 waiting 3 MB pushes grew the server by 74 MB); a fixed 1 MB
# window bounds that to 1 MB a stream and moved 64 MB pushes as fast.
READ_AHEAD = 1 << 20


class GrpcServer:
    """A running gRPC server with our service, health and reflection."""

    def __init__(self, server: grpc.Server, port: int, servicer, health_servicer):
        self.server = server
        self.port = port
        self.servicer = servicer
        self.health = health_servicer

    def set_ready(self, ready: bool) -> None:
        """Serve SERVING (or NOT_SERVING) on the health service."""
        self.servicer.ready = ready
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def stop(self, grace: float | None) -> None:
        self.set_ready(False)
        self.server.stop(grace).wait()


class _ChunkParsing:
    """Registers the generated handlers with our deserializers: streamed
    chunks' bytes parsed without protobuf (``streams.chunk_parser``: one copy
    fewer per chunk), and a message that does not parse handed to the handler
    as ``streams.Malformed`` (answered INVALID_ARGUMENT, not INTERNAL)."""

    STREAMS: ClassVar[dict] = {
        "ApplyGradientsStream": pb.ApplyChunk,
        "Assign": pb.AssignChunk,
        "CreateVariablesStream": pb.CreateVariablesChunk,
    }

    def __init__(self, server: grpc.Server) -> None:
        self.server = server

    def add_generic_rpc_handlers(self, handlers) -> None:
        """Superseded by ``add_registered_method_handlers`` below."""

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        for name, handler in list(handlers.items()):
            options = {"response_serializer": handler.response_serializer}
            if name in self.STREAMS:
                handlers[name] = grpc.stream_unary_rpc_method_handler(
                    handler.stream_unary,
                    request_deserializer=streams.chunk_parser(self.STREAMS[name]),
                    **options,
                )
                continue
            options["request_deserializer"] = streams.safe_parser(
                handler.request_deserializer
            )
            if handler.response_streaming:
                handlers[name] = grpc.unary_stream_rpc_method_handler(
                    handler.unary_stream, **options
                )
            else:
                handlers[name] = grpc.unary_unary_rpc_method_handler(
                    handler.unary_unary, **options
                )
        generic = grpc.method_handlers_generic_handler(service, handlers)
        self.server.add_generic_rpc_handlers((generic,))
        self.server.add_registered_method_handlers(service, handlers)


def create_grpc_server(
    service: ParameterService,
    address: str,
    *,
    max_request_bytes: int = 1 << 31,
    workers: int = 32,
    interceptors: tuple = (),
    credentials: grpc.ServerCredentials | None = None,
    buffers: streams.BufferPool | None = None,
    version: str = "unknown",
) -> GrpcServer:
    """Build and start a gRPC server on ``address`` ("host:0" picks a port).

    Unary messages are limited to 64 MB (larger pushes stream in chunks);
    streamed requests to ``max_request_bytes``, received into ``buffers``.
    """
    sync = service.settings.sync
    workers = max(workers, 2 * (sync.replicas if sync else 0) + 8)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", MESSAGE_LIMIT),
            ("grpc.max_send_message_length", MESSAGE_LIMIT),
            ("grpc.so_reuseport", 0),
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", READ_AHEAD),
        ],
    )
    servicer = ParameterServerServicer(service, max_request_bytes, buffers, version)
    pb_grpc.add_ParameterServerServicer_to_server(servicer, _ChunkParsing(server))
    health_servicer = health.HealthServicer(
        experimental_non_blocking=True,
        experimental_thread_pool=ThreadPoolExecutor(max_workers=2),
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {address} (port in use?)")
    server.start()
    result = GrpcServer(server, port, servicer, health_servicer)
    result.set_ready(False)
    return result
