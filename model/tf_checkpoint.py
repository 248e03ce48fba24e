"""Reading a TensorFlow checkpoint's variables without TensorFlow.

A checkpoint prefix P names P.index, a LevelDB-format table mapping each variable's name to
a serialized BundleEntryProto (dtype, shape, shard, offset, size, CRC-32C), and
P.data-SSSSS-of-NNNNN, the shards holding the raw little-endian tensors. The few protobuf
fields needed are decoded here by hand. Every block and every tensor read is checked
against its checksum, so a damaged file fails rather than yielding wrong weights.
"""
from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.crc32c import crc32c


class WeightsError(ValueError):
    """A weight file is missing, damaged, or in a form this reader does not handle."""


_FOOTER = 48  # two block handles padded to 40 bytes, then the table's magic number
_TABLE_MAGIC = 0xDB4775248B80FB57
_BLOCK_TRAILER = 5  # compression byte, masked CRC-32C of the block and that byte
_UNCOMPRESSED, _SNAPPY = 0, 1
# tensorflow/core/framework/types.proto; strings and bfloat16 are not handled.
_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?",
           17: "<u2", 19: "<f2", 22: "<u4", 23: "<u8"}


@dataclass(frozen=True)
class Entry:
    """Where one variable lies: offset and size in bytes within its shard."""
    dtype: int  # TensorFlow's DataType number
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int  # masked, as stored
    sliced: bool  # a partitioned variable, whose parts are stored under other names


def _masked(crc: int) -> int:
    """LevelDB's and TensorFlow's masking of a stored CRC (rotate right 15, add a constant)."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(buffer: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buffer[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(message: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: ints for varint and fixed fields,
    bytes for length-delimited ones."""
    pos = 0
    while pos < len(message):
        key, pos = _varint(message, pos)
        wire = key & 7
        if wire == 0:
            value, pos = _varint(message, pos)
        elif wire == 2:
            length, pos = _varint(message, pos)
            value, pos = message[pos:pos + length], pos + length
            if pos > len(message):
                raise ValueError("a field runs past the end of its message")
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, pos = int.from_bytes(message[pos:pos + width], "little"), pos + width
        else:
            raise ValueError(f"protobuf wire type {wire}")
        yield key >> 3, value


def _shape(message: bytes) -> tuple[int, ...]:
    """TensorShapeProto: repeated Dim (field 2), each with its size (field 1)."""
    dims = []
    for number, dim in _fields(message):
        if number == 2:
            size = dict(_fields(dim)).get(1, 0)
            dims.append(size - (1 << 64) if size >= 1 << 63 else size)  # int64
    return tuple(dims)


def _entry(value: bytes) -> Entry:
    """BundleEntryProto: dtype, shape, shard_id, offset, size, crc32c, slices (fields 1-7)."""
    fields = {1: 0, 2: b"", 3: 0, 4: 0, 5: 0, 6: 0}
    sliced = False
    for number, field in _fields(value):
        fields[number] = field
        sliced = sliced or number == 7
    return Entry(fields[1], _shape(fields[2]), *(fields[n] for n in (3, 4, 5, 6)), sliced)


def _block(table: bytes, handle: bytes) -> bytes:
    """The contents of the block a BlockHandle (offset, size varints) points at."""
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    end = offset + size
    if end + _BLOCK_TRAILER > len(table):
        raise ValueError(f"a block at byte {offset} runs past the end of the file")
    compression = table[end]
    (stored,) = struct.unpack_from("<I", table, end + 1)
    if _masked(crc32c(table[offset:end + 1])) != stored:
        raise ValueError(f"the block at byte {offset} fails its checksum")
    if compression == _SNAPPY:
        raise ValueError("a snappy-compressed block (only uncompressed tables are read)")
    if compression != _UNCOMPRESSED:
        raise ValueError(f"a block with unknown compression {compression}")
    return table[offset:end]


def _block_items(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """A block's (key, value) pairs; each key stores only what differs from the one before."""
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 * (restarts + 1)
    if end < 0:
        raise ValueError("a block's restart array is longer than the block")
    key, pos = b"", 0
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + length]
        pos += length


def _table_items(table: bytes) -> Iterator[tuple[bytes, bytes]]:
    if len(table) < _FOOTER or struct.unpack_from("<Q", table, len(table) - 8)[0] != _TABLE_MAGIC:
        raise ValueError("not a checkpoint index (no table footer)")
    footer = table[-_FOOTER:]
    _, pos = _varint(footer, _varint(footer, 0)[1])  # skip the metaindex handle
    for _, handle in _block_items(_block(table, footer[pos:])):
        yield from _block_items(_block(table, handle))


def read_index(path: str | os.PathLike) -> tuple[int, dict[str, Entry]]:
    """The number of data shards and every variable's Entry, from a checkpoint's .index."""
    try:
        table = Path(path).read_bytes()
    except OSError as err:
        raise WeightsError(f"{path}: cannot read the checkpoint index ({err.strerror})") from None
    try:
        items = dict(_table_items(table))
        header = dict(_fields(items.pop(b"")))  # BundleHeaderProto
        if header.get(2, 0) != 0:
            raise ValueError("big-endian tensors")
        return header.get(1, 1), {key.decode(): _entry(value) for key, value in items.items()}
    except KeyError:
        raise WeightsError(f"{path}: damaged checkpoint index: no bundle header") from None
    except (ValueError, IndexError, struct.error, UnicodeDecodeError) as err:
        raise WeightsError(f"{path}: damaged or unsupported checkpoint index: {err}") from None


def _tensor(data, path: str, name: str, entry: Entry) -> np.ndarray:
    if entry.sliced:
        raise WeightsError(f"{path}: '{name}' is a partitioned variable, which is not read")
    if entry.dtype not in _DTYPES:
        raise WeightsError(f"{path}: '{name}' has TensorFlow dtype {entry.dtype}, "
                           f"which is not read")
    dtype = np.dtype(_DTYPES[entry.dtype])
    if any(d < 0 for d in entry.shape) or math.prod(entry.shape) * dtype.itemsize != entry.size:
        raise WeightsError(f"{path}: '{name}' is {entry.size} bytes, not a {dtype} "
                           f"tensor of shape {entry.shape}")
    data.seek(entry.offset)
    raw = data.read(entry.size)
    if len(raw) != entry.size:
        raise WeightsError(f"{path}: truncated within '{name}'")
    if _masked(crc32c(raw)) != entry.crc32c:
        raise WeightsError(f"{path}: damaged: '{name}' fails its checksum")
    return np.frombuffer(raw, dtype=dtype).reshape(entry.shape).copy()


def read_checkpoint(prefix: str | os.PathLike,
                    include: Callable[[str], bool] = lambda name: True) -> dict[str, np.ndarray]:
    """name -> array (the checkpoint's dtype and shape) of every variable `include` keeps.

    `prefix` is the path the checkpoint's files start with: `run/model.ckpt` for
    `run/model.ckpt.index`, or `run/` for files named `.index` inside `run`."""
    shards, entries = read_index(f"{prefix}.index")
    weights = {}
    for shard in range(shards):
        path = f"{prefix}.data-{shard:05d}-of-{shards:05d}"
        # Every tensor counts towards the length, read or not: a short file is a broken copy.
        end = max((e.offset + e.size for e in entries.values() if e.shard == shard), default=0)
        try:
            with open(path, "rb") as data:
                size = os.fstat(data.fileno()).st_size
                if size < end:
                    raise WeightsError(f"{path}: truncated: {size} bytes, where the index "
                                       f"places tensors up to byte {end}")
                weights.update((name, _tensor(data, path, name, e)) for name, e in entries.items()
                               if e.shard == shard and include(name))
        except OSError as err:
            raise WeightsError(f"{path}: cannot read checkpoint data ({err.strerror})") from None
    return weights
