"""Summing the duplicate rows of a sparse gradient, exactly as TensorFlow does.

Keras sums the values of repeated indices (``tf.unique``, then
``unsorted_segment_sum``: rows in order of first appearance, each sum starting
at zero and adding its inputs in order) before a sparse update. The server does
it for every sparse push (it trusts no client to have done it); a client
pushing asynchronously does it first, after clipping, to send each row once
(8192 Zipf ids hold about 2,000 distinct rows: a quarter of the bytes). The
kernels are numba's, loaded on the first call (``dedup_kernels``).
"""

from __future__ import annotations

import numpy as np


def deduplicate(
    indices: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sum the values of repeated indices, in order of first appearance.

    ``values`` is ``[len(indices), row_size]``. Returns ``(rows, summed)`` with
    unique int64 ``rows``, rounded as TensorFlow rounds them.
    """
    from adamax_ps.common.dedup_kernels import first_appearance, segment_sum

    rows, position = first_appearance(np.ascontiguousarray(indices))
    values = np.ascontiguousarray(values)
    if values.dtype == np.float16:  # numba has no half arithmetic
        summed = np.zeros((rows.shape[0], values.shape[1]), values.dtype)
        np.add.at(summed, position, values)  # unbuffered: one add at a time, in order
        return rows, summed
    return rows, segment_sum(values, position, rows.shape[0])
