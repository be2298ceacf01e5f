"""Direct reads of a rescale's cut (``server/cut_transfer.py``): a peer's
reader gets the same bytes as from the files, from the file itself handed
over the local socket on the same machine, by sendfile on the transfer port
where that socket cannot be reached, and by the gRPC stream where the port
cannot be reached or is turned off; a ticket is good once, for its range,
while it lasts, on either way; idle and surplus connections are dropped. A
real server (gRPC, uvicorn, the transfer port, the local socket) in this
process, and real sockets."""

from __future__ import annotations

import os
import socket

import grpc
import numpy as np
import pytest

from adamax_ps.client import connect
from adamax_ps.proto.v1 import parameter_server_pb2 as pb
from adamax_ps.proto.v1 import parameter_server_pb2_grpc as pb_grpc
from adamax_ps.server import cut_transfer
from adamax_ps.server.checkpoint import CheckpointReader
from adamax_ps.server.checkpoint_remote import RemoteCheckpointReader
from adamax_ps.server.config import ServerConfig
from adamax_ps.server.cut_transfer import DirectReads, read_direct, read_local
from adamax_ps.server.serve import ServerProcess

ROWS, DIM = 70_000, 64  # 17.9 MB a variable: more than one 16 MiB chunk


def _frozen(folder, **options) -> ServerProcess:
    """A server holding ``w`` and a table, frozen for a rescale: its cut is
    on disk and peers may read it."""
    process = ServerProcess(
        ServerConfig(
            grpc_port=0, http_port=0, checkpoint_dir=folder, shards=1, **options
        )
    )
    process.start()
    rng = np.random.default_rng(7)
    with connect(f"grpc://127.0.0.1:{process.grpc.port}") as cluster:
        cluster.variable("w", initial_value=rng.random((ROWS, DIM), np.float32))
        cluster.variable("b", initial_value=np.arange(5, dtype=np.float32))
    with grpc.insecure_channel(f"127.0.0.1:{process.grpc.port}") as channel:
        status = pb_grpc.ParameterServerStub(channel).Rescale(
            pb.RescaleRequest(
                phase=pb.RescaleRequest.FREEZE, rescale_id="r", timeout_seconds=30
            )
        )
    assert status.state == "frozen"
    return process


@pytest.fixture
def frozen(tmp_path):
    process = _frozen(tmp_path)
    try:
        yield process
    finally:
        process.stop()


def _sent(process: ServerProcess, way: str) -> float:
    value = process.service.metrics.registry.get_sample_value(
        "adamax_ps_cut_sent_bytes_total", {"way": way}
    )
    return value or 0.0


def _arrays(reader: CheckpointReader) -> list[dict]:
    return [e for e in reader.manifest["arrays"] if e["kind"] == "value"]


def _same_as_files(process: ServerProcess) -> RemoteCheckpointReader:
    """Every array and a range across a chunk edge, read from the peer,
    equal to the cut's own files; the reader, to see how it went."""
    local = CheckpointReader(process.service.rescale.own_cut())
    remote = RemoteCheckpointReader(f"127.0.0.1:{process.grpc.port}")
    try:
        for entry in _arrays(local):
            assert np.array_equal(remote.read(entry), local.read(entry)), entry
        (big,) = [e for e in _arrays(local) if e["nbytes"] > 16 << 20]
        whole = local.read(big).view(np.uint8).reshape(-1)
        part = bytearray(2 << 20)  # 15 MiB to 17 MiB: across the first edge
        remote.read_ranges(big, [(15 << 20, memoryview(part))])
        assert bytes(part) == whole[(15 << 20) : (17 << 20)].tobytes()
    finally:
        remote.close()
    return remote


def test_a_peer_on_the_same_machine_reads_the_cut_from_its_files_handed_over(
    frozen,
):
    remote = _same_as_files(frozen)
    assert remote.direct and remote.local
    assert _sent(frozen, "local") >= ROWS * DIM * 4
    assert _sent(frozen, "direct") == 0
    assert _sent(frozen, "grpc") < 1 << 20  # the manifest, its crc32


def test_where_the_local_socket_is_out_of_reach_the_cut_comes_by_the_port(frozen):
    (local, _) = frozen.direct._listening[1]
    local.shutdown(socket.SHUT_RDWR)  # as from another pod: not there
    local.close()
    remote = _same_as_files(frozen)
    assert remote.direct and not remote.local
    assert _sent(frozen, "direct") >= ROWS * DIM * 4
    assert _sent(frozen, "local") == 0
    assert _sent(frozen, "grpc") < 1 << 20


def test_with_transfer_port_only_a_peer_here_reads_as_from_another_machine(
    tmp_path,
):
    process = _frozen(tmp_path, transfer_port_only=True)
    try:
        assert process.direct.local == ""  # no local socket to name
        remote = _same_as_files(process)
        assert remote.direct and remote.local  # (never offered one)
        assert _sent(process, "direct") >= ROWS * DIM * 4
        assert _sent(process, "local") == 0
    finally:
        process.stop()


def test_an_unreachable_direct_port_falls_back_to_the_grpc_stream(frozen):
    frozen.direct.close()  # tickets are still offered; port and socket refuse
    remote = _same_as_files(frozen)
    assert not remote.direct
    assert _sent(frozen, "grpc") >= ROWS * DIM * 4
    assert _sent(frozen, "direct") == _sent(frozen, "local") == 0


def test_without_a_transfer_port_the_cut_streams_over_grpc(tmp_path):
    process = _frozen(tmp_path, transfer_port=-1)
    try:
        assert process.direct is None
        _same_as_files(process)
        assert _sent(process, "grpc") >= ROWS * DIM * 4
        assert _sent(process, "direct") == 0
    finally:
        process.stop()


def _ticket(process: ServerProcess, offset: int, length: int) -> pb.CheckpointFileChunk:
    with grpc.insecure_channel(f"127.0.0.1:{process.grpc.port}") as channel:
        stub = pb_grpc.ParameterServerStub(channel)
        request = pb.CheckpointFileRequest(
            file="shard-0.bin", offset=offset, length=length, direct=True
        )
        (answer,) = list(stub.ReadCheckpointFile(request))
    assert answer.ticket and not answer.data
    return answer


def _take(port: int, ticket: bytes) -> bytes:
    """What the port sends for ``ticket``: b"" when it closes at once (or
    resets: the ticket was sent and never read)."""
    with read_direct("127.0.0.1", port, ticket, 10) as conn:
        conn.settimeout(10)
        data = b""
        try:
            while more := conn.recv(1 << 20):
                data += more
        except ConnectionResetError:
            assert not data
        return data


def test_a_ticket_is_good_once_for_its_own_range(frozen):
    path = frozen.service.rescale.own_cut() / "shard-0.bin"
    answer = _ticket(frozen, 4096, 100_000)
    port = answer.direct_port
    assert _take(port, b"x" * len(answer.ticket)) == b""  # unknown: closed
    assert _take(port, answer.ticket) == path.read_bytes()[4096:104_096]
    assert _take(port, answer.ticket) == b""  # spent
    with pytest.raises(grpc.RpcError) as refused:  # no ticket beyond the file
        _ticket(frozen, path.stat().st_size, 1)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_the_local_socket_hands_the_file_over_once_per_ticket(frozen):
    path = frozen.service.rescale.own_cut() / "shard-0.bin"
    answer = _ticket(frozen, 4096, 100_000)
    assert answer.local_socket
    with pytest.raises(OSError):  # unknown: closed, no file
        read_local(answer.local_socket, b"x" * len(answer.ticket), 10)
    fd = read_local(answer.local_socket, answer.ticket, 10)
    try:
        assert os.pread(fd, 100_000, 4096) == path.read_bytes()[4096:104_096]
        with pytest.raises(OSError):  # a read-only descriptor
            os.pwrite(fd, b"x", 0)
    finally:
        os.close(fd)
    with pytest.raises(OSError):  # spent
        read_local(answer.local_socket, answer.ticket, 10)


def test_an_expired_ticket_gets_nothing(frozen, monkeypatch):
    monkeypatch.setattr(cut_transfer, "TICKET_SECONDS", -1.0)
    answer = _ticket(frozen, 0, 4096)
    assert _take(answer.direct_port, answer.ticket) == b""
    answer = _ticket(frozen, 0, 4096)
    with pytest.raises(OSError):
        read_local(answer.local_socket, answer.ticket, 10)


def test_idle_and_surplus_connections_are_dropped(tmp_path, monkeypatch):
    monkeypatch.setattr(cut_transfer, "MAX_SENDERS", 1)
    monkeypatch.setattr(cut_transfer, "IDLE_SECONDS", 0.5)
    path = tmp_path / "cut.bin"
    path.write_bytes(bytes(range(256)) * 16)
    reads = DirectReads("127.0.0.1")
    try:
        idle = socket.create_connection(("127.0.0.1", reads.port), timeout=10)
        with idle:
            idle.sendall(b"\0")  # part of a ticket, then nothing
            # The one sender is taken: another connection is closed at once.
            ticket = reads.offer(path, 0, 4096)
            assert _take(reads.port, ticket) == b""
            assert idle.recv(1) == b""  # dropped after IDLE_SECONDS
        ticket = reads.offer(path, 0, 4096)  # the sender is free again
        assert _take(reads.port, ticket) == path.read_bytes()
    finally:
        reads.close()


def test_outstanding_tickets_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(cut_transfer, "MAX_TICKETS", 2)
    path = tmp_path / "cut.bin"
    path.write_bytes(b"x" * 10)
    reads = DirectReads("127.0.0.1")
    try:
        assert reads.offer(path, 0, 10) and reads.offer(path, 0, 10)
        assert reads.offer(path, 0, 10) is None  # the peer streams over gRPC
    finally:
        reads.close()
