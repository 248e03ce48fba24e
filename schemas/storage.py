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

import pyarrow as pa
import pyarrow.parquet as pq

import schemas

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


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_table(table: pa.Table, path: str | os.PathLike, schema: pa.Schema,
                params: Mapping[str, object] | None = None) -> None:
    """Write ``table`` conformed to ``schema`` (with ``params`` as metadata) atomically."""
    table = schemas.conform(table, schema).replace_schema_metadata(
        schemas.with_metadata(schema, params).metadata)
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)
    logger.info("wrote %d rows to %s", table.num_rows, path)


def read_table(path: str | os.PathLike, schema: pa.Schema) -> pa.Table:
    """Read a Parquet file or directory of files and conform it to ``schema``.

    Raises ValueError naming ``path`` when the columns do not fit the schema.
    """
    try:
        table = pq.read_table(path, columns=schema.names)
        return schemas.conform(table, schema)
    except (ValueError, pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ValueError(f"{path}: does not match the expected schema: {err}") from err


def stream_batches(path: str | os.PathLike, schema: pa.Schema, columns: list[str],
                   size: int) -> Iterator[pa.RecordBatch]:
    """``columns`` of a Parquet file or directory of files (in name order), ``size`` rows
    at a time, read as they go: memory is bounded by ``size``, not by the writer's row
    groups. Raises ValueError naming a file whose columns do not fit ``schema``, before
    any row is read."""
    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    for file in files:
        try:
            schemas.conform(pq.read_schema(file).empty_table(), schema)
        except (ValueError, pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise ValueError(f"{file}: does not match the expected schema: {err}") from err
    for file in files:
        # no pre-buffering: it would read a whole row group's column chunks at once
        reader = pq.ParquetFile(file, pre_buffer=False, buffer_size=1 << 20)
        yield from reader.iter_batches(batch_size=size, columns=columns)


def read_params(path: str | os.PathLike) -> dict:
    """The params stored in the schema metadata of a Parquet file or directory of parts."""
    path = Path(path)
    first = min(path.glob("*.parquet")) if path.is_dir() else path
    return schemas.params_of(pq.read_schema(first))
