"""Arrow arrays to and from numpy without pandas.

pyarrow imports pandas the first time it converts Python or numpy values, or an array
to numpy (to check for pandas types): a third of a second, most of a query's start
(jobs/query.py). These go through the arrays' buffers instead.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

NUMPY = {pa.float32(): np.float32, pa.float64(): np.float64, pa.int32(): np.int32,
         pa.int64(): np.int64, pa.uint64(): np.uint64}


def strings(values: Sequence[str]) -> pa.Array:
    """``values`` as an Arrow string array."""
    encoded = [value.encode() for value in values]
    offsets = np.cumsum([0, *map(len, encoded)], dtype=np.int64).astype(np.int32)
    return pa.Array.from_buffers(pa.string(), len(encoded),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def indices(rows: np.ndarray) -> pa.Array:
    """Row numbers as an Arrow int64 array (for ``take``)."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(rows), [None, pa.py_buffer(rows)])


def values(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numeric array without nulls as numpy (read-only where it shares Arrow's memory)."""
    chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
    if not all(chunk.null_count == 0 and chunk.type in NUMPY for chunk in chunks):
        return array.to_numpy()  # nulls or other types: Arrow's own conversion
    parts = [np.frombuffer(chunk.buffers()[1], NUMPY[chunk.type], len(chunk),
                           chunk.offset * np.dtype(NUMPY[chunk.type]).itemsize)
             for chunk in chunks]
    if not parts:
        return np.zeros(0, NUMPY.get(array.type, np.float64))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
