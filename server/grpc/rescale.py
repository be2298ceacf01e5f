"""The rescale RPCs of ``adamax_ps.v1.ParameterServer`` (a mixin of the
servicer): ``Rescale``, the driver's phases (``server/rescale.py``), and
``ReadCheckpointFile``, a peer reading this server's cut."""

from __future__ import annotations

from collections.abc import Iterator

from adamax_ps.proto.v1 import parameter_server_pb2 as pb
from adamax_ps.server.errors import InvalidArgumentError, NotFoundError
from adamax_ps.server.grpc.handlers import server_streaming, unary
from adamax_ps.server.rescale import FREEZE_TIMEOUT, Standing
from adamax_ps.server.service import ParameterService

FILE_CHUNK = 1 << 20  # bytes per message of ReadCheckpointFile
Phase = pb.RescaleRequest.Phase


class RescaleRpcs:
    """Rescale and ReadCheckpointFile."""

    service: ParameterService

    @unary
    def Rescale(self, request, context):
        rescale = self.service.rescale
        phase, rid = request.phase, request.rescale_id
        if phase == Phase.STATUS:
            standing = rescale.standing
        elif phase == Phase.FREEZE:
            standing = rescale.freeze(rid, request.timeout_seconds or FREEZE_TIMEOUT)
        elif phase == Phase.ADOPT:
            standing = rescale.adopt(
                rid,
                (request.server_index, request.num_servers),
                list(request.addresses),
                list(request.old_addresses),
                request.split_bytes,
            )
        elif phase == Phase.COMMIT:
            standing = rescale.commit(
                rid, list(request.addresses), list(request.http_addresses)
            )
        elif phase == Phase.SETTLE:
            standing = rescale.settle(rid)
        elif phase == Phase.RELEASE:
            standing = rescale.release(rid)
        elif phase == Phase.ABORT:
            standing = rescale.abort(rid)
        else:
            raise InvalidArgumentError("a Rescale call names its phase")
        return _status(self.service, standing)

    @server_streaming
    def ReadCheckpointFile(self, request, context):
        yield from _file_chunks(self.service, request)


def _status(service: ParameterService, standing: Standing) -> pb.RescaleStatus:
    settings = service.settings
    return pb.RescaleStatus(
        rescale_id=standing.rescale_id,
        state=standing.state,
        server_index=settings.server_index,
        num_servers=settings.num_servers,
        cut_sequence=standing.cut_sequence,
        addresses=standing.addresses,
        old_num_servers=standing.old[1] if standing.old else settings.num_servers,
        settling=standing.settling,
        rebuilding=standing.importing,
        rebuild_error=standing.rebuild_error,
        http_port=service.rescale.http[0],
        http_tls=service.rescale.http[1],
    )


def _file_chunks(
    service: ParameterService, request: pb.CheckpointFileRequest
) -> Iterator[pb.CheckpointFileChunk]:
    """Bytes ``offset`` to ``offset + length`` of one file of a checkpoint."""
    folder = service.rescale.cut_path(request.sequence)
    sequence = int(folder.name.split("-")[1])
    names = {p.name for p in folder.iterdir() if p.is_file()}
    if request.file not in names:  # only a file of it: never a path
        raise NotFoundError(f"checkpoint {sequence} has no file {request.file!r}")
    with open(folder / request.file, "rb") as f:
        size = f.seek(0, 2)
        end = size if not request.length else request.offset + request.length
        if request.offset > size or end > size:
            raise InvalidArgumentError(
                f"{request.file} has {size} bytes: bytes {request.offset}..{end} "
                "are beyond it"
            )
        direct = service.rescale.direct
        ticket = None
        if request.direct and direct is not None:
            path, length = folder / request.file, end - request.offset
            ticket = direct.offer(path, request.offset, length)
        if ticket is not None:  # the bytes go directly (server/cut_transfer.py)
            yield pb.CheckpointFileChunk(
                sequence=sequence,
                direct_port=direct.port,
                ticket=ticket,
                local_socket=direct.local,
            )
            return
        f.seek(request.offset)
        position = request.offset
        sent = service.metrics.cut_sent_bytes.labels("grpc")
        while position < end:
            data = f.read(min(FILE_CHUNK, end - position))
            if not data:
                break
            position += len(data)
            sent.inc(len(data))
            yield pb.CheckpointFileChunk(sequence=sequence, data=data)
        if position == request.offset:
            yield pb.CheckpointFileChunk(sequence=sequence)
