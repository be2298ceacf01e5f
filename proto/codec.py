"""Tensors on the wire: numpy arrays to and from raw little-endian bytes.

Decoding is zero-copy (``np.frombuffer`` over the message's bytes; the arrays
are read-only). The same tensors travel in protobuf messages (gRPC) and in
framed bodies (HTTP: a JSON header, then the raw bytes), or as ``.npy``.
Streams of chunks are in ``streams``. Shared by the server and the client;
errors are ``CodecError`` (a ``ValueError``).
"""

from __future__ import annotations

import functools
import io
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from adamax_ps.proto.v1 import parameter_server_pb2 as pb

MAX_RANK = 32
FRAMED = "application/x-adamax-ps"  # a body: a JSON header, then raw tensor bytes
NPY = "application/octet-stream"  # a tensor as a .npy file

_TO_DTYPE = {
    pb.FLOAT16: np.dtype("<f2"),
    pb.FLOAT32: np.dtype("<f4"),
    pb.FLOAT64: np.dtype("<f8"),
    pb.INT32: np.dtype("<i4"),
    pb.INT64: np.dtype("<i8"),
}
_FROM_DTYPE = {dtype.newbyteorder("="): code for code, dtype in _TO_DTYPE.items()}


@functools.cache
def bfloat16() -> np.dtype:
    """numpy's bfloat16 (from ml_dtypes, imported on first use: it costs half
    a second, which every server and worker start would otherwise pay)."""
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


class _Reduced(Mapping):
    """What a float32 variable's rows and gradients may travel as, by name."""

    def __getitem__(self, name: str) -> np.dtype:
        if name == "float16":
            return np.dtype("<f2")
        if name == "bfloat16":
            return bfloat16()
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(("float16", "bfloat16"))

    def __len__(self) -> int:
        return 2


REDUCED = _Reduced()


class CodecError(ValueError):
    """A tensor or stream that cannot be decoded as declared."""


class TooLargeError(CodecError):
    """A tensor or body larger than the receiver's request limit."""


def dtype_code(dtype: np.dtype | str | type) -> int:
    """The wire code of a numpy dtype (float16/32/64, int32/64, bfloat16)."""
    dtype = np.dtype(dtype)
    if dtype.name == "bfloat16":  # it exists: ml_dtypes is imported
        return pb.BFLOAT16
    code = _FROM_DTYPE.get(dtype.newbyteorder("="))
    if code is None:
        raise CodecError(f"dtype {np.dtype(dtype)} cannot travel on the wire")
    return code


def numpy_dtype(code: int) -> np.dtype:
    """The numpy dtype of a wire code (little-endian)."""
    if code == pb.BFLOAT16:
        return bfloat16()
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


def describe(array: np.ndarray) -> dict:
    """A tensor's JSON description in a framed body's header."""
    return {"shape": list(array.shape), "dtype": np.dtype(array.dtype).name}


def frame(header: dict, arrays: Sequence[np.ndarray]) -> list[bytes | memoryview]:
    """A framed body as pieces (the arrays' own memory, no copy)."""
    text = json.dumps(header).encode()
    pieces: list[bytes | memoryview] = [len(text).to_bytes(4, "little"), text]
    pieces += [memoryview(little_endian(a).reshape(-1).view(np.uint8)) for a in arrays]
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
        known = REDUCED.get(dtype) if isinstance(dtype, str) else None
        code = dtype_code(known or np.dtype(dtype)) if isinstance(dtype, str) else None
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
