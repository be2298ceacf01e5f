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

A peer on the same machine does better still, as HDFS's short-circuit reads
do: the answer also names this server's local socket (a Linux abstract Unix
socket, which only processes in this network namespace can reach: not
another pod). A peer that reaches it sends the ticket and receives the cut's
file itself, an open descriptor passed over the socket (``SCM_RIGHTS``), and
reads the range from the page cache into its arrays: one copy, where a
socket costs two, and no sending thread here. Where the local socket cannot
be reached the peer asks again and uses the port.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("adamax_ps.rescale")

# Answers a connection whose ticket is good, for its file and range.
Serve = Callable[[socket.socket, Path, int, int], None]

TICKET_BYTES = 16
TICKET_SECONDS = 60.0
MAX_TICKETS = 256  # outstanding at once; more are refused (the peer streams)
MAX_SENDERS = 16  # connections served at once; more are closed at once
IDLE_SECONDS = 30.0  # a connection sending no ticket, or taking nothing, is dropped


class DirectReads:
    """The listening port and local socket, their tickets and their
    sending threads."""

    def __init__(
        self,
        host: str,
        port: int = 0,
        sent: Callable[[str, int], None] | None = None,
        local: bool = True,
    ) -> None:
        self._sent = sent or (lambda way, nbytes: None)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        tcp = socket.create_server(
            (host, port),
            family=family,
            backlog=64,
            # "::" takes IPv4 peers too, as the gRPC port does
            dualstack_ipv6=host == "::" and socket.has_dualstack_ipv6(),
        )
        self.port: int = tcp.getsockname()[1]
        self.local = ""  # the local socket's name ("": none)
        self._listening = [(tcp, self._serve)]
        if local:
            try:
                self._listening.append((self._local_socket(), self._hand_over))
            except OSError as e:  # (no abstract sockets: not Linux) peers use TCP
                log.info("no local socket for direct reads: %s", e)
        self._tickets: dict[bytes, tuple[Path, int, int, float]] = {}
        self._lock = threading.Lock()
        self._senders = threading.BoundedSemaphore(MAX_SENDERS)
        self._closed = False
        self._threads = [
            threading.Thread(
                target=self._accept, args=pair, name="direct-reads", daemon=True
            )
            for pair in self._listening
        ]
        for thread in self._threads:
            thread.start()

    def _local_socket(self) -> socket.socket:
        """A Linux abstract Unix socket: no file, gone with the process,
        reachable only from this network namespace (this machine, or pod)."""
        name = f"adamax-ps-cut-{secrets.token_hex(8)}"
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            unix.bind("\0" + name)
            unix.listen(64)
        except OSError:
            unix.close()
            raise
        self.local = name
        return unix

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
        for listening, _ in self._listening:
            with contextlib.suppress(OSError):  # wakes the accepting thread
                listening.shutdown(socket.SHUT_RDWR)
            listening.close()
        for thread in self._threads:
            thread.join(5)

    def _accept(self, listening: socket.socket, serve: Serve) -> None:
        while not self._closed:
            try:
                conn, _ = listening.accept()
            except OSError:
                if self._closed:
                    return
                continue
            if not self._senders.acquire(blocking=False):
                conn.close()  # the peer falls back to the gRPC stream
                continue
            threading.Thread(
                target=self._answer, args=(conn, serve), name="direct-read", daemon=True
            ).start()

    def _answer(self, conn: socket.socket, serve: Serve) -> None:
        try:
            conn.settimeout(IDLE_SECONDS)
            found = self._ticket(conn)
            if found is not None:
                serve(conn, *found)
        except OSError as e:  # the peer went away: it reads the range again
            log.info("direct read ended early: %s", e)
        finally:  # free before the peer sees the end: it may come back at once
            self._senders.release()
            conn.close()

    def _ticket(self, conn: socket.socket) -> tuple[Path, int, int] | None:
        """The range of the ticket the peer sends, if it is good."""
        ticket = _receive(conn, TICKET_BYTES)
        with self._lock:
            found = self._tickets.pop(ticket, None)
        if found is None or found[3] < time.monotonic():
            return None
        return found[:3]

    def _serve(self, conn: socket.socket, path: Path, offset: int, length: int) -> None:
        """TCP: the range's bytes, sent by the kernel from the file."""
        with open(path, "rb") as f:
            sent = conn.sendfile(f, offset, length) if length else 0
        self._sent("direct", sent)
        if sent != length:
            log.warning("direct read of %s: %d of %d bytes", path, sent, length)

    def _hand_over(
        self, conn: socket.socket, path: Path, offset: int, length: int
    ) -> None:
        """The local socket: the file itself, opened for reading (a peer on
        this machine reads the range from it, no copy through a socket). It
        may read the rest of that file too: the cut's files are all its to
        read over gRPC anyway."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            socket.send_fds(conn, [b"f"], [fd])
        finally:
            os.close(fd)
        self._sent("local", length)


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


def read_local(name: str, ticket: bytes, timeout: float) -> int:
    """The file of a ticket's range from a peer's local socket ``name``, as
    an open descriptor (the caller closes it); OSError when the socket is
    not there (another machine or pod) or the ticket is refused."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(timeout)
        conn.connect("\0" + name)
        conn.sendall(ticket)
        _, fds, _, _ = socket.recv_fds(conn, 1, 1)
    finally:
        conn.close()
    if not fds:
        raise ConnectionRefusedError(f"the local socket {name} sent no file")
    return fds[0]
