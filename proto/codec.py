"""Tensors on the wire: numpy arrays to and from raw little-endian bytes.

Decoding is zero-copy (``np.frombuffer`` over the message's bytes; the arrays
are read-only). Large tensors travel as a stream of chunks after a header;
``StreamAssembler`` checks every declared size against a limit before it
allocates anything, then copies each chunk once into place. Shared by the
server and the client; errors are ``CodecError`` (a ``ValueError``).
"""

from __future__ import annotations

import io
import json
import math
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

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


class TooLargeError(CodecError):
    """A tensor or body larger than the receiver's request limit."""


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
            raise TooLargeError(
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

FRAMED = "application/x-adamax-ps"
NPY = "application/octet-stream"


def describe(array: np.ndarray) -> dict:
    """A tensor's JSON description in a framed body's header."""
    return {"shape": list(array.shape), "dtype": np.dtype(array.dtype).name}


def frame(header: dict, arrays: Sequence[np.ndarray]) -> list[bytes | memoryview]:
    """A framed body as pieces (the arrays' own memory, no copy)."""
    text = json.dumps(header).encode()
    pieces: list[bytes | memoryview] = [len(text).to_bytes(4, "little"), text]
    pieces += [memoryview(little_endian(a).reshape(-1)).cast("B") for a in arrays]
    return pieces


def unframe(body: bytes | bytearray | memoryview) -> tuple[dict, memoryview]:
    """The JSON header of a framed body and a view of the bytes after it."""
    view = memoryview(body)
    if len(view) < 4:
        raise CodecError("a framed body starts with a 4-byte header length")
    size = int.from_bytes(view[:4], "little")
    if 4 + size > len(view):
        raise CodecError(f"the framed body's header claims {size} bytes; it has fewer")
    try:
        header = json.loads(bytes(view[4 : 4 + size]))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CodecError(f"the framed body's header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise CodecError("the framed body's header must be a JSON object")
    return header, view[4 + size :]


def tensor_from_json(description: Any) -> pb.Tensor:
    """A tensor header from its JSON description (checked)."""
    if not isinstance(description, dict):
        raise CodecError(
            f"a tensor is described as {{shape, dtype}}. Received: {description!r}"
        )
    shape, dtype = description.get("shape"), description.get("dtype")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise CodecError(f"a tensor shape is a list of integers. Received: {shape!r}")
    try:
        code = dtype_code(np.dtype(dtype)) if isinstance(dtype, str) else None
    except TypeError:
        code = None
    if code is None:
        raise CodecError(f"unknown tensor dtype {dtype!r}")
    if any(not 0 <= d < 1 << 62 for d in shape):
        raise CodecError(f"tensor shape {shape} has a negative or huge dimension")
    return pb.Tensor(shape=shape, dtype=code)


def split_framed(
    descriptions: Sequence[Any], data: memoryview, limit: int
) -> list[np.ndarray]:
    """The tensors a framed body declares, viewing its bytes (no copy)."""
    headers = [tensor_from_json(d) for d in descriptions]
    sizes = [declared_nbytes(t, limit) for t in headers]
    if sum(sizes) != len(data):
        raise CodecError(
            f"the framed body declares {sum(sizes)} bytes of tensors and carries "
            f"{len(data)}"
        )
    out, start = [], 0
    for tensor, size in zip(headers, sizes, strict=True):
        out.append(decode(tensor, data[start : start + size]))
        start += size
    return out


def npy_header(array: np.ndarray) -> bytes:
    """The ``.npy`` header for ``array`` (its bytes follow, C order)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, np.lib.format.header_data_from_array_1_0(array)
    )
    return buffer.getvalue()


def read_npy(data: bytes) -> np.ndarray:
    """An array from ``.npy`` bytes (never unpickled)."""
    return np.load(io.BytesIO(data), allow_pickle=False)
