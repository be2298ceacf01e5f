"""Following a rescale of the cluster: a worker's call that meets one waits
for it to end, takes up the new layout, and is made again.

A server frozen for a rescale refuses changes with ``RescalingError``; once
the rescale is committed, a server addressed with the old view refuses with
``ClusterViewError`` (a retired one too). Either way the worker asks server
0 (the coordinator, server 0 of every layout) until it serves again, then
reconnects to the addresses it names (``Cluster.relayout``) and makes the
call again: a push with the same push id and step, so a push the cut left
half applied is completed, and one applied whole is answered, never applied
twice (``server/inherited.py``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from adamax_ps.client import errors
from adamax_ps.client.connection import parse_addresses

if TYPE_CHECKING:
    from adamax_ps.client.cluster import Cluster
    from adamax_ps.client.transport import ServerInfo

log = logging.getLogger("adamax_ps.client")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

RESCALE_WAIT = 600.0  # seconds a call waits for a rescale to end
FOLLOWING = (errors.RescalingError, errors.ClusterViewError)


def follows_rescale(method: F) -> F:
    """A ``Cluster`` method made again after a rescale it met (see above)."""

    @functools.wraps(method)
    def call(self: Cluster, *args: Any, **kwargs: Any) -> Any:
        return following(self, lambda: method(self, *args, **kwargs))

    return call  # type: ignore[return-value]


def following(cluster: Cluster, call: Callable[[], T]) -> T:
    """``call()``, made again after each rescale it meets, for at most
    ``cluster.rescale_wait`` seconds of waiting in all."""
    follower = Follower(cluster)
    while True:
        try:
            return call()
        except FOLLOWING as met:
            follower.follow(met)


class Follower:
    """One call's following of rescales: ``follow`` returns once the call
    may be made again, or raises what it met."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.before = list(cluster.addresses)
        self.deadline: float | None = None

    def follow(self, met: Exception) -> None:
        cluster = self.cluster
        if self.deadline is None:
            self.deadline = time.monotonic() + cluster.rescale_wait
        if not follow(cluster, self.deadline, met, self.before):
            raise met
        self.before = list(cluster.addresses)

    def moved(self) -> bool:
        """Whether the cluster took up another layout since the call began
        (then or since the last ``follow``); if so, that is the new start."""
        now = list(self.cluster.addresses)
        moved, self.before = now != self.before, now
        return moved


def follow(
    cluster: Cluster, deadline: float, met: Exception, before: list[str]
) -> bool:
    """Wait until server 0 serves, then take up the layout it names. False
    when there is nothing to follow (a view error that no rescale explains)
    or the wait ran out."""
    delay = 0.05
    while True:
        if list(cluster.addresses) != before:
            return True  # another thread of this worker followed it already
        info = None
        with contextlib.suppress(errors.TransportError):  # restarting: ask again
            info = cluster.transports[0].server_info()
        same = False  # server 0 serves the layout this worker has
        if info is not None and info.rescale_state == "serving" and info.ready:
            addresses = _same_transport(info, cluster.addresses)
            if parse_addresses(addresses) != list(cluster.addresses):
                log.info("the cluster was rescaled: now %s", ",".join(addresses))
                cluster.relayout(addresses)
                return True
            # The rescale ended (or was aborted) in the same layout, or
            # another server is still rebuilding its state: the call is made
            # again after a wait; else a view mismatch no rescale explains.
            if not isinstance(met, errors.RescalingError):
                return False
            same = True
        if time.monotonic() + delay > deadline:
            return False
        time.sleep(delay)
        if same:
            return True
        delay = min(delay * 2, 1.0)


def _same_transport(info: ServerInfo, current: list[str]) -> list[str]:
    """The cluster's addresses server 0 names, on the transport the worker
    uses (HTTP when it named them; else its gRPC ones); ``current`` when it
    names none."""
    http = current[0].startswith(("http://", "https://"))
    if http and info.http_addresses:
        return list(info.http_addresses)
    return list(info.addresses) or list(current)
