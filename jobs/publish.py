"""Publish a run's factors as one snapshot, behind a stable "latest" pointer.

    python -m jobs.publish --run-id 2026-11-30 --user-factors ALS/user_factors \\
        --track-factors FACTORS/track_factors.parquet --out DATA/published

A snapshot is <out>/<run id>/ holding user_factors.parquet, track_factors.parquet
(warm tracks from ALS, cold ones from audio, and a ``tags`` column: with --tags,
jobs/tags.py, each track's top tags, null where the taggers never heard it), with
--catalogue the title and artist of those tracks (catalogue.parquet), with --audience
the new releases' audience (audience.parquet, jobs/audience.py), with --index the
similar-track index (similar/, jobs/index.py), the users' factors again as one NumPy
matrix (user_factors.npy), with --plays (Parquet) who played what by row numbers
(played/, schemas/played.py), and snapshot.json (run id, factor
space, how ALS made it (a refit, or a fold-in into which refit's space), model and
taggers' versions, the model file served and the item factors of the
space it learned, why the night was degraded or null, row counts, time, the catalogue
and plays it was made from). Users and tracks of one snapshot share one factor space; consumers read
<out>/latest/, a symbolic link switched atomically once the new snapshot is complete,
so they never mix one night's users with another's tracks.

Retention: after publishing, snapshots beyond the newest --keep are removed, never
the one "latest" points to, and with --runs so are those runs' outputs
(<runs>/<run id>/: ALS, models, factors).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import schemas
from schemas import cli, factor_matrix, layout, model_file, played, storage
from schemas.config import PublishConfig

logger = logging.getLogger(__name__)


USER_ROW_GROUP = 16_384
PLAY_IDS = pa.schema([pa.field("user_id", pa.string(), nullable=False),
                      pa.field("track_id", pa.string(), nullable=False)])


def publish(run_id: str, user_factors: Path, track_factors: Path, out: Path,
            keep: int = PublishConfig.keep, runs: Path | None = None,
            catalogue: Path | None = None, plays: Path | None = None,
            audience: Path | None = None, index: Path | None = None,
            tags: Path | None = None) -> Path:
    """Write the snapshot of ``run_id`` under ``out``, point ``latest`` at it, apply
    retention (to ``runs``/<run id> too); returns the snapshot directory."""
    # sorted by id in small row groups: a query finds a user's factors by reading
    # one row group (jobs/query.py), not the table
    users = storage.read_table(user_factors, schemas.USER_FACTORS).sort_by("user_id")
    tracks, taggers = with_tags(storage.read_table(track_factors, schemas.TRACK_FACTORS), tags)
    names = None
    if catalogue is not None:
        names = storage.read_table(catalogue, schemas.CATALOGUE)
        names = names.filter(pc.is_in(names["track_id"], value_set=tracks["track_id"]))
    learned = storage.read_params(user_factors)
    space = learned.get(model_file.FACTOR_SPACE)
    served = storage.read_params(track_factors)  # jobs/score.py: the model, and any degradation
    versions = sorted({v for v in tracks.column("model_version").to_pylist() if v})
    target = layout.snapshot_dir(out, run_id)
    with storage.atomic_dir(target) as tmp:
        storage.write_table(users, tmp / layout.SNAPSHOT_USERS, schemas.USER_FACTORS,
                            {"run_id": run_id, model_file.FACTOR_SPACE: space},
                            row_group_size=USER_ROW_GROUP)
        np.save(tmp / layout.SNAPSHOT_USER_MATRIX, factor_matrix(users))
        rows = played_rows(plays, users, tracks) if plays is not None else None
        if rows is not None:
            played.write(tmp / layout.SNAPSHOT_PLAYED, *rows, users.num_rows, tracks.num_rows)
        storage.write_table(tracks, tmp / layout.SNAPSHOT_TRACKS, schemas.SNAPSHOT_TRACKS,
                            {"run_id": run_id, model_file.FACTOR_SPACE: space})
        if names is not None:
            storage.write_table(names, tmp / layout.SNAPSHOT_CATALOGUE, schemas.SNAPSHOT_CATALOGUE)
        if audience is not None:
            shutil.copyfile(audience, tmp / layout.AUDIENCE)
        if index is not None:
            shutil.copytree(index, tmp / layout.INDEX)
        storage.write_text(tmp / layout.SNAPSHOT_MANIFEST, json.dumps({
            "run_id": run_id, "factor_space": space, "model_versions": versions,
            "taggers_versions": taggers,
            "degraded": served.get("degraded"),
            # a full refit or a fold-in into an earlier refit's space (jobs/als/foldin.py)
            "als": {key: learned[key] for key in ("night", "base", "new_share", "why")
                    if key in learned},
            "model": {"file": served.get("model"), "item_factors": served.get("model_factors")},
            "users": users.num_rows, "tracks": tracks.num_rows,
            "tagged_tracks": tracks.num_rows - tracks.column("tags").null_count,
            "inputs": {"catalogue": catalogue and str(Path(catalogue).resolve()),
                       "plays": plays and str(Path(plays).resolve())},
            "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2))
    point_latest(out, target)
    for old in expired(out, keep):
        shutil.rmtree(old)
        logger.info("retention: removed snapshot %s", old)
        if runs is not None and (runs / old.name).is_dir():
            shutil.rmtree(runs / old.name)
            logger.info("retention: removed the outputs of run %s", runs / old.name)
    logger.info("published %s: %d users, %d tracks, factor space %s; %s -> %s%s",
                run_id, users.num_rows, tracks.num_rows, space, layout.latest(out), target.name,
                f"; degraded: {served['degraded']}" if served.get("degraded") else "")
    return target


def played_rows(plays: Path, users: pa.Table, tracks: pa.Table
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """(user rows, track rows) of the plays in ``plays`` whose user and track the
    snapshot holds; None when the plays are not Parquet (the queries then read the
    file, as the manifest names it)."""
    files = storage.parquet_files(plays)
    if not files or any(file.suffix != ".parquet" for file in files):
        logger.info("%s is not Parquet: the snapshot keeps no plays of its own", plays)
        return None
    table = storage.read_table(plays, PLAY_IDS)
    user_rows = pc.index_in(table["user_id"], value_set=users["user_id"])
    track_rows = pc.index_in(table["track_id"], value_set=tracks["track_id"])
    known = pc.and_(pc.is_valid(user_rows), pc.is_valid(track_rows))
    return (user_rows.filter(known).to_numpy().astype(np.int64),
            track_rows.filter(known).to_numpy().astype(np.int64))


def with_tags(tracks: pa.Table, tags: Path | None) -> tuple[pa.Table, list[str]]:
    """(``tracks`` with each one's top tags from the table ``tags`` (schemas.TRACK_TAGS),
    null for a track it does not hold or when there is none; the taggers' versions)."""
    if tags is None:
        return tracks.append_column("tags", pa.nulls(tracks.num_rows, schemas.TAGS)), []
    table = storage.read_table(tags, schemas.TRACK_TAGS)
    # by position, not by a join: the index and the query rely on the table's order
    rows = pc.index_in(tracks["track_id"], value_set=table["track_id"])
    return (tracks.append_column("tags", table["tags"].take(rows)),
            sorted(pc.unique(table["taggers_version"]).to_pylist()))


def point_latest(out: Path, target: Path) -> None:
    """Switch the "latest" link to ``target`` atomically (a new link, then a rename)."""
    link = layout.latest(out)
    tmp = out / f".tmp-latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(target.name, tmp)
    os.replace(tmp, link)


def snapshots(out: Path) -> list[Path]:
    """Published snapshots under ``out``, oldest first (by modification time)."""
    found = [path for path in out.iterdir() if path.is_dir() and not path.is_symlink()
             and not path.name.startswith(".")]
    return sorted(found, key=lambda path: (path.stat().st_mtime, path.name))


def expired(out: Path, keep: int) -> list[Path]:
    """Snapshots beyond the newest ``keep``; never the one "latest" points to."""
    current = layout.latest(out).resolve()
    old = snapshots(out)[:-keep] if keep > 0 else snapshots(out)
    return [path for path in old if path.resolve() != current]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.publish", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-id", required=True, help="name of the snapshot")
    parser.add_argument("--user-factors", required=True, type=Path,
                        help="ALS user factors of the run (schemas.USER_FACTORS)")
    parser.add_argument("--track-factors", required=True, type=Path,
                        help="the run's combined factor table (schemas.TRACK_FACTORS)")
    parser.add_argument("--out", required=True, type=Path,
                        help="directory of the snapshots and of the 'latest' link")
    parser.add_argument("--catalogue", type=Path,
                        help="the catalogue: titles and artists of the tracks are kept")
    parser.add_argument("--plays", type=Path,
                        help="the plays the run learned from (recorded, for queries that leave "
                             "out what a user played)")
    parser.add_argument("--audience", type=Path,
                        help="the new releases' audience table (jobs/audience.py) to include")
    parser.add_argument("--index", type=Path,
                        help="the similar-track index (jobs/index.py) to include")
    parser.add_argument("--tags", type=Path,
                        help="every track's top tags (jobs/tags.py, schemas.TRACK_TAGS) for the "
                             "track table")
    parser.add_argument("--runs", type=Path,
                        help="directory of the runs' outputs (DATA/runs); removed with their "
                             "snapshots")
    cli.add_settings(parser, PublishConfig)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    args = parse_args(argv)

    def body() -> None:
        target = layout.snapshot_dir(args.out, args.run_id)
        if target.exists():
            raise cli.UsageError(f"snapshot {target} already exists")
        try:
            publish(args.run_id, args.user_factors, args.track_factors, args.out, args.keep,
                    args.runs, args.catalogue, args.plays, args.audience, args.index, args.tags)
        except OSError as err:
            if err.filename and not str(err.filename).startswith(str(args.out)):
                raise  # an input: it names its file
            # a full disk or a read-only file system: say which snapshot could not be written
            raise cli.JobError(f"cannot write snapshot {target}: {err.strerror or err}") from err
    return cli.run_job(body, logger, ValueError)


if __name__ == "__main__":
    sys.exit(main())
