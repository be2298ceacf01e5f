"""Reading another server's checkpoint over gRPC (``ReadCheckpointFile``),
checked as a local one is: how a server of a resized cluster takes its rows
of the old servers' cuts when each server has a volume of its own.

``RemoteCheckpointReader`` is a ``CheckpointReader`` whose files are another
server's: the manifest and its crc32 come first, then each array's bytes
stream in chunks straight into their targets, every byte checked against the
manifest's crc32 as locally. Over plain gRPC an array's bytes come by a
direct read when the peer offers one (``server/cut_transfer.py``): from the
peer's file itself when it is on this machine (its descriptor handed over
its local socket), else by sendfile on its transfer port, read straight into
the targets; a peer that offers none, or whose direct port cannot be
reached, streams them over gRPC.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import socket
from collections.abc import Iterator

import grpc

from adamax_ps.proto.v1 import parameter_server_pb2 as pb
from adamax_ps.proto.v1 import parameter_server_pb2_grpc as pb_grpc
from adamax_ps.proto.wire import MESSAGE_LIMIT
from adamax_ps.server.checkpoint import CheckpointReader
from adamax_ps.server.cut_transfer import read_direct, read_local
from adamax_ps.server.errors import CheckpointError

log = logging.getLogger("adamax_ps.rescale")

GRPC_SCHEME = "grpc://"
CONNECT_SECONDS = 10.0  # to a peer's direct port; then its bytes come over gRPC


def target(address: str) -> str:
    """``host:port`` of a ``grpc://host:port`` address (or a bare one)."""
    return address[len(GRPC_SCHEME) :] if address.startswith(GRPC_SCHEME) else address


class RemoteCheckpointReader(CheckpointReader):
    """Checkpoint ``sequence`` of the server at ``address`` (0: the cut of
    the rescale it is frozen for), over TLS with ``credentials``."""

    def __init__(
        self,
        address: str,
        sequence: int = 0,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ):
        self.address = address
        options = [
            ("grpc.max_receive_message_length", MESSAGE_LIMIT),
            ("grpc.max_send_message_length", MESSAGE_LIMIT),
        ]
        self.channel = (
            grpc.secure_channel(target(address), credentials, options=options)
            if credentials is not None
            else grpc.insecure_channel(target(address), options=options)
        )
        self.stub = pb_grpc.ParameterServerStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.sequence = sequence
        # Direct reads travel in the clear: only where gRPC does too.
        self.direct = credentials is None
        self.local = True  # until the peer's local socket proves out of reach
        first = self._chunks("manifest.json", 0, 0)
        head = next(first, None)
        if head is None:
            raise CheckpointError(f"{address} sent no manifest")
        self.sequence = head.sequence  # the cut's own number from here on
        self._manifest_bytes = head.data + b"".join(c.data for c in first)
        self.path = f"{address}/ckpt-{self.sequence:06d}"
        self._load_manifest()

    def close(self) -> None:
        self.channel.close()

    def _chunks(
        self, name: str, offset: int, length: int, direct: bool = False
    ) -> Iterator[pb.CheckpointFileChunk]:
        request = pb.CheckpointFileRequest(
            sequence=self.sequence,
            file=name,
            offset=offset,
            length=length,
            direct=direct,
        )
        try:
            yield from self.stub.ReadCheckpointFile(request, metadata=self.metadata)
        except grpc.RpcError as e:
            raise CheckpointError(
                f"reading {name} of {self.address}'s checkpoint: {e.code().name}: "
                f"{e.details()}"
            ) from None

    def _whole(self, name: str) -> bytes:
        if name == "manifest.json":
            return self._manifest_bytes
        return b"".join(c.data for c in self._chunks(name, 0, 0))

    def _size(self, name: str) -> int:
        # The server checks its files; a short one fails the reads' crc32.
        return int(self.manifest["files"][name]["bytes"])

    def _open(self, name: str, offset: int, length: int) -> io.RawIOBase:
        if not self.direct:
            return _Stream(self._chunks(name, offset, length))
        chunks = self._chunks(name, offset, length, direct=True)
        head = next(chunks, None)
        if head is None or not head.ticket:  # no direct reads there: the stream
            return _Stream(itertools.chain([head] if head else [], chunks))
        chunks.close()
        if head.local_socket and self.local:  # the same machine: the file itself
            try:
                fd = read_local(head.local_socket, head.ticket, CONNECT_SECONDS)
            except OSError as e:
                log.info(
                    "%s's local socket is not reachable from here (%s): its cut "
                    "comes over its transfer port",
                    self.address,
                    e,
                )
                self.local = False
                return self._open(name, offset, length)  # a new ticket
            return _Handed(fd, offset, length)
        host = target(self.address).rsplit(":", 1)[0].strip("[]")
        try:
            return _Socket(
                read_direct(host, head.direct_port, head.ticket, CONNECT_SECONDS)
            )
        except OSError as e:
            log.warning(
                "%s:%d (direct reads of %s) cannot be reached: %s; reading its "
                "cut over gRPC",
                host,
                head.direct_port,
                self.address,
                e,
            )
            self.direct = False
            return _Stream(self._chunks(name, offset, length))


class _Filling(io.RawIOBase):
    """Bytes read like a file, front to back: ``readinto`` fills the whole
    view from ``_some`` (which returns 0 at the end), short only there."""

    def readable(self) -> bool:
        return True

    def readinto(self, view) -> int:  # type: ignore[override]
        view = memoryview(view).cast("B")
        filled = 0
        while filled < len(view):
            got = self._some(view[filled:])
            if not got:
                break
            filled += got
        return filled

    def _some(self, view: memoryview) -> int:
        raise NotImplementedError


class _Stream(_Filling):
    """The chunks of a ``ReadCheckpointFile`` stream."""

    def __init__(self, chunks: Iterator[pb.CheckpointFileChunk]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def _some(self, view: memoryview) -> int:
        while not self._pending:  # (an empty chunk is not the end)
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk.data)
        n = min(len(self._pending), len(view))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        super().close()


class _Socket(_Filling):
    """A direct read's connection: the kernel copies straight into the view."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn

    def _some(self, view: memoryview) -> int:
        try:
            return self._conn.recv_into(view)
        except OSError as e:
            raise CheckpointError(f"a direct read of a cut broke off: {e}") from e

    def close(self) -> None:
        self._conn.close()
        super().close()


class _Handed(_Filling):
    """A range of a file a peer on this machine handed over (its open
    descriptor): read from the page cache straight into the view."""

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self._fd, self._position, self._end = fd, offset, offset + length

    def _some(self, view: memoryview) -> int:
        wanted = min(len(view), self._end - self._position)
        if wanted <= 0:
            return 0
        try:
            got = os.preadv(self._fd, [view[:wanted]], self._position)
        except OSError as e:
            raise CheckpointError(f"a local read of a cut failed: {e}") from e
        self._position += got
        return got

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        super().close()
