"""The NaN/Inf scan of streamed pushes, made while their bytes arrive."""

from __future__ import annotations

import numpy as np
import pytest

from adamax_ps.proto import codec, streams
from adamax_ps.server.validation import StreamFiniteScan


def stream(*arrays: np.ndarray, cut: int) -> tuple[streams.StreamAssembler, list]:
    declared = [codec.header(a) for a in arrays]
    data = b"".join(a.tobytes() for a in arrays)
    assembler = streams.StreamAssembler(declared, 1 << 20)
    return assembler, [data[k : k + cut] for k in range(0, len(data), cut)]


def scanned(arrays, which, cut: int) -> list[bool]:
    assembler, chunks = stream(*arrays, cut=cut)
    scan = StreamFiniteScan(assembler.buffer, assembler.layout, which)
    for chunk in chunks:
        assembler.feed(chunk)
        scan.advance(assembler.filled)
    assembler.arrays()
    return [scan.finite(k) for k in range(len(arrays))]


@pytest.mark.parametrize("cut", [1, 3, 7, 64, 4096])
def test_each_float_tensor_is_found_finite_or_not_across_chunk_cuts(cut):
    rows = np.array([4, 9, 4])
    clean = np.linspace(-1, 1, 24, dtype=np.float32).reshape(3, 8)
    nan = np.ones(5)
    nan[4] = np.nan
    inf = np.ones(4, np.float16)  # 8 bytes: the float64 after it stays aligned
    inf[0] = -np.inf
    arrays = [rows, clean, nan, inf, clean.astype(np.float64)]
    assert scanned(arrays, [1, 2, 3, 4], cut) == [False, True, False, False, True]


def test_only_the_named_tensors_are_scanned_and_a_cut_stream_is_not_clean():
    values = np.ones(8, np.float32)
    assert scanned([values, values], [1], cut=5) == [False, True]
    assembler, chunks = stream(values, cut=5)
    scan = StreamFiniteScan(assembler.buffer, assembler.layout, [0])
    for chunk in chunks[:-1]:  # the stream stops one chunk short
        assembler.feed(chunk)
        scan.advance(assembler.filled)
    assert not scan.finite(0)


def test_a_float_tensor_at_an_unaligned_offset_is_left_to_the_service():
    odd = np.ones(3, np.float16)  # 6 bytes: the next float32 starts unaligned
    assert scanned([odd, np.ones(4, np.float32)], [0, 1], cut=4) == [True, False]
