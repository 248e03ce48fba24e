"""Arrow schemas for every table the pipeline reads or writes.

Writers cast to these schemas and readers check against them, so a stage that
drifts from the contract fails loudly at its boundary instead of downstream.
Bump ``SCHEMA_VERSION`` when a schema changes incompatibly; it is stored in the
metadata of every file written with :func:`with_metadata`.
"""
from __future__ import annotations

import hashlib
import json
from typing import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import arrow

SCHEMA_VERSION = "1"

FACTORS = pa.list_(pa.float32())


def factors_column(matrix: np.ndarray) -> pa.Array:
    """(n, rank) float32 -> a FACTORS column."""
    rank = matrix.shape[1]
    return pa.ListArray.from_arrays(np.arange(0, matrix.size + 1, rank, dtype=np.int32),
                                    pa.array(matrix.astype(np.float32).ravel()))


def factor_matrix(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    """A table's ``factors`` column (FACTORS) as (rows, rank) float32."""
    if table.num_rows == 0:
        return np.zeros((0, 0), np.float32)
    flat = arrow.values(pc.list_flatten(table.column("factors")))
    return flat.reshape(table.num_rows, -1).astype(np.float32, copy=False)


def factors_version(table: pa.Table) -> str:
    """SHA-1 of a factor table's track ids and factors, in order: the same content
    gives the same version whatever file it was copied to."""
    digest = hashlib.sha1()
    for track in table.column("track_id").to_pylist():
        digest.update(track.encode() + b"\0")
    digest.update(np.ascontiguousarray(factor_matrix(table)).tobytes())
    return digest.hexdigest()


# Play counts: one row per (user, track) pair, counts of listens.
PLAYS = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("track_id", pa.string(), nullable=False),
    pa.field("plays", pa.int64(), nullable=False),
])

# Plays that failed validation, kept with the reason instead of being dropped.
QUARANTINED_PLAYS = pa.schema([
    pa.field("user_id", pa.string()),
    pa.field("track_id", pa.string()),
    pa.field("plays", pa.string()),
    pa.field("reason", pa.string(), nullable=False),
])

# How often each track ALS learned from was played: its listeners (users with a play
# count) and the sum of their counts.
TRACK_PLAYS = pa.schema([
    pa.field("track_id", pa.string(), nullable=False),
    pa.field("listeners", pa.int64(), nullable=False),
    pa.field("plays", pa.int64(), nullable=False),
])

# What a full ALS refit learned from, per user (user_digests/) and per track
# (track_digests/): a hash of its (other id, plays) pairs, so that a fold-in night finds
# the users and tracks whose plays changed since (jobs/als/foldin.py).
PLAY_DIGESTS = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("digest", pa.string(), nullable=False),
])

# Catalogue: every track the service knows, with where its audio lives.
CATALOGUE = pa.schema([
    pa.field("track_id", pa.string(), nullable=False),
    pa.field("audio_uri", pa.string(), nullable=False),
    pa.field("title", pa.string()),
    pa.field("artist", pa.string()),
    pa.field("duration_s", pa.float32()),
])

# What a published snapshot keeps of the catalogue, to name the tracks it answers with.
SNAPSHOT_CATALOGUE = pa.schema([
    pa.field("track_id", pa.string(), nullable=False),
    pa.field("title", pa.string()),
    pa.field("artist", pa.string()),
])

# Ground truth of the built-in demo data, one row per track: its style and tempo
# (what tastes follow), whether its plays were held out (cold), and its popularity.
DEMO_TRUTH = pa.schema([
    pa.field("track_id", pa.string(), nullable=False),
    pa.field("style", pa.string(), nullable=False),
    pa.field("tempo", pa.string(), nullable=False),
    pa.field("cold", pa.bool_(), nullable=False),
    pa.field("popularity", pa.float64(), nullable=False),
])

# String id -> dense int index used by Spark ALS. One table for users, one for tracks.
USER_IDS = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("user_index", pa.int32(), nullable=False),
])
TRACK_IDS = pa.schema([
    pa.field("track_id", pa.string(), nullable=False),
    pa.field("track_index", pa.int32(), nullable=False),
])

# ALS latent factors, float32 vectors of length rank.
USER_FACTORS = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("factors", FACTORS, nullable=False),
])
ITEM_FACTORS = pa.schema([
    pa.field("track_id", pa.string(), nullable=False),
    pa.field("factors", FACTORS, nullable=False),
])

# Log-mel excerpts (log-compressed power). ``mel`` holds an (n_mels, n_frames) array,
# row-major (mel band outer, time inner), as the little-endian bytes of ``dtype``
# (MelParams.dtype; schemas.mels reads and writes them). Bytes, not a list column: a
# row group then becomes one array without decoding list levels value by value, 6-7x
# faster (benchmarks/mel_reader.py).
MEL_SHARD = pa.schema([
    pa.field("track_id", pa.string(), nullable=False),
    pa.field("n_mels", pa.int32(), nullable=False),
    pa.field("n_frames", pa.int32(), nullable=False),
    pa.field("dtype", pa.string(), nullable=False),
    pa.field("mel", pa.binary(), nullable=False),
])

# Inputs a stage could not use, with the stage and the error, one row each.
DEAD_LETTERS = pa.schema([
    pa.field("track_id", pa.string()),
    pa.field("audio_uri", pa.string()),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("error", pa.string(), nullable=False),
])

# Every track whose audio keeps failing, across the runs of one set of mel parameters:
# its last stage and error, how often and when it was tried, and when it is next due.
DEAD_LETTER_HISTORY = pa.schema([
    pa.field("track_id", pa.string()),
    pa.field("audio_uri", pa.string()),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("error", pa.string(), nullable=False),
    pa.field("attempts", pa.int32(), nullable=False),
    pa.field("first_attempt", pa.timestamp("s", tz="UTC"), nullable=False),
    pa.field("last_attempt", pa.timestamp("s", tz="UTC"), nullable=False),
    pa.field("next_attempt", pa.timestamp("s", tz="UTC"), nullable=False),
])

# Factors predicted from audio for cold tracks.
PREDICTED_FACTORS = pa.schema([
    pa.field("track_id", pa.string(), nullable=False),
    pa.field("factors", FACTORS, nullable=False),
    pa.field("model_version", pa.string(), nullable=False),
])

# The audience of a new release: for each cold track, the users most likely to like it
# by predicted preference x_u . y_i, best first (rank 1).
AUDIENCE = pa.schema([
    pa.field("track_id", pa.string(), nullable=False),
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),
    pa.field("rank", pa.int32(), nullable=False),
])

# Every track of the catalogue that has factors, and where they came from
# (``source``): "als" (its plays), "audio" (the audio model: a cold track), or
# "als+audio" (a semi-cold track: its few plays, held toward its audio prediction);
# with its listeners and plays (0 for a cold track).
TRACK_FACTORS = pa.schema([
    pa.field("track_id", pa.string(), nullable=False),
    pa.field("factors", FACTORS, nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("model_version", pa.string()),
    pa.field("listeners", pa.int64()),
    pa.field("plays", pa.int64()),
])

# A track's tags, most probable first.
TAGS = pa.list_(pa.string())

# The pretrained taggers' (model/musicnn.py) most probable tags of every catalogue track
# that has a tagger input, most probable first; each tag's probability (its mean over
# the track's 3 s patches, the higher of the two taggers' where both know it); and the
# version of the taggers' weights (model/frontend.py version).
TRACK_TAGS = pa.schema([
    pa.field("track_id", pa.string(), nullable=False),
    pa.field("tags", TAGS, nullable=False),
    pa.field("probabilities", pa.list_(pa.float32()), nullable=False),
    pa.field("taggers_version", pa.string(), nullable=False),
])

# The published track table: the combined factors and each track's top tags, null
# where the taggers never heard the track (no tagger input).
SNAPSHOT_TRACKS = pa.schema([*TRACK_FACTORS, pa.field("tags", TAGS)])


def with_metadata(schema: pa.Schema, params: Mapping[str, object] | None = None) -> pa.Schema:
    """Return ``schema`` carrying the schema version and ``params`` (JSON) as metadata."""
    meta = {b"coldstart.schema_version": SCHEMA_VERSION.encode()}
    if params:
        meta[b"coldstart.params"] = json.dumps(dict(params), sort_keys=True).encode()
    return schema.with_metadata(meta)


def params_of(schema: pa.Schema) -> dict:
    """The ``params`` stored by :func:`with_metadata`, or {} when there are none."""
    raw = (schema.metadata or {}).get(b"coldstart.params")
    return json.loads(raw) if raw else {}


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast ``table``'s columns to ``schema``, failing on missing columns.

    Raises ValueError naming the missing columns, so a reader pointed at the wrong
    table says so instead of failing on a later KeyError.
    """
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise ValueError(f"table is missing columns {missing}; has {table.column_names}")
    return table.select(schema.names).cast(schema)
