"""Tensors on the wire: numpy arrays to and from raw little-endian bytes.

Decoding is zero-copy (``np.frombuffer`` over the message's bytes; the arrays
are read-only). Large tensors travel as a stream of chunks after a header;
``StreamAssembler`` checks every declared size against a limit before it
allocates anything, then copies each chunk once into place. Shared by the
server and the client; errors are ``CodecError`` (a ``ValueError``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from adamax_ps.proto.v1 import parameter_server_pb2 as pb

CHUNK_BYTES = 1 << 20  # 1 MB chunks measured fastest for client streams
MAX_RANK = 32

_TO_DTYPE = {
    pb.FLOAT16: np.dtype("<f2"),
    pb.FLOAT32: np.dtype("<f4"),
    pb.FLOAT64: np.dtype("<f8"),
    pb.INT32: np.dtype("<i4"),
    pb.INT64: np.dtype("<i8"),
}
_FROM_DTYPE = {dtype.newbyteorder("="): code for code, dtype in _TO_DTYPE.items()}


class CodecError(ValueError):
    """A tensor or stream that cannot be decoded as declared."""


def dtype_code(dtype: np.dtype | str | type) -> int:
    """The wire code of a numpy dtype (float16/32/64, int32/64)."""
    code = _FROM_DTYPE.get(np.dtype(dtype).newbyteorder("="))
    if code is None:
        raise CodecError(f"dtype {np.dtype(dtype)} cannot travel on the wire")
    return code


def numpy_dtype(code: int) -> np.dtype:
    """The numpy dtype of a wire code (little-endian)."""
    dtype = _TO_DTYPE.get(code)
    if dtype is None:
        raise CodecError(f"unknown or unspecified tensor dtype code {code}")
    return dtype


def little_endian(array: np.ndarray) -> np.ndarray:
    """``array`` as C-contiguous little-endian (no copy when it already is)."""
    dtype = array.dtype.newbyteorder("<")
    return np.asarray(array, dtype=dtype, order="C")  # keeps 0-d arrays 0-d


def header(array: np.ndarray) -> pb.Tensor:
    """A tensor message with shape and dtype and no data."""
    return pb.Tensor(shape=array.shape, dtype=dtype_code(array.dtype))


def encode(array: np.ndarray) -> pb.Tensor:
    """A tensor message holding the array's bytes."""
    array = little_endian(np.asarray(array))
    return pb.Tensor(
        shape=array.shape, dtype=dtype_code(array.dtype), data=array.tobytes()
    )


def declared_nbytes(tensor: pb.Tensor, limit: int) -> int:
    """Bytes a tensor header declares, refusing shapes that are negative, too
    deep, or larger than ``limit`` (checked without overflow)."""
    dtype = numpy_dtype(tensor.dtype)
    if len(tensor.shape) > MAX_RANK:
        raise CodecError(f"tensor rank {len(tensor.shape)} exceeds {MAX_RANK}")
    if any(d < 0 for d in tensor.shape):
        raise CodecError(f"tensor shape {list(tensor.shape)} has a negative dimension")
    count = 1
    for d in tensor.shape:
        count *= d
        if count * dtype.itemsize > limit:
            raise CodecError(
                f"tensor of shape {list(tensor.shape)} ({dtype.name}) exceeds the "
                f"request limit of {limit} bytes"
            )
    return count * dtype.itemsize


def decode(tensor: pb.Tensor, data: bytes | memoryview | None = None) -> np.ndarray:
    """The array a tensor message describes, viewing ``data`` (default: its own
    bytes) without a copy. Read-only when the bytes are."""
    dtype = numpy_dtype(tensor.dtype)
    shape = tuple(tensor.shape)
    buffer = tensor.data if data is None else data
    if any(d < 0 for d in shape):
        raise CodecError(f"tensor shape {list(shape)} has a negative dimension")
    expected = math.prod(shape) * dtype.itemsize
    if len(buffer) != expected:
        raise CodecError(
            f"tensor of shape {list(shape)} ({dtype.name}) needs {expected} bytes. "
            f"Received: {len(buffer)}"
        )
    return (
        np.frombuffer(buffer, dtype=dtype).reshape(shape).view(dtype.newbyteorder("="))
    )


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


def chunk_parser(message_type):
    """A deserializer: data-only chunks without a copy, others by protobuf."""

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


class StreamAssembler:
    """Receives the chunks of tensors declared by a header, into one buffer.

    ``declared`` are the tensor headers in stream order; their total size is
    checked against ``limit`` before the buffer is allocated. ``feed`` copies
    each chunk once; ``arrays`` checks the stream was complete and returns
    views of the buffer, one per declared tensor.
    """

    def __init__(self, declared: Sequence[pb.Tensor], limit: int) -> None:
        sizes = [declared_nbytes(t, limit) for t in declared]
        total = sum(sizes)
        if total > limit:
            raise CodecError(
                f"the request declares {total} bytes of tensors, over the limit of "
                f"{limit} bytes"
            )
        self._declared = list(declared)
        self._sizes = sizes
        self._buffer = np.empty(total, np.uint8)
        self._filled = 0

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
