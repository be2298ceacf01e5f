"""Bearer tokens and TLS for both transports.

Mutating calls need ``Authorization: Bearer <token>`` (gRPC metadata or HTTP
header) when a token is configured; with ``auth_reads`` every call does. The
comparison is constant-time (``hmac.compare_digest``). TLS uses a certificate
and key from files for gRPC and HTTP alike.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

import grpc

from adamax_ps.server.errors import UnauthenticatedError

TOKEN_ENV = "ADAMAX_PS_TOKEN"

# gRPC methods that change state; reads are the others.
MUTATING_METHODS = frozenset(
    {
        "CreateVariables",
        "CreateVariablesStream",
        "CreateOptimizer",
        "CreateIterations",
        "ReserveStep",
        "ApplyGradients",
        "ApplyGradientsStream",
        "Assign",
        "SetIterations",
        "AddSlot",
        "AddWeight",
        "Checkpoint",
        "CreateTable",
        # A rescale's phases, and a peer reading a whole cut: the servers'
        # own calls, with their shared token.
        "Rescale",
        "ReadCheckpointFile",
    }
)


def load_token(token_file: Path | None) -> str | None:
    """The token from ``token_file`` (stripped), else ``ADAMAX_PS_TOKEN``, else None."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as e:
            raise SystemExit(
                f"adamax-ps: cannot read --token-file {token_file}: {e}"
            ) from None
        if not token:
            raise SystemExit(f"adamax-ps: --token-file {token_file} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


class TokenCheck:
    """Checks ``Authorization`` values against the configured token."""

    def __init__(self, token: str | None, auth_reads: bool = False) -> None:
        self._expected = f"Bearer {token}".encode() if token else None
        self.auth_reads = auth_reads

    @property
    def enabled(self) -> bool:
        return self._expected is not None

    def required(self, mutating: bool) -> bool:
        return self.enabled and (mutating or self.auth_reads)

    def check(self, authorization: str | None, mutating: bool) -> None:
        """Raise ``UnauthenticatedError`` unless the call may proceed."""
        if not self.required(mutating):
            return
        given = (authorization or "").encode()
        if not hmac.compare_digest(given, self._expected):
            raise UnauthenticatedError(
                "a valid bearer token is required: send 'Authorization: Bearer <token>'"
            )


class GrpcTokenInterceptor(grpc.ServerInterceptor):
    """Refuses gRPC calls without the token (health and reflection stay open)."""

    def __init__(self, tokens: TokenCheck, service_name: str) -> None:
        self.tokens = tokens
        self.prefix = f"/{service_name}/"

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if not self.tokens.enabled or not method.startswith(self.prefix):
            return continuation(handler_call_details)
        name = method[len(self.prefix) :]
        metadata = dict(handler_call_details.invocation_metadata or ())
        handler = continuation(handler_call_details)
        try:
            self.tokens.check(metadata.get("authorization"), name in MUTATING_METHODS)
        except UnauthenticatedError as e:
            return _deny(handler, str(e))
        return handler


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that refuses the call."""

    def abort(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    options = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, **options)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **options)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, **options)
    return grpc.unary_unary_rpc_method_handler(abort, **options)


def server_credentials(cert: Path, key: Path) -> grpc.ServerCredentials:
    try:
        pair = (Path(key).read_bytes(), Path(cert).read_bytes())
    except OSError as e:
        raise SystemExit(
            f"adamax-ps: cannot read TLS certificate or key: {e}"
        ) from None
    return grpc.ssl_server_credentials([pair])
