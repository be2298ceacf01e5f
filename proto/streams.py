"""Tensors in streams of chunks: sending them, and receiving them into place.

Large tensors travel as a stream of chunk messages after a header that
declares them. ``StreamAssembler`` checks every declared size against a limit
(and the receiver's budget) before it allocates anything, then copies each
chunk once into place, in a buffer from a ``BufferPool``. Data chunks are
encoded and parsed here without protobuf (one copy fewer each side).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from adamax_ps.proto.codec import (
    CodecError,
    TooLargeError,
    declared_nbytes,
    decode,
    little_endian,
    numpy_dtype,
)
from adamax_ps.proto.v1 import parameter_server_pb2 as pb

CHUNK_BYTES = 1 << 20  # 1 MB chunks measured fastest for client streams


def chunks(
    arrays: Iterable[np.ndarray], size: int = CHUNK_BYTES
) -> Iterator[memoryview]:
    """The arrays' bytes in order, in pieces of ``size`` (views, not copies)."""
    for array in arrays:
        view = memoryview(little_endian(array).reshape(-1)).cast("B")
        for start in range(0, len(view), size):
            yield view[start : start + size]


# Streamed chunks -------------------------------------------------------------------
#
# ApplyChunk and AssignChunk carry a header (field 1) or raw bytes (field 2).
# A data chunk's protobuf encoding is just the tag 0x12, a varint length and
# the bytes, so it is written and read here without protobuf: one copy fewer
# on each side, and still the same wire format for any other client.

_DATA_TAG = 0x12  # field 2, length-delimited


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def data_chunk(piece: memoryview | bytes) -> bytes:
    """The encoding of a chunk message holding only ``data`` (one copy)."""
    return b"".join((bytes((_DATA_TAG,)), _varint(len(piece)), piece))


class DataChunk:
    """A parsed data-only chunk: ``data`` views the received bytes."""

    __slots__ = ("data",)

    def __init__(self, data: memoryview) -> None:
        self.data = data

    def HasField(self, name: str) -> bool:  # noqa: N802 - the protobuf method name
        return False


class Malformed:
    """What a request that cannot be parsed turns into, so the handler can
    answer INVALID_ARGUMENT (gRPC itself would answer INTERNAL)."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error

    def HasField(self, name: str) -> bool:  # noqa: N802 - the protobuf method name
        return False


def safe_parser(parse):
    """``parse`` returning ``Malformed`` instead of raising."""

    def parse_or_flag(raw: bytes):
        try:
            return parse(raw)
        except Exception as e:
            return Malformed(f"the request is not a valid protobuf message: {e}")

    return parse_or_flag


def chunk_parser(message_type):
    """A deserializer: data-only chunks without a copy, others by protobuf;
    unparseable ones become ``Malformed``."""

    @safe_parser
    def parse(raw: bytes):
        if raw and raw[0] == _DATA_TAG:
            length, shift, i = 0, 0, 1
            while i < len(raw):
                byte = raw[i]
                length |= (byte & 0x7F) << shift
                i += 1
                if not byte & 0x80:
                    break
                shift += 7
            if i + length == len(raw):
                return DataChunk(memoryview(raw)[i:])
        return message_type.FromString(raw)

    return parse


def chunk_serializer(message) -> bytes:
    """A serializer accepting chunk messages or bytes already encoded."""
    if isinstance(message, bytes):
        return message
    return message.SerializeToString()


class BufferPool:
    """Large receive buffers, reused once nothing views them any more.

    A fresh buffer above glibc's largest mmap threshold (32 MB) is a fresh
    mapping: every push would pay for its page faults and zeroing again (about
    a tenth of a 64 MB push's time here). The pool keeps up to ``budget`` bytes
    of buffers between ``min_bytes`` and ``budget``. A buffer is handed out
    again only when its reference count shows that no array made from it is
    alive (the views that ``StreamAssembler.arrays`` returns hold it), so a
    push that something still holds (a synchronous round, a log write) is never
    overwritten.
    """

    def __init__(self, budget: int = 128 << 20, min_bytes: int = 4 << 20) -> None:
        self.budget, self.min_bytes = budget, min_bytes
        self._buffers: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        """A buffer of exactly ``nbytes`` (a view of a pooled one if possible)."""
        if not self.min_bytes <= nbytes <= self.budget:
            return np.empty(nbytes, np.uint8)
        with self._lock:
            free = [k for k in range(len(self._buffers)) if self._unused(k)]
            fits = [k for k in free if self._buffers[k].nbytes >= nbytes]
            if fits:
                best = min(fits, key=lambda k: self._buffers[k].nbytes)
                return self._buffers[best][:nbytes]
            for k in sorted(free, reverse=True):  # too small: make room
                if self._held() + nbytes <= self.budget:
                    break
                del self._buffers[k]
            buffer = np.empty(nbytes, np.uint8)
            if self._held() + nbytes <= self.budget:
                self._buffers.append(buffer)
            return buffer

    def _unused(self, k: int) -> bool:
        # References: the list's and getrefcount's argument. Any view adds one.
        return sys.getrefcount(self._buffers[k]) <= 2

    def _held(self) -> int:
        return sum(b.nbytes for b in self._buffers)


class _Unpooled:
    def take(self, nbytes: int) -> np.ndarray:
        return np.empty(nbytes, np.uint8)


_UNPOOLED = _Unpooled()


class StreamAssembler:
    """Receives the chunks of tensors declared by a header, into one buffer.

    ``declared`` are the tensor headers in stream order; their total size is
    checked against ``limit``, then handed to ``reserve`` (which may refuse it
    by raising: a server's budget of bytes in flight), before the buffer is
    allocated (from ``pool`` if given). ``feed`` copies each chunk once;
    ``arrays`` checks the stream was complete and returns views of the
    buffer, one per declared tensor.
    ``layout`` (offset, size, dtype of each tensor), ``buffer`` and ``filled``
    let a caller look at the bytes as they arrive.
    """

    def __init__(
        self,
        declared: Sequence[pb.Tensor],
        limit: int,
        pool: BufferPool | None = None,
        reserve: Callable[[int], Any] | None = None,
    ) -> None:
        sizes = [declared_nbytes(t, limit) for t in declared]
        total = sum(sizes)
        if total > limit:
            raise TooLargeError(
                f"the request declares {total} bytes of tensors, over the limit of "
                f"{limit} bytes"
            )
        self._declared = list(declared)
        self._sizes = sizes
        offsets = np.cumsum([0, *sizes[:-1]]).tolist() if sizes else []
        self.layout = [
            (start, size, numpy_dtype(t.dtype))
            for start, size, t in zip(offsets, sizes, declared, strict=True)
        ]
        if reserve is not None:
            reserve(total)
        self._buffer = (pool or _UNPOOLED).take(total)
        self._filled = 0

    @property
    def buffer(self) -> np.ndarray:
        return self._buffer

    @property
    def filled(self) -> int:
        """Bytes received so far, in stream order."""
        return self._filled

    def feed(self, data: bytes) -> None:
        end = self._filled + len(data)
        if end > len(self._buffer):
            raise CodecError(
                f"the stream carries more bytes than its header declares "
                f"({len(self._buffer)})"
            )
        self._buffer[self._filled : end] = np.frombuffer(data, np.uint8)
        self._filled = end

    def arrays(self) -> list[np.ndarray]:
        if self._filled != len(self._buffer):
            raise CodecError(
                f"the stream ended after {self._filled} of the {len(self._buffer)} "
                "bytes its header declares"
            )
        out, start = [], 0
        for tensor, size in zip(self._declared, self._sizes, strict=True):
            view = memoryview(self._buffer[start : start + size])
            out.append(decode(tensor, view))
            start += size
        return out


# HTTP bodies -------------------------------------------------------------------------
#
# HTTP requests that carry tensors use ``application/x-adamax-ps``: a 4-byte
# little-endian length, a JSON header of that length describing the tensors
# ({"shape": [...], "dtype": "float32"}), then the tensors' raw bytes in the
# order the header lists them.
