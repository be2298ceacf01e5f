"""The server's error hierarchy and its one mapping to gRPC codes and HTTP statuses.

Domain code raises these; the transports translate ``code`` (a gRPC status
code name) and ``http_status`` without knowing the domain. Anything else that
escapes is an internal error (INTERNAL / 500), logged with its traceback.
Messages state the rule, then the value received.
"""

from __future__ import annotations

from typing import ClassVar


class ParameterServerError(Exception):
    """Base of every error the server reports to a client."""

    code: ClassVar[str] = "INTERNAL"
    http_status: ClassVar[int] = 500


class InvalidArgumentError(ParameterServerError):
    """Bad input: shape, dtype, index, value, or malformed request."""

    code = "INVALID_ARGUMENT"
    http_status = 400


class NotFoundError(ParameterServerError):
    """A named thing does not exist."""

    code = "NOT_FOUND"
    http_status = 404


class VariableNotFoundError(NotFoundError):
    """No variable of that name."""


class OptimizerNotFoundError(NotFoundError):
    """No optimizer of that name."""


class SlotNotFoundError(NotFoundError):
    """The optimizer has no such slot for that variable (yet)."""


class AlreadyExistsError(ParameterServerError):
    """A thing exists with other properties than asked for."""

    code = "ALREADY_EXISTS"
    http_status = 409


class VariableExistsError(AlreadyExistsError):
    """A variable exists with another shape or dtype."""


class OptimizerExistsError(AlreadyExistsError):
    """An optimizer exists with another config."""


class FailedPreconditionError(ParameterServerError):
    """The request is well formed but the server's state refuses it."""

    code = "FAILED_PRECONDITION"
    http_status = 409


class ClusterViewError(FailedPreconditionError):
    """The sender addressed this server as another index, or another cluster
    size, than it is (a worker holding a view from before a rescale)."""


class RescalingError(ParameterServerError):
    """A rescale is under way (``adamax-ps rescale``): no change is taken
    until it ends; the worker waits, then follows the new layout."""

    code = "UNAVAILABLE"
    http_status = 503


class StalePushError(FailedPreconditionError):
    """A synchronous push for a step that was already applied (or dropped)."""


class PushTooOldError(FailedPreconditionError):
    """A retried push id older than the exactly-once memory: it may have been
    applied, so it is refused rather than risk applying it twice."""


class SyncTimeoutError(ParameterServerError):
    """Synchronous mode waited too long for the other replicas of a step."""

    code = "DEADLINE_EXCEEDED"
    http_status = 504


class CheckpointError(ParameterServerError):
    """A checkpoint cannot be written or read (corrupt, unknown format, I/O)."""

    code = "FAILED_PRECONDITION"
    http_status = 500


class UnauthenticatedError(ParameterServerError):
    """A missing or wrong token on a call that needs one."""

    code = "UNAUTHENTICATED"
    http_status = 401


class WritesStoppedError(ParameterServerError):
    """The server stopped accepting changes (fail-stop): its write-ahead log
    could not be written or synced, so nothing more can be made durable.
    Reads keep working; a restart recovers every acknowledged change."""

    code = "UNAVAILABLE"
    http_status = 503


class ResourceExhaustedError(ParameterServerError):
    """A request over one of the server's limits (rows, bytes, elements)."""

    code = "RESOURCE_EXHAUSTED"
    http_status = 413


class MemoryBudgetError(ResourceExhaustedError):
    """Creating this state would take the server over ``--memory-limit``."""

    http_status = 507


class ServerBusyError(ParameterServerError):
    """The requests in flight already hold the server's byte budget for
    request bodies; retry shortly."""

    code = "UNAVAILABLE"
    http_status = 503
