"""The audience of every new release: each cold track's top users by predicted preference.

    python -m jobs.audience --user-factors ALS/user_factors \\
        --track-factors FACTORS/track_factors.parquet --out audience.parquet [--k 100]

For every track whose factors came from its audio (``source`` "audio" in the combined
table), the --k users of highest x_u . y_i, best first (schemas.AUDIENCE). Tracks are
taken 1,024 at a time and users --user-batch at a time, merged into a running top k,
and rows are written as each batch of tracks is done, so memory is bounded by the
batches, not by the numbers of users or tracks.
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
from schemas.ranking import top_users

logger = logging.getLogger(__name__)
TRACK_BATCH = 1024


def audience(user_factors: Path, track_factors: Path, out: Path, k: int = QueryConfig.audience,
             user_batch: int = QueryConfig.user_batch, track_batch: int = TRACK_BATCH) -> int:
    """Write the audience table; returns the number of tracks covered."""
    users = storage.read_table(user_factors, schemas.USER_FACTORS)
    tracks = storage.read_table(track_factors, schemas.TRACK_FACTORS)
    cold = tracks.filter(pc.equal(tracks["source"], "audio"))
    user_ids = np.array(users.column("user_id").to_pylist(), dtype=object)
    x = factor_matrix(users)
    schema = schemas.with_metadata(schemas.AUDIENCE, {"k": k})
    with storage.atomic_file(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, cold.num_rows, track_batch):
            batch = cold.slice(start, track_batch)
            best, scores = top_users(x, factor_matrix(batch), k, user_batch)
            n = best.shape[1]
            writer.write_table(pa.table({
                "track_id": np.repeat(np.array(batch.column("track_id").to_pylist(), dtype=object), n),
                "user_id": user_ids[best.ravel()] if n else np.zeros(0, dtype=object),
                "score": scores.ravel().astype(np.float32),
                "rank": np.tile(np.arange(1, n + 1, dtype=np.int32), batch.num_rows)},
                schema=schema))
    logger.info("audience of %d new releases (top %d of %d users) -> %s", cold.num_rows, k,
                len(user_ids), out)
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
