"""Similar-track search: the Voyager index against exact search on random factors.

    python benchmarks/similar.py [--tracks 100000] [--rank 32] [--queries 1000] \
        [--tracks-per-shard N]

Builds the index the workflow builds (jobs/index.py, schemas.config.IndexConfig) over
random Gaussian factor vectors, the hardest case for a graph index (no clusters),
then for --queries tracks compares the 10 nearest by the index with the exact 10
nearest by cosine, and times single queries as the query command makes them (every
shard asked, the nearest kept, with --tracks-per-shard below --tracks).
Prints build time, recall@10 and query latency p50/p99. Asserts nothing.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

import schemas
from jobs.index import TRACKS_PER_SHARD, build
from schemas import factors_column, storage
from schemas.config import IndexConfig
from schemas.neighbours import ShardedIndex


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=100_000)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--tracks-per-shard", type=int, default=TRACKS_PER_SHARD)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    y = rng.normal(size=(args.tracks, args.rank)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "track_factors.parquet"
        storage.write_table(pa.table({"track_id": [f"t{i}" for i in range(args.tracks)],
                                      "factors": factors_column(y), "source": ["als"] * args.tracks,
                                      "model_version": pa.nulls(args.tracks, pa.string()),
                                      "listeners": pa.nulls(args.tracks, pa.int64()),
                                      "plays": pa.nulls(args.tracks, pa.int64())}),
                            table, schemas.TRACK_FACTORS)
        started = time.perf_counter()
        build(table, Path(tmp) / "index", tracks_per_shard=args.tracks_per_shard)
        built = time.perf_counter() - started
        index = ShardedIndex.load(Path(tmp) / "index")
        queries = rng.choice(args.tracks, args.queries, replace=False)
        unit = y / np.linalg.norm(y, axis=1, keepdims=True)
        latencies, hits = [], 0
        for q in queries:
            started = time.perf_counter()
            ids, _ = index.query(y[q], k=11, query_ef=IndexConfig.query_ef)
            latencies.append(time.perf_counter() - started)
            cosine = unit @ unit[q]
            cosine[q] = -np.inf
            exact = set(np.argpartition(-cosine, 10)[:10].tolist())
            hits += len(exact & set(int(i) for i in ids if i != q))
    ms = np.array(latencies) * 1000
    print(f"{args.tracks} tracks, rank {args.rank}, {IndexConfig()}, "
          f"{len(index.shards)} shard(s)")
    print(f"build: {built:.1f} s")
    print(f"recall@10 against exact search over {args.queries} queries: {hits / (10 * args.queries):.4f}")
    print(f"query latency: p50 {np.percentile(ms, 50):.3f} ms, p99 {np.percentile(ms, 99):.3f} ms")


if __name__ == "__main__":
    main()
