"""The similar-track index: approximate nearest neighbours by cosine over every track.

    python -m jobs.index --track-factors FACTORS/track_factors.parquet --out DIR \\
        [--tracks-per-shard N] [Beam options]

Builds a Voyager (HNSW) index over the combined factor table, warm and cold tracks
alike. Voyager is Spotify's library for this: maintained, small, no GPU or service to
run, and its files load in any process. The table is cut into shards of
--tracks-per-shard rows, each built on one thread (so the same factors give the same
files) by a worker of a Beam pipeline
(schemas/pipelines.py; one worker in this process unless told otherwise) with the
table's row numbers as its ids; a search asks every shard and keeps the nearest
(schemas/neighbours.py). DIR (appears atomically) holds the shards (tracks.voy when
there is one), track_ids.parquet (row i: the track of index id i) and index.json,
which lists the shards and records the version of the factor table they were built
from (schemas.factors_version: its ids and factors), so a reader can tell a stale index.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from voyager import Index, Space

import schemas
from schemas import cli, factor_matrix, layout, pipelines, storage
from schemas.config import IndexConfig

logger = logging.getLogger(__name__)
BUILD_ONLY = ("query_ef",)  # searching's setting (jobs/query.py); building does not use it
# A shard is built on one thread, which makes the same factors give the same file
# (Voyager's threads insert in any order, and the graph depends on it); the work
# spreads over shards instead. 1M tracks build in minutes and search in well under a
# millisecond, so a query asks ten of them at 10M tracks.
TRACKS_PER_SHARD = 1_000_000
READ_BATCH = 65_536


def build_shard(shard: tuple[int, int, int, int], track_factors: Path, folder: Path,
                config: IndexConfig) -> None:
    """Index rows ``start`` to ``stop`` of the table as shard ``number`` of ``count``
    (shard: (number, count, start, stop)), their row numbers as ids."""
    number, count, start, stop = shard
    # writable float32: voyager refuses Arrow memory
    vectors = np.concatenate([np.array(factor_matrix(batch), dtype=np.float32) for batch in
                              storage.stream_rows(track_factors, schemas.TRACK_FACTORS,
                                                  ["factors"], start, stop, READ_BATCH)])
    index = Index(Space.Cosine, num_dimensions=vectors.shape[1], M=config.m,
                  ef_construction=config.ef_construction, random_seed=1,
                  max_elements=len(vectors))
    index.add_items(vectors, ids=np.arange(start, stop), num_threads=1)
    with storage.atomic_file(folder / layout.index_shard(number, count)) as tmp:
        index.save(str(tmp))


def build(track_factors: Path, out: Path, config: IndexConfig = IndexConfig(),
          tracks_per_shard: int = TRACKS_PER_SHARD, beam_args: list[str] = ()) -> int:
    """Write the index of ``track_factors`` to ``out``; returns the number of tracks."""
    tracks = storage.read_table(track_factors, schemas.TRACK_FACTORS)
    started = time.perf_counter()
    starts = range(0, tracks.num_rows, tracks_per_shard)
    shards = [(number, len(starts), start, min(start + tracks_per_shard, tracks.num_rows))
              for number, start in enumerate(starts)]
    with storage.atomic_dir(out) as tmp:
        pipelines.run_parts("Index", shards, lambda shard: build_shard(
            shard, track_factors, tmp, config), beam_args)
        storage.write_table(pa.table({"track_id": tracks["track_id"]}), tmp / layout.INDEX_IDS,
                            pa.schema([pa.field("track_id", pa.string(), nullable=False)]))
        storage.write_text(tmp / layout.INDEX_MANIFEST, json.dumps({
            "factor_table": schemas.factors_version(tracks), "tracks": tracks.num_rows,
            "shards": [layout.index_shard(number, len(shards)) for number, *_ in shards],
            "space": "cosine", "m": config.m, "ef_construction": config.ef_construction},
            indent=2) + "\n")
    logger.info("similar-track index of %d tracks in %d shards in %.1f s -> %s", tracks.num_rows,
                len(shards), time.perf_counter() - started, out)
    return tracks.num_rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=pipelines.RUNNER_EPILOG, allow_abbrev=False)
    parser.add_argument("--track-factors", required=True, type=Path,
                        help="the combined factor table (schemas.TRACK_FACTORS), one file")
    parser.add_argument("--out", required=True, type=Path,
                        help="index directory; must not exist, appears when complete")
    parser.add_argument("--tracks-per-shard", type=int, default=TRACKS_PER_SHARD,
                        help="tracks in one shard of the index (default %(default)s)")
    cli.add_settings(parser, IndexConfig, skip=BUILD_ONLY)
    pipelines.add_runner_arguments(parser)
    args, args.beam_args = pipelines.parse(parser, argv)
    if args.tracks_per_shard < 1:
        parser.error("--tracks-per-shard must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    args = parse_args(argv)

    def body() -> None:
        build(args.track_factors, args.out, cli.settings_from(IndexConfig, args, skip=BUILD_ONLY),
              args.tracks_per_shard, args.beam_args)
    return cli.run_job(body, logger, ValueError, FileExistsError)


if __name__ == "__main__":
    sys.exit(main())
