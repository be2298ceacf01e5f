"""Errors a worker sees: the server's error names, and one family for transport.

They mirror ``adamax_ps.server.errors`` and also derive from the Python
exception Keras code expects: ``InvalidArgumentError`` and
``AlreadyExistsError`` are ``ValueError``s, ``NotFoundError`` is a
``LookupError``, ``SyncTimeoutError`` a ``TimeoutError``. Every failure to
reach a server, after the bounded retries, is a ``TransportError``. User code
never sees ``grpc.RpcError`` or an HTTP error.
"""

from __future__ import annotations


class ParameterServerError(Exception):
    """Base of every error about a parameter server."""


class InvalidArgumentError(ParameterServerError, ValueError):
    """The server refused the request's content (shape, dtype, index, value)."""


class NotFoundError(ParameterServerError, LookupError):
    """A named thing does not exist on the server."""


class VariableNotFoundError(NotFoundError):
    pass


class OptimizerNotFoundError(NotFoundError):
    pass


class SlotNotFoundError(NotFoundError):
    pass


class AlreadyExistsError(ParameterServerError, ValueError):
    """A thing exists with other properties (shape, dtype, config) than asked."""


class VariableExistsError(AlreadyExistsError):
    pass


class OptimizerExistsError(AlreadyExistsError):
    pass


class FailedPreconditionError(ParameterServerError, RuntimeError):
    """The server's state refuses the request (e.g. a cluster view mismatch)."""


class ClusterViewError(FailedPreconditionError):
    """The servers do not form the cluster the client was given."""


class StalePushError(FailedPreconditionError):
    """Synchronous mode: the push's step was already applied (or dropped)."""


class PushTooOldError(FailedPreconditionError):
    """A retried push older than the server's exactly-once memory."""


class CheckpointError(ParameterServerError):
    """A checkpoint could not be written or read."""


class SyncTimeoutError(ParameterServerError, TimeoutError):
    """Synchronous mode: the other replicas of a step did not arrive in time."""


class UnauthenticatedError(ParameterServerError, PermissionError):
    """A missing or wrong token."""


class ServerInternalError(ParameterServerError):
    """The server failed unexpectedly (reported as INTERNAL)."""


class WritesStoppedError(ParameterServerError, RuntimeError):
    """The server stopped accepting changes (its write-ahead log failed):
    reads still work; restarting it recovers every acknowledged change."""


class ResourceExhaustedError(ParameterServerError, ValueError):
    """A request over one of the server's limits (rows, bytes, values)."""


class MemoryBudgetError(ResourceExhaustedError, MemoryError):
    """Creating this would take the server over its memory limit."""


class TransportError(ParameterServerError, ConnectionError):
    """A server could not be reached or did not answer, after bounded retries."""


class ServerBusyError(TransportError):
    """The server's budget for requests in flight stayed full through the
    retries."""


class RescalingError(TransportError):
    """A rescale of the cluster is under way: the server takes no change
    until it ends (a ``Cluster`` waits for it and follows the new layout)."""


class MessageTooLargeError(ResourceExhaustedError, TransportError):
    """A request or answer exceeded a message size limit (the server's
    ``--max-request-bytes``, or a gRPC message limit): a resource limit, so
    ``except ResourceExhaustedError`` catches every request too large."""


# The server's error class names (sent as trailing metadata) to ours.
BY_NAME: dict[str, type[ParameterServerError]] = {
    cls.__name__: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        VariableNotFoundError,
        OptimizerNotFoundError,
        SlotNotFoundError,
        AlreadyExistsError,
        VariableExistsError,
        OptimizerExistsError,
        FailedPreconditionError,
        StalePushError,
        PushTooOldError,
        CheckpointError,
        SyncTimeoutError,
        UnauthenticatedError,
        WritesStoppedError,
        ResourceExhaustedError,
        MemoryBudgetError,
        ServerBusyError,
        ClusterViewError,
        RescalingError,
    )
}
# Refusals that retrying cannot help, though their status says "unavailable".
# (A rescale is waited for by the cluster, not the transport's retries.)
FINAL = frozenset({"WritesStoppedError", "RescalingError"})
