"""What the pipeline accepts as play counts: formats and how they are recognised.

Shared by the ALS job, which reads the plays, and the doctor, which checks them.
"""
from __future__ import annotations

from pathlib import Path

FORMATS = ("parquet", "csv", "triplets")
_FORMAT_OF_EXTENSION = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv",
                        ".tsv": "triplets", ".txt": "triplets", ".triplets": "triplets"}
_COMPRESSION_EXTENSIONS = {".gz", ".bz2", ".xz", ".zst", ".lz4", ".snappy", ".deflate"}


class PlaysInputError(ValueError):
    """The play-count input cannot be used; the message names the input and why."""


def _format_of_name(name: str) -> str | None:
    path = Path(name.rstrip("/"))
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in _COMPRESSION_EXTENSIONS:
        suffixes.pop()
    return _FORMAT_OF_EXTENSION.get(suffixes[-1]) if suffixes else None


def local_path(path: str) -> Path | None:
    """``path`` on the local file system, or None for other file systems (hdfs://...)."""
    if path.startswith("file:"):
        return Path("/" + path.removeprefix("file:").lstrip("/"))
    return None if "://" in path else Path(path)


def plays_format(plays_path: str, requested: str = "auto") -> str:
    """The input format: ``requested``, else by the extension of the path or of
    the files in a local directory, else Parquet."""
    if requested != "auto":
        if requested not in FORMATS:
            raise PlaysInputError(f"{plays_path}: unknown format {requested!r}; use one of {FORMATS}")
        return requested
    names = [plays_path]
    local = local_path(plays_path)
    if local is not None and local.is_dir():
        names = [p.name for p in local.iterdir() if not p.name.startswith(("_", "."))]
    found = {_format_of_name(name) for name in names} - {None}
    if len(found) > 1:
        raise PlaysInputError(f"{plays_path}: holds files of several formats {sorted(found)}; "
                              "choose one with --format")
    return found.pop() if found else "parquet"


def delimiter(text: str) -> str:
    """A CSV delimiter as typed on a command line: '\\t' (backslash, t) is a tab."""
    return "\t" if text == "\\t" else text
