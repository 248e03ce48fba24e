"""The similar-track index: approximate nearest neighbours by cosine over every track.

    python -m jobs.index --track-factors FACTORS/track_factors.parquet --out DIR

Builds a Voyager (HNSW) index over the combined factor table, warm and cold tracks
alike. Voyager is Spotify's library for this: maintained, small, no GPU or service to
run, and its files load by memory map in any process. DIR (appears atomically) holds
tracks.voy, track_ids.parquet (index id i is row i) and index.json, which records the
version of the factor table it was built from (schemas.factors_version: its ids and
factors), so a reader can tell a stale index.
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
from schemas import cli, factor_matrix, layout, storage
from schemas.config import IndexConfig

logger = logging.getLogger(__name__)
BUILD_ONLY = ("query_ef",)  # searching's setting (jobs/query.py); building does not use it


def build(track_factors: Path, out: Path, config: IndexConfig = IndexConfig()) -> int:
    """Write the index of ``track_factors`` to ``out``; returns the number of tracks."""
    tracks = storage.read_table(track_factors, schemas.TRACK_FACTORS)
    vectors = np.array(factor_matrix(tracks), dtype=np.float32)  # writable: voyager refuses Arrow memory
    started = time.perf_counter()
    index = Index(Space.Cosine, num_dimensions=vectors.shape[1], M=config.m,
                  ef_construction=config.ef_construction, random_seed=1,
                  max_elements=max(len(vectors), 1))
    if len(vectors):
        index.add_items(vectors)
    with storage.atomic_dir(out) as tmp:
        index.save(str(tmp / layout.INDEX_FILE))
        storage.write_table(pa.table({"track_id": tracks["track_id"]}), tmp / layout.INDEX_IDS,
                            pa.schema([pa.field("track_id", pa.string(), nullable=False)]))
        storage.write_text(tmp / layout.INDEX_MANIFEST, json.dumps({
            "factor_table": schemas.factors_version(tracks), "tracks": len(vectors),
            "space": "cosine", "m": config.m, "ef_construction": config.ef_construction},
            indent=2) + "\n")
    logger.info("similar-track index of %d tracks in %.1f s -> %s", len(vectors),
                time.perf_counter() - started, out)
    return len(vectors)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--track-factors", required=True, type=Path,
                        help="the combined factor table (schemas.TRACK_FACTORS), one file")
    parser.add_argument("--out", required=True, type=Path,
                        help="index directory; must not exist, appears when complete")
    cli.add_settings(parser, IndexConfig, skip=BUILD_ONLY)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    args = parse_args(argv)

    def body() -> None:
        build(args.track_factors, args.out, cli.settings_from(IndexConfig, args, skip=BUILD_ONLY))
    return cli.run_job(body, logger, ValueError, FileExistsError)


if __name__ == "__main__":
    sys.exit(main())
