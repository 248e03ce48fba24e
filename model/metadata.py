"""Catalogue metadata as tokens for the network's metadata branch (late fusion).

A track's tokens are its values of the catalogue's metadata columns, where present:
``artist=<name>``, ``genre=<name>`` and one ``tag=<name>`` per tag (a list column, or
one string of comma-separated tags). A model knows the tokens of its training
tracks (its vocabulary, kept in the model file); any other token, such as the name
of an artist it never saw, is left out, so that track is predicted from its audio
and whatever else it has.
"""
from __future__ import annotations

import os
from typing import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS = ("artist", "genre", "tags")
MAX_TOKENS = 16  # per track; a track with more tags keeps its first ones

Tokens = Mapping[str, tuple[str, ...]]


def _values(column: str, value) -> list[str]:
    if value is None:
        return []
    if column == "tags":
        items = value if isinstance(value, list) else str(value).split(",")
        return [f"tag={item.strip().lower()}" for item in items if item and item.strip()]
    return [f"{column}={str(value).strip().lower()}"] if str(value).strip() else []


def tokens_of(table: pa.Table) -> dict[str, tuple[str, ...]]:
    """Tokens of every track of a catalogue table (the COLUMNS it has)."""
    present = [c for c in COLUMNS if c in table.column_names]
    columns = {c: table.column(c).to_pylist() for c in present}
    return {track: tuple(token for c in present for token in _values(c, columns[c][i]))
            for i, track in enumerate(table.column("track_id").to_pylist())}


def read_tokens(catalogue: str | os.PathLike) -> dict[str, tuple[str, ...]]:
    """Tokens of every track of the catalogue at ``catalogue``; ValueError naming it
    when it has none of the metadata columns."""
    try:
        names = pq.read_schema(catalogue).names if os.path.isfile(catalogue) else \
            pq.ParquetDataset(catalogue).schema.names
        present = [c for c in COLUMNS if c in names]
        if not present:
            raise ValueError(f"has none of the metadata columns {list(COLUMNS)}")
        return tokens_of(pq.read_table(catalogue, columns=["track_id", *present]))
    except (ValueError, OSError, pa.ArrowInvalid) as err:
        raise ValueError(f"{catalogue}: cannot read track metadata: {err}") from err


def vocabulary(tokens: Tokens, track_ids: Iterable[str]) -> tuple[str, ...]:
    """The sorted tokens of ``track_ids`` (the training tracks)."""
    return tuple(sorted({token for t in track_ids for token in tokens.get(t, ())}))


def token_ids(vocab: Sequence[str], tokens: Tokens, track_ids: Sequence[str],
              withhold: Sequence[str] = ()) -> np.ndarray:
    """(len(track_ids), MAX_TOKENS) int64: 1 + the vocabulary index of each known
    token, 0 for padding. Tokens of the ``withhold`` columns (e.g. ("artist",)) are
    left out, as for a track whose artist the model never saw."""
    index = {token: i + 1 for i, token in enumerate(vocab)}
    prefixes = tuple("tag=" if c == "tags" else f"{c}=" for c in withhold)
    out = np.zeros((len(track_ids), MAX_TOKENS), dtype=np.int64)
    for row, track in enumerate(track_ids):
        known = [index[t] for t in tokens.get(track, ()) if t in index and not t.startswith(prefixes)]
        out[row, :len(known[:MAX_TOKENS])] = known[:MAX_TOKENS]
    return out
