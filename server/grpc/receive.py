"""Streamed requests received into place: the header first, then the chunks
of the tensors it declares, into one pooled buffer whose bytes count in the
service's in-flight budget until the request ends."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from typing import Any

from adamax_ps.proto import codec, streams
from adamax_ps.proto.v1 import parameter_server_pb2 as pb
from adamax_ps.server.limits import InflightBudget


class StreamReceiver:
    """Receives the streams of one servicer (``max_request_bytes`` each)."""

    def __init__(
        self,
        inflight: InflightBudget,
        max_request_bytes: int,
        buffers: streams.BufferPool | None = None,
    ) -> None:
        self.inflight = inflight
        self.max_request_bytes = max_request_bytes
        self.buffers = buffers or streams.BufferPool()

    def header(self, chunks: Iterator, what: str) -> tuple[Any, bytes, Iterator]:
        """The stream's header message, the bytes its first chunk carries, and
        the chunks still to come (a malformed one raises ``CodecError``)."""
        chunks = parsed(chunks)
        first = next(chunks, None)
        if first is None or not first.HasField("header"):
            raise codec.CodecError(f"a streamed {what} starts with its header")
        return first.header, first.data, chunks

    def assembler(
        self, declared: Sequence[pb.Tensor], held: ExitStack, first: bytes
    ) -> streams.StreamAssembler:
        """An assembler for the ``declared`` tensors (their bytes counted in
        the in-flight budget until ``held`` ends), fed the first chunk's data."""

        def reserve(nbytes: int) -> None:
            held.enter_context(self.inflight.held(nbytes, "the stream"))

        assembler = streams.StreamAssembler(
            declared, self.max_request_bytes, self.buffers, reserve
        )
        if first:
            assembler.feed(first)
        return assembler


def parsed(chunks: Iterator) -> Iterator:
    """Stream messages, a malformed one raising ``CodecError``."""
    for chunk in chunks:
        if isinstance(chunk, streams.Malformed):
            raise codec.CodecError(chunk.error)
        yield chunk
