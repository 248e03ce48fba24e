"""Spectrogram values in mel shards (schemas.MEL_SHARD), to and from Arrow.

A row's ``mel`` holds its (n_mels, n_frames) values as the little-endian bytes of
its ``dtype``. Shards written before the dtype existed hold float32 values in a list
column; :func:`conform` reads both, so such shards stay readable as they are.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import schemas

# The ``mel`` column of shards written before MelParams.dtype existed.
LEGACY_MEL = pa.list_(pa.float32())


def numpy_dtype(name: str) -> np.dtype:
    """A MelParams dtype name as the little-endian NumPy dtype its bytes are in."""
    return np.dtype(name).newbyteorder("<")


def encode(values: Sequence[np.ndarray], dtype: str) -> pa.Array:
    """One ``mel`` value (bytes) per array of ``values``, converted to ``dtype``.

    Built from one concatenated buffer: converting arrays one by one is several
    times slower.
    """
    kind = numpy_dtype(dtype)
    data = (np.concatenate([np.asarray(v, kind).ravel() for v in values])
            if len(values) else np.zeros(0, kind))
    sizes = np.array([np.size(v) * kind.itemsize for v in values], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    if offsets[-1] >= 2**31:
        raise ValueError(f"{offsets[-1]} bytes of spectrograms in one batch; at most 2 GiB fit")
    return pa.Array.from_buffers(pa.binary(), len(values), [
        None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)])


def with_values(table: pa.Table, values: Sequence[np.ndarray], dtype: str) -> pa.Table:
    """``table`` with its ``dtype`` and ``mel`` columns replaced by ``values`` stored as
    ``dtype``, one array per row."""
    kept = table.drop_columns([name for name in ("dtype", "mel") if name in table.column_names])
    return (kept.append_column("dtype", pa.array([dtype] * table.num_rows, pa.string()))
            .append_column("mel", encode(values, dtype)))


def conform(table: pa.Table) -> pa.Table:
    """``table`` as schemas.MEL_SHARD; a shard of the float32 list format is converted."""
    if "mel" in table.column_names and table.schema.field("mel").type == LEGACY_MEL:
        n_mels = table.column("n_mels").to_numpy()
        n_frames = table.column("n_frames").to_numpy()
        flat = pc.list_flatten(table.column("mel")).to_numpy()
        bounds = np.concatenate([[0], np.cumsum(n_mels.astype(np.int64) * n_frames)])
        table = with_values(table, [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])], "float32")
    return schemas.conform(table, schemas.MEL_SHARD)


def values(table: pa.Table) -> np.ndarray:
    """The spectrograms of rows of schemas.MEL_SHARD (see :func:`conform`) as one
    (rows, n_mels, n_frames) array of their dtype.

    Read-only: it shares the table's memory where one buffer holds the rows. Raises
    ValueError when the rows differ in shape or dtype, or hold the wrong number of
    bytes for their shape.
    """
    shapes = set(zip(table.column("n_mels").to_pylist(), table.column("n_frames").to_pylist()))
    kinds = set(pc.unique(table.column("dtype")).to_pylist())
    if len(shapes) > 1 or len(kinds) > 1:
        raise ValueError(f"mel excerpts of different shapes {sorted(shapes)} or dtypes {sorted(kinds)}")
    if not shapes:
        return np.zeros((0, 0, 0), dtype=np.float32)
    (n_mels, n_frames), kind = shapes.pop(), numpy_dtype(kinds.pop())
    column = table.column("mel")
    mel = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    offsets = np.frombuffer(mel.buffers()[1], np.int32)[mel.offset:mel.offset + len(mel) + 1]
    size = n_mels * n_frames * kind.itemsize
    if (np.diff(offsets) != size).any():
        raise ValueError(f"a mel excerpt holds other than the {size} bytes of {n_mels} x "
                         f"{n_frames} {kind.name} values")
    return np.frombuffer(mel.buffers()[2], kind, count=len(mel) * n_mels * n_frames,
                         offset=int(offsets[0])).reshape(len(mel), n_mels, n_frames)
