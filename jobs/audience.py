"""The audience of every new release: each cold track's top users by predicted preference.

    python -m jobs.audience --user-factors ALS/user_factors \\
        --track-factors FACTORS/track_factors.parquet --out audience.parquet [--k 100]

For every track whose factors came from its audio (``source`` "audio" in the combined
table), the --k users of highest x_u . y_i, best first (schemas.AUDIENCE). The user
factors are streamed from their files --user-batch users at a time, scored against
the new releases 1,024 tracks at a time and merged into each track's running top k
(schemas/ranking.py), so memory is bounded by the new releases and the batches, not
by the number of users: only the ids of the users chosen are read at the end.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import schemas
from schemas import cli, factor_matrix, storage
from schemas.config import QueryConfig
from schemas.ranking import RunningTop

logger = logging.getLogger(__name__)
TRACK_BATCH = 1024


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


def audience(user_factors: Path, track_factors: Path, out: Path, k: int = QueryConfig.audience,
             user_batch: int = QueryConfig.user_batch, track_batch: int = TRACK_BATCH) -> int:
    """Write the audience table; returns the number of tracks covered."""
    tracks = storage.read_table(track_factors, schemas.TRACK_FACTORS)
    cold = tracks.filter(pc.equal(tracks["source"], "audio"))
    y = factor_matrix(cold)
    starts = range(0, len(y), track_batch)
    tops = [RunningTop(len(y[start:start + track_batch]), k) for start in starts]
    users = 0
    for batch in storage.stream_batches(user_factors, schemas.USER_FACTORS, ["factors"],
                                        user_batch):
        x = factor_matrix(batch)
        users += len(x)
        for top, start in zip(tops, starts):
            top.add(y[start:start + track_batch] @ x.T)
    user_ids = chosen_ids(user_factors, np.concatenate(
        [top.columns.ravel() for top in tops] or [np.zeros(0, np.int64)]), user_batch)
    schema = schemas.with_metadata(schemas.AUDIENCE, {"k": k})
    written = 0
    with storage.atomic_file(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for top, start in zip(tops, starts):
            n = top.columns.shape[1]
            ids = cold.column("track_id").slice(start, len(top.columns))
            writer.write_table(pa.table({
                "track_id": pc.take(ids, np.repeat(np.arange(len(ids)), n)),
                "user_id": user_ids.slice(written, top.columns.size),
                "score": top.scores.ravel(),
                "rank": np.tile(np.arange(1, n + 1, dtype=np.int32), len(ids))},
                schema=schema))
            written += top.columns.size
    logger.info("audience of %d new releases (top %d of %d users) -> %s", cold.num_rows, k,
                users, out)
    return cold.num_rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.audience", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--user-factors", required=True, type=Path,
                        help="ALS user factors (schemas.USER_FACTORS)")
    parser.add_argument("--track-factors", required=True, type=Path,
                        help="the combined factor table (schemas.TRACK_FACTORS)")
    parser.add_argument("--out", required=True, type=Path, help="Parquet file to write")
    cli.add_settings(parser, QueryConfig, only=("audience", "user_batch"))
    args = parser.parse_args(argv)
    if args.k < 1 or args.user_batch < 1:
        parser.error("--k and --user-batch must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    args = parse_args(argv)

    def body() -> None:
        audience(args.user_factors, args.track_factors, args.out, args.k, args.user_batch)
    return cli.run_job(body, logger, ValueError)


if __name__ == "__main__":
    sys.exit(main())
