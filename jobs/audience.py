"""The audience of every new release: each cold track's top users by predicted preference.

    python -m jobs.audience --user-factors ALS/user_factors \\
        --track-factors FACTORS/track_factors.parquet --out audience.parquet [--k 100] \\
        [--tracks-per-part N] [--users-per-part N] [Beam options]

For every track whose factors came from its audio (``source`` "audio" in the combined
table), the --k users of highest x_u . y_i, best first (schemas.AUDIENCE).

A Beam pipeline (schemas/pipelines.py; one worker in this process unless told
otherwise). The new releases are cut into parts of --tracks-per-part tracks and the
users into ranges of --users-per-part; each pair of a part and a range is one piece
of work, which streams its users' factors --user-batch at a time, scores them against
its tracks 1,024 at a time and keeps each track's running top k (schemas/ranking.py).
The pieces of one part are merged by user row (ties to the earlier user, whatever the
order they finish in), the ids of the users chosen are read, and the part is written;
the job joins the parts into one file. A worker's memory is bounded by its part and
the batches, not by the number of users.
"""
from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import schemas
from schemas import cli, factor_matrix, pipelines, storage
from schemas.config import QueryConfig
from schemas.ranking import RunningTop, merge_tops

logger = logging.getLogger(__name__)
TRACK_BATCH = 1024
TRACKS_PER_PART = 16_384  # a part's tops: 16,384 x k (100) x 12 bytes, about 20 MB
USERS_PER_PART = 10_000_000  # a piece scores at most this many users


def chosen_ids(user_factors: Path, rows: np.ndarray, size: int) -> pa.Array:
    """The user ids of ``rows`` (row numbers of the user factors, any shape), flat: the
    ids are streamed too, and only those chosen kept."""
    wanted = np.unique(rows)
    found, offset = [], 0
    for batch in storage.stream_batches(user_factors, schemas.USER_FACTORS, ["user_id"], size):
        inside = wanted[(wanted >= offset) & (wanted < offset + batch.num_rows)]
        found.append(pc.take(batch.column(0), inside - offset))
        offset += batch.num_rows
    ids = pa.concat_arrays(found) if found else pa.array([], pa.string())
    return pc.take(ids, np.searchsorted(wanted, rows.ravel()))


def score_piece(piece: tuple[int, np.ndarray, int, int], user_factors: Path, k: int,
                user_batch: int, track_batch: int) -> tuple[int, tuple[np.ndarray, np.ndarray]]:
    """(part, (scores, user rows)) of one piece (part, its tracks' factors, first user
    row, end): each track's best k users of the range, best first."""
    part, y, start, stop = piece
    starts = range(0, len(y), track_batch)
    tops = [RunningTop(len(y[first:first + track_batch]), k) for first in starts]
    for batch in storage.stream_rows(user_factors, schemas.USER_FACTORS, ["factors"], start,
                                     stop, user_batch):
        x = factor_matrix(batch)
        for top, first in zip(tops, starts):
            top.add(y[first:first + track_batch] @ x.T)
    return part, (np.concatenate([top.scores for top in tops]),
                  np.concatenate([top.columns for top in tops]) + start)


class MergePieces(beam.CombineFn):
    """One part's pieces as one top: the k best of each track over every range."""

    def __init__(self, k: int) -> None:
        self.k = k

    def create_accumulator(self):
        return None

    def add_input(self, top, piece):
        return piece if top is None else merge_tops(top, piece, self.k)

    def merge_accumulators(self, tops):
        return functools.reduce(self.add_input, tops, None)

    def extract_output(self, top):
        return top


def write_part(part: int, top: tuple[np.ndarray, np.ndarray], ids: pa.Array, user_factors: Path,
               folder: Path, schema: pa.Schema, user_batch: int, track_batch: int) -> None:
    """Part ``part``'s rows (its tracks ``ids``, their users and scores) to ``folder``,
    a row group per ``track_batch`` tracks."""
    scores, rows = top
    n = rows.shape[1]
    user_ids = chosen_ids(user_factors, rows, user_batch)
    with storage.atomic_file(folder / f"part-{part:05d}.parquet") as tmp, \
            pq.ParquetWriter(tmp, schema) as writer:
        for first in range(0, len(ids), track_batch):
            size = min(track_batch, len(ids) - first)
            writer.write_table(pa.table({
                "track_id": pc.take(ids, np.repeat(np.arange(first, first + size), n)),
                "user_id": user_ids.slice(first * n, size * n),
                "score": scores[first:first + size].ravel(),
                "rank": np.tile(np.arange(1, n + 1, dtype=np.int32), size)}, schema=schema))


def audience(user_factors: Path, track_factors: Path, out: Path, k: int = QueryConfig.audience,
             user_batch: int = QueryConfig.user_batch, track_batch: int = TRACK_BATCH,
             tracks_per_part: int = TRACKS_PER_PART, users_per_part: int = USERS_PER_PART,
             beam_args: list[str] = ()) -> int:
    """Write the audience table; returns the number of tracks covered."""
    tracks = storage.read_table(track_factors, schemas.TRACK_FACTORS)
    cold = tracks.filter(pc.equal(tracks["source"], "audio"))
    storage.check_files(user_factors, schemas.USER_FACTORS)  # bad input stops here, named
    users = storage.count_rows(user_factors)
    y = factor_matrix(cold)
    parts = range(0, len(y), tracks_per_part)
    pieces = [(i, y[first:first + tracks_per_part], start, min(start + users_per_part, users))
              for i, first in enumerate(parts) for start in range(0, max(users, 1), users_per_part)]
    schema = schemas.with_metadata(schemas.AUDIENCE, {"k": k})
    ids = cold.column("track_id").combine_chunks()
    with storage.scratch_dir(out) as folder:
        if pieces:
            with pipelines.pipeline(beam_args) as pipeline:
                _ = (pipeline | "Pieces" >> beam.Create(pieces)
                     | "Score" >> beam.Map(score_piece, user_factors, k, user_batch, track_batch)
                     | "Merge" >> beam.CombinePerKey(MergePieces(k))
                     | "Write" >> beam.MapTuple(lambda part, top: write_part(
                         part, top, ids.slice(part * tracks_per_part, tracks_per_part),
                         user_factors, folder, schema, user_batch, track_batch)))
        with storage.atomic_file(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
            for i, _ in enumerate(parts):  # in the tracks' order
                reader = pq.ParquetFile(folder / f"part-{i:05d}.parquet")
                for group in range(reader.num_row_groups):
                    writer.write_table(reader.read_row_group(group))
    logger.info("audience of %d new releases (top %d of %d users, %d pieces) -> %s",
                cold.num_rows, k, users, len(pieces), out)
    return cold.num_rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.audience", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=pipelines.RUNNER_EPILOG, allow_abbrev=False)
    parser.add_argument("--user-factors", required=True, type=Path,
                        help="ALS user factors (schemas.USER_FACTORS)")
    parser.add_argument("--track-factors", required=True, type=Path,
                        help="the combined factor table (schemas.TRACK_FACTORS)")
    parser.add_argument("--out", required=True, type=Path, help="Parquet file to write")
    parser.add_argument("--tracks-per-part", type=int, default=TRACKS_PER_PART,
                        help="new releases in one part of the work (default %(default)s)")
    parser.add_argument("--users-per-part", type=int, default=USERS_PER_PART,
                        help="users one piece of work scores (default %(default)s)")
    cli.add_settings(parser, QueryConfig, only=("audience", "user_batch"))
    pipelines.add_runner_arguments(parser)
    args, args.beam_args = pipelines.parse(parser, argv)
    if min(args.k, args.user_batch, args.tracks_per_part, args.users_per_part) < 1:
        parser.error("--k, --user-batch, --tracks-per-part and --users-per-part must be at "
                     "least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    args = parse_args(argv)

    def body() -> None:
        audience(args.user_factors, args.track_factors, args.out, args.k, args.user_batch,
                 tracks_per_part=args.tracks_per_part, users_per_part=args.users_per_part,
                 beam_args=args.beam_args)
    return cli.run_job(body, logger, ValueError)


if __name__ == "__main__":
    sys.exit(main())
