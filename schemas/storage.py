"""Atomic outputs and schema-checked Parquet I/O shared by every stage.

A stage writes into a hidden temporary sibling of its output directory and renames
it into place only when everything inside is complete, so a run killed part-way
never leaves something that looks finished (Luigi tests completeness by existence).
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import schemas
from schemas import arrow

logger = logging.getLogger(__name__)


# Temporary siblings are named .tmp-<name>@<host>.<pid>.<random>, so that the leftovers
# of a killed process can be told from the work of a live one.
_OWNED = re.compile(r"^\.tmp-.+@(?P<host>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}$")
# Leftovers without an owner in their name are removed once this old.
_STALE_AFTER_S = 24 * 3600


def _temporary(final: Path) -> Path:
    remove_stale(final.parent)
    return final.parent / f".tmp-{final.name}@{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(parent: Path) -> list[Path]:
    """Remove the temporary siblings in ``parent`` that killed processes left behind:
    those of a process of this host that no longer runs, and unowned ones over a day
    old. Returns what was removed."""
    removed = []
    try:
        entries = [entry for entry in parent.iterdir() if entry.name.startswith(".tmp-")]
    except FileNotFoundError:
        return removed
    host = socket.gethostname()
    for entry in entries:
        owner = _OWNED.match(entry.name)
        try:
            stale = (owner.group("host") == host and not _alive(int(owner.group("pid")))
                     if owner else time.time() - entry.lstat().st_mtime > _STALE_AFTER_S)
        except FileNotFoundError:
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(
                missing_ok=True)
            removed.append(entry)
            logger.info("removed %s, left by a process that was killed", entry)
    return removed


@contextlib.contextmanager
def exclusive(lock_file: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created if needed), waiting for it if
    another process holds it: for work that two runs must not do side by side."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another run holding %s", lock_file)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``final`` on success.

    On an exception the temporary directory is removed and ``final`` is untouched.
    Raises FileExistsError when ``final`` already exists: outputs are immutable.
    """
    final = Path(final)
    if final.exists():
        raise FileExistsError(f"output {final} already exists; remove it to rebuild")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(final)
    tmp.mkdir()
    try:
        yield tmp
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; what is written there replaces
    ``final`` on success, and is removed on an exception."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def scratch_dir(beside: str | os.PathLike) -> Iterator[Path]:
    """A temporary directory beside ``beside``, on its filesystem (which a job's
    workers see, as they see its output), removed afterwards whatever happens."""
    beside = Path(beside)
    tmp = _temporary(beside.with_name(f"{beside.name}.parts"))
    tmp.mkdir(parents=True)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_table(table: pa.Table, path: str | os.PathLike, schema: pa.Schema,
                params: Mapping[str, object] | None = None,
                row_group_size: int | None = None) -> None:
    """Write ``table`` conformed to ``schema`` (with ``params`` as metadata) atomically,
    in row groups of ``row_group_size`` rows (default: pyarrow's)."""
    table = schemas.conform(table, schema).replace_schema_metadata(
        schemas.with_metadata(schema, params).metadata)
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size)
    logger.info("wrote %d rows to %s", table.num_rows, path)


def read_table(path: str | os.PathLike, schema: pa.Schema) -> pa.Table:
    """Read a Parquet file or directory of files and conform it to ``schema``.

    Raises ValueError naming ``path`` when the columns do not fit the schema.
    """
    try:
        if Path(path).is_file():  # (pq.read_table imports pyarrow.dataset and pandas)
            reader = pq.ParquetFile(path)
            has = reader.schema_arrow.names
            missing = [name for name in schema.names if name not in has]
            if missing:
                raise ValueError(f"table is missing columns {missing}; has {has}")
            table = reader.read(columns=schema.names)
        else:
            table = pq.read_table(path, columns=schema.names)
        return schemas.conform(table, schema)
    except (ValueError, pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ValueError(f"{path}: does not match the expected schema: {err}") from err


def parquet_files(path: str | os.PathLike) -> list[Path]:
    """A Parquet file, or the Parquet files of a directory in name order."""
    path = Path(path)
    return sorted(path.glob("*.parquet")) if path.is_dir() else [path]


def read_where(path: str | os.PathLike, column: str, values: list[str],
               columns: list[str]) -> pa.Table:
    """``columns`` of the rows of a Parquet file or directory whose string ``column`` is
    one of ``values``: a row group whose statistics rule them all out is skipped, and
    the others are read for ``column`` first, the rest only where it matches, so a
    lookup in a large table reads little of it (and imports no pyarrow.dataset)."""
    wanted = arrow.strings(values)
    found, schema = [], None
    for file in parquet_files(path):
        reader = pq.ParquetFile(file)
        missing = [name for name in {column, *columns} if name not in reader.schema_arrow.names]
        if missing:
            raise ValueError(f"{file}: no column {missing} (has {reader.schema_arrow.names})")
        schema = pa.schema([reader.schema_arrow.field(name) for name in columns])
        leaves = [reader.schema.column(i).path for i in range(reader.metadata.num_columns)]
        leaf = leaves.index(column)
        for group in range(reader.num_row_groups):
            stats = reader.metadata.row_group(group).column(leaf).statistics
            bounded = stats is not None and stats.has_min_max and isinstance(stats.min, str)
            if bounded and not any(stats.min <= value <= stats.max for value in values):
                continue
            keys = reader.read_row_group(group, columns=[column]).column(0)
            if not pc.any(pc.is_in(keys, value_set=wanted)).as_py():
                continue
            # the matching row group a batch at a time: a writer's row group can hold
            # millions of rows, of which few are wanted
            read = [column, *(name for name in columns if name != column)]
            for batch in pq.ParquetFile(file, pre_buffer=False).iter_batches(
                    batch_size=65_536, row_groups=[group], columns=read):
                match = pc.is_in(batch.column(column), value_set=wanted)
                if pc.any(match).as_py():
                    found.append(pa.Table.from_batches([batch.filter(match)]).select(columns))
    if not found:  # (schema.empty_table() would import pandas)
        return pa.Table.from_batches([], schema if schema is not None else pa.schema([]))
    return pa.concat_tables(found)


def stream_batches(path: str | os.PathLike, schema: pa.Schema, columns: list[str],
                   size: int) -> Iterator[pa.RecordBatch]:
    """``columns`` of a Parquet file or directory of files (in name order), ``size`` rows
    at a time, read as they go: memory is bounded by ``size``, not by the writer's row
    groups. Raises ValueError naming a file whose columns do not fit ``schema``, before
    any row is read."""
    return stream_rows(path, schema, columns, 0, None, size)


def check_files(path: str | os.PathLike, schema: pa.Schema) -> list[Path]:
    """The Parquet files of ``path``, once each one's columns are known to fit
    ``schema`` (ValueError naming the file that does not); no row is read."""
    files = parquet_files(path)
    for file in files:
        try:
            schemas.conform(pa.Table.from_batches([], pq.read_schema(file)), schema)
        except (ValueError, pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise ValueError(f"{file}: does not match the expected schema: {err}") from err
    return files


def count_rows(path: str | os.PathLike) -> int:
    """Rows of a Parquet file or directory of files, from their footers."""
    return sum(pq.ParquetFile(file).metadata.num_rows for file in parquet_files(path))


def stream_rows(path: str | os.PathLike, schema: pa.Schema, columns: list[str], start: int,
                stop: int | None, size: int) -> Iterator[pa.RecordBatch]:
    """As :func:`stream_batches`, rows ``start`` to ``stop`` (None: the end) only, in
    the files' order: row groups wholly outside are not read, so a worker given a range
    of a large table reads about its range."""
    files = check_files(path, schema)
    offset = 0
    for file in files:
        if stop is not None and offset >= stop:  # the files after the range: not opened
            break
        # no pre-buffering: it would read a whole row group's column chunks at once
        reader = pq.ParquetFile(file, pre_buffer=False, buffer_size=1 << 20)
        groups, first = [], None
        for group in range(reader.num_row_groups):
            rows = reader.metadata.row_group(group).num_rows
            if offset + rows > start and (stop is None or offset < stop):
                groups.append(group)
                first = offset if first is None else first
            offset += rows
        at = first
        for batch in reader.iter_batches(batch_size=size, row_groups=groups, columns=columns) \
                if groups else ():
            low = max(start - at, 0)
            high = batch.num_rows if stop is None else min(stop - at, batch.num_rows)
            if high > low:
                yield batch if (low, high) == (0, batch.num_rows) else batch.slice(low, high - low)
            at += batch.num_rows


def matrix_slices(path: str | os.PathLike, size: int) -> Iterator[np.ndarray]:
    """The rows of a 2-d NumPy file (np.save), ``size`` at a time, read from the file
    rather than mapped: memory holds one slice, however large the matrix."""
    with open(path, "rb") as file:
        version = np.lib.format.read_magic(file)
        header = {(1, 0): np.lib.format.read_array_header_1_0,
                  (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if header is None:
            raise ValueError(f"{path}: NumPy file format {version} is not read here")
        (rows, columns), fortran, dtype = header(file)
        if fortran:
            raise ValueError(f"{path}: a column-major matrix; rows cannot be read in slices")
        for start in range(0, rows, size):
            count = min(size, rows - start)
            yield np.fromfile(file, dtype, count * columns).reshape(count, columns)


def read_params(path: str | os.PathLike) -> dict:
    """The params stored in the schema metadata of a Parquet file or directory of parts."""
    path = Path(path)
    first = min(path.glob("*.parquet")) if path.is_dir() else path
    return schemas.params_of(pq.read_schema(first))
