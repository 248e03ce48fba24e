"""Tracks whose audio failed: their history over runs, and when each is tried again.

Every published run's dead letters are one attempt each (at the time the run was
published). A track is due again ``retry_after_days`` after its first failure, then
after twice as long at each further failure, so a broken file costs a few attempts,
not one every night; a track that since got a spectrogram leaves the history.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from schemas import layout, storage

# The longest wait between two attempts at a failing track.
MAX_WAIT_DAYS = 32.0


def history(params_dir: str | os.PathLike, retry_after_days: float,
            recovered: set[str] = frozenset()) -> pa.Table:
    """schemas.DEAD_LETTER_HISTORY of the published runs under ``params_dir``, one row
    per (track id, audio URI), without the ``recovered`` track ids."""
    attempts: dict[tuple, dict] = {}
    for path in layout.final_dead_letter_files(params_dir):
        when = dt.datetime.fromtimestamp(int(path.stat().st_mtime), dt.timezone.utc)
        for row in pq.read_table(path).to_pylist():
            if row["track_id"] in recovered:
                continue
            key = (row["track_id"], row["audio_uri"])
            seen = attempts.setdefault(key, {"track_id": key[0], "audio_uri": key[1],
                                             "attempts": 0, "first_attempt": when,
                                             "last_attempt": when})
            seen["attempts"] += 1
            seen["first_attempt"] = min(seen["first_attempt"], when)
            if when >= seen["last_attempt"]:
                seen.update(last_attempt=when, stage=row["stage"], error=row["error"])
    for seen in attempts.values():
        wait = min(retry_after_days * 2 ** (seen["attempts"] - 1), MAX_WAIT_DAYS)
        seen["next_attempt"] = seen["last_attempt"] + dt.timedelta(days=wait)
    rows = sorted(attempts.values(), key=lambda seen: (seen["track_id"] or "", seen["audio_uri"] or ""))
    return pa.Table.from_pylist(rows, schema=schemas.DEAD_LETTER_HISTORY)


def not_due(table: pa.Table, now: dt.datetime) -> list[dict]:
    """(track_id, audio_uri) rows of the history whose next attempt is still to come."""
    return [{"track_id": row["track_id"], "audio_uri": row["audio_uri"]}
            for row in table.to_pylist() if row["next_attempt"] > now]


def write(params_dir: str | os.PathLike, table: pa.Table) -> Path:
    path = layout.dead_letter_history(params_dir)
    storage.write_table(table, path, schemas.DEAD_LETTER_HISTORY)
    return path
