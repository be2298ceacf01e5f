"""How each RPC handler runs: its request counted, a malformed message
refused, and every error it raises mapped to a gRPC status (``_mapped``).

A domain error ends the call with its class's status code and message, its
class name in the trailing metadata (``ERROR_KEY``: the client raises the
same class); a malformed message or tensor is INVALID_ARGUMENT, one over the
size limit RESOURCE_EXHAUSTED; anything unexpected is INTERNAL, logged with
its traceback.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc
import numpy as np

from adamax_ps.proto import codec, streams
from adamax_ps.proto.v1 import parameter_server_pb2 as pb
from adamax_ps.proto.wire import ERROR_KEY, INLINE_READ_BYTES
from adamax_ps.server.errors import ParameterServerError, ResourceExhaustedError

log = logging.getLogger("adamax_ps.grpc")

# Answered while a rescale rebuilds this server's state (every other call is
# RescalingError then): its place, the driver, and peers reading its cut.
WHILE_REBUILDING = frozenset({"GetServerInfo", "Rescale", "ReadCheckpointFile"})


@contextmanager
def mapped(context: grpc.ServicerContext, method: str) -> Iterator[None]:
    """Run a handler's body with every error it raises mapped to a status."""
    try:
        yield
    except codec.TooLargeError as e:
        limit = ResourceExhaustedError(f"{e} (this server's --max-request-bytes)")
        _abort(context, limit)
    except (ParameterServerError, codec.CodecError) as e:
        _abort(context, e)
    except grpc.RpcError:
        raise
    except Exception:
        if context.code() is not None:  # already aborted on purpose
            raise
        log.exception("internal error in %s", method)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")


def _abort(context: grpc.ServicerContext, e: Exception) -> None:
    if isinstance(e, ParameterServerError):
        context.set_trailing_metadata(((ERROR_KEY, type(e).__name__),))
        context.abort(grpc.StatusCode[e.code], str(e))
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))


def unary(method: Callable) -> Callable:
    """A handler answering one message, its errors mapped."""
    admit = _admission(method.__name__)

    @functools.wraps(method)
    def handler(self, request, context):
        self.service.metrics.requests.labels("grpc", method.__name__).inc()
        with mapped(context, method.__name__):
            admit(self.service, request)
            return method(self, request, context)

    return handler


def server_streaming(method: Callable) -> Callable:
    """A handler answering a stream, its errors mapped (before its first
    message, as gRPC sends them)."""
    admit = _admission(method.__name__)

    @functools.wraps(method)
    def handler(self, request, context):
        self.service.metrics.requests.labels("grpc", method.__name__).inc()
        with mapped(context, method.__name__):
            admit(self.service, request)
            yield from method(self, request, context)

    return handler


def _admission(name: str) -> Callable[[object, object], None]:
    """What a handler checks before its body: the request parsed, and (but
    for the calls answered while rebuilding) the state whole."""
    if name in WHILE_REBUILDING:
        return lambda service, request: check_parsed(request)

    def admit(service, request) -> None:
        check_parsed(request)
        service.rescale.check_reads()

    return admit


def inline(value: np.ndarray) -> pb.Tensor:
    if value.nbytes > INLINE_READ_BYTES:
        raise ResourceExhaustedError(
            f"a value of {value.nbytes} bytes is over ReadInline's "
            f"{INLINE_READ_BYTES} bytes: read it with Read, which streams"
        )
    return codec.encode(value)


def check_parsed(request: object) -> None:
    if isinstance(request, streams.Malformed):
        raise codec.CodecError(request.error)
