"""Direct reads of a rescale's cut: file bytes sent by the kernel (sendfile)
on a plain TCP port, beside ``ReadCheckpointFile`` over gRPC.

A gRPC stream of the cut costs a handful of copies of every byte in Python
on both sides; here the sender's bytes go from the page cache to the socket
without entering this process, and the receiver reads them straight into its
arrays. Nothing is decided on this port: a peer asks ``ReadCheckpointFile``
(authenticated, its file and range checked there) with ``direct`` set, and
the answer names this port and a ticket: 16 random bytes good for that one
range, once, for ``TICKET_SECONDS``. The peer connects, sends the ticket,
and reads exactly the range's bytes; an unknown ticket gets the connection
closed, nothing else. A server with TLS offers no direct reads (its cut
would cross the network in the clear), nor one started with
``--transfer-port -1``.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("adamax_ps.rescale")

TICKET_BYTES = 16
TICKET_SECONDS = 60.0
MAX_TICKETS = 256  # outstanding at once; more are refused (the peer streams)
MAX_SENDERS = 16  # connections served at once; more are closed at once
IDLE_SECONDS = 30.0  # a connection sending no ticket, or taking nothing, is dropped


class DirectReads:
    """The listening port, its tickets and its sending threads."""

    def __init__(
        self, host: str, port: int = 0, sent: Callable[[int], None] | None = None
    ) -> None:
        self._sent = sent or (lambda nbytes: None)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server(
            (host, port),
            family=family,
            backlog=64,
            # "::" takes IPv4 peers too, as the gRPC port does
            dualstack_ipv6=host == "::" and socket.has_dualstack_ipv6(),
        )
        self.port: int = self._socket.getsockname()[1]
        self._tickets: dict[bytes, tuple[Path, int, int, float]] = {}
        self._lock = threading.Lock()
        self._senders = threading.BoundedSemaphore(MAX_SENDERS)
        self._closed = False
        self._thread = threading.Thread(
            target=self._accept, name="direct-reads", daemon=True
        )
        self._thread.start()

    def offer(self, path: Path, offset: int, length: int) -> bytes | None:
        """A ticket for bytes ``offset`` to ``offset + length`` of ``path``
        (checked by the caller), or None when too many are outstanding."""
        now = time.monotonic()
        with self._lock:
            for key in [k for k, t in self._tickets.items() if t[3] < now]:
                del self._tickets[key]
            if len(self._tickets) >= MAX_TICKETS:
                return None
            ticket = secrets.token_bytes(TICKET_BYTES)
            self._tickets[ticket] = (path, offset, length, now + TICKET_SECONDS)
            return ticket

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):  # wakes the accepting thread
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._socket.accept()
            except OSError:
                if self._closed:
                    return
                continue
            if not self._senders.acquire(blocking=False):
                conn.close()  # the peer falls back to the gRPC stream
                continue
            threading.Thread(
                target=self._serve, args=(conn,), name="direct-read", daemon=True
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(IDLE_SECONDS)
            ticket = _receive(conn, TICKET_BYTES)
            with self._lock:
                found = self._tickets.pop(ticket, None)
            if found is None or found[3] < time.monotonic():
                return
            path, offset, length, _ = found
            with open(path, "rb") as f:
                sent = conn.sendfile(f, offset, length) if length else 0
            self._sent(sent)
            if sent != length:
                log.warning("direct read of %s: %d of %d bytes", path, sent, length)
        except OSError as e:  # the peer went away: it reads the range again
            log.info("direct read ended early: %s", e)
        finally:  # free before the peer sees the end: it may come back at once
            self._senders.release()
            conn.close()


def _receive(conn: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        more = conn.recv(count - len(data))
        if not more:
            break
        data += more
    return data


def read_direct(host: str, port: int, ticket: bytes, timeout: float) -> socket.socket:
    """A connection to a peer's direct reads, its ticket sent: the range's
    bytes follow (``recv_into``)."""
    conn = socket.create_connection((host, port), timeout=timeout)
    try:
        conn.sendall(ticket)
    except OSError:
        conn.close()
        raise
    return conn
