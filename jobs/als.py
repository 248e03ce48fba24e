"""Implicit-feedback ALS (weighted matrix factorisation) on a play-count table.

Runs under spark-submit (the master comes from spark-submit), as
``python -m jobs.als``, or from the Luigi chain:

    spark-submit jobs/als.py --plays plays.parquet --out /data/als --rank 50

The paper's confidence is c = 1 + alpha * log(1 + r / eps). Spark's implicit ALS
uses c = 1 + alpha * r', so we feed it r' = log(1 + r / eps) and the two objectives
are the same (van den Oord et al. 2013, eq. 2-3).

Output directory (appears atomically, every table a directory of Parquet parts):
    user_factors/  schemas.USER_FACTORS      item_factors/  schemas.ITEM_FACTORS
    user_ids/      schemas.USER_IDS          track_ids/     schemas.TRACK_IDS
    quarantine/    schemas.QUARANTINED_PLAYS (rows that could not be used, with why)
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

# spark-submit runs this file as a script: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import schemas  # noqa: E402
from jobs import storage  # noqa: E402

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlsParams:
    """Hyper-parameters of the factorisation; all of them change the result."""
    rank: int = 32
    reg: float = 0.1
    alpha: float = 10.0
    eps: float = 1.0
    iterations: int = 15
    seed: int = 42
    checkpoint_interval: int = 5


def extract(spark: SparkSession, plays_path: str) -> DataFrame:
    """Read a play-count table (Parquet, schemas.PLAYS columns)."""
    return spark.read.parquet(plays_path).select(*schemas.PLAYS.names)


def split_valid(plays: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Split rows into (usable, quarantined); quarantined rows carry a ``reason``.

    Usable rows have non-empty ids and a positive count; duplicates of a
    (user, track) pair are summed into one row.
    """
    reason = (F.when(F.col("user_id").isNull() | (F.trim("user_id") == ""), "empty user_id")
               .when(F.col("track_id").isNull() | (F.trim("track_id") == ""), "empty track_id")
               .when(F.col("plays").isNull(), "missing play count")
               .when(F.col("plays") <= 0, "non-positive play count"))
    tagged = plays.withColumn("reason", reason)
    quarantined = (tagged.where(F.col("reason").isNotNull())
                   .withColumn("plays", F.col("plays").cast("string")))
    usable = (tagged.where(F.col("reason").isNull())
              .groupBy("user_id", "track_id").agg(F.sum("plays").alias("plays")))
    return usable, quarantined


def index_ids(plays: DataFrame, column: str, index_column: str) -> DataFrame:
    """A dense int index for the distinct values of ``column``, in sorted order.

    Sorting first makes the dictionary the same on every run over the same data.
    """
    distinct = plays.select(column).distinct().orderBy(column)
    return (distinct.rdd.zipWithIndex()
            .map(lambda pair: (pair[0][0], pair[1]))
            .toDF([column, index_column])
            .withColumn(index_column, F.col(index_column).cast("int")))


def transform(plays: DataFrame, user_ids: DataFrame, track_ids: DataFrame,
              params: AlsParams) -> ALSModel:
    """Fit implicit ALS with the paper's log confidence on usable, indexed plays."""
    ratings = (plays.join(user_ids, "user_id").join(track_ids, "track_id")
               .select("user_index", "track_index",
                       F.log1p(F.col("plays") / params.eps).alias("confidence")))
    als = ALS(rank=params.rank, maxIter=params.iterations, regParam=params.reg,
              implicitPrefs=True, alpha=params.alpha, seed=params.seed,
              checkpointInterval=params.checkpoint_interval,
              userCol="user_index", itemCol="track_index", ratingCol="confidence")
    return als.fit(ratings.cache())


def named_factors(factors: DataFrame, ids: DataFrame, id_column: str,
                  index_column: str) -> DataFrame:
    """Attach string ids to Spark's (id, features) factor table."""
    return (factors.join(ids, factors["id"] == ids[index_column])
            .select(id_column, F.col("features").alias("factors")))


def write_parquet(df: DataFrame, directory: Path, schema: pa.Schema,
                  params: dict | None = None) -> int:
    """Write ``df`` as Parquet parts conforming to ``schema``, one per partition.

    Each executor writes its partition with pyarrow (so files carry our schema and
    metadata, not Spark's), named by partition id so a retried task overwrites its
    own part. ``directory`` must be visible to every executor. Returns rows written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = str(directory)
    file_schema = schemas.with_metadata(schema, params)

    def write_partition(batches):
        from pyspark import TaskContext
        path = f"{target}/part-{TaskContext.get().partitionId():05d}.parquet"
        rows = 0
        with pq.ParquetWriter(path, file_schema) as writer:
            for batch in batches:
                table = schemas.conform(pa.Table.from_batches([batch]), schema)
                writer.write_table(table.replace_schema_metadata(file_schema.metadata))
                rows += batch.num_rows
        yield pa.RecordBatch.from_pydict({"rows": [rows]})

    written = sum(row.rows for row in df.mapInArrow(write_partition, "rows long").collect())
    logger.info("wrote %d rows to %s", written, directory)
    return written


def run(spark: SparkSession, plays_path: str, out: Path, params: AlsParams,
        checkpoint_dir: str | None = None) -> None:
    """Extract, validate, factorise and write every output table under ``out``."""
    meta = dataclasses.asdict(params)
    with storage.atomic_dir(out) as tmp:
        spark.sparkContext.setCheckpointDir(checkpoint_dir or str(tmp / "_checkpoints"))
        usable, quarantined = split_valid(extract(spark, plays_path))
        usable = usable.cache()
        n_bad = write_parquet(quarantined, tmp / "quarantine", schemas.QUARANTINED_PLAYS)
        user_ids = index_ids(usable, "user_id", "user_index").cache()
        track_ids = index_ids(usable, "track_id", "track_index").cache()
        model = transform(usable, user_ids, track_ids, params)
        write_parquet(user_ids, tmp / "user_ids", schemas.USER_IDS)
        write_parquet(track_ids, tmp / "track_ids", schemas.TRACK_IDS)
        n_users = write_parquet(named_factors(model.userFactors, user_ids, "user_id", "user_index"),
                                tmp / "user_factors", schemas.USER_FACTORS, meta)
        n_items = write_parquet(named_factors(model.itemFactors, track_ids, "track_id", "track_index"),
                                tmp / "item_factors", schemas.ITEM_FACTORS, meta)
        if checkpoint_dir is None:
            shutil.rmtree(tmp / "_checkpoints", ignore_errors=True)
    logger.info("ALS rank %d: %d users, %d tracks, %d quarantined rows -> %s",
                params.rank, n_users, n_items, n_bad, out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = AlsParams()
    parser = argparse.ArgumentParser(
        prog="jobs/als.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plays", required=True,
                        help="play-count table: Parquet file or directory with columns "
                             "user_id, track_id, plays")
    parser.add_argument("--out", required=True, type=Path,
                        help="output directory; must not exist, appears when complete")
    parser.add_argument("--rank", type=int, default=defaults.rank,
                        help="number of latent factors (default %(default)s)")
    parser.add_argument("--reg", type=float, default=defaults.reg,
                        help="L2 regularisation lambda (default %(default)s)")
    parser.add_argument("--alpha", type=float, default=defaults.alpha,
                        help="confidence scale alpha in c = 1 + alpha*log(1 + r/eps) "
                             "(default %(default)s)")
    parser.add_argument("--eps", type=float, default=defaults.eps,
                        help="play-count scale eps in the confidence (default %(default)s)")
    parser.add_argument("--iterations", type=int, default=defaults.iterations,
                        help="ALS sweeps (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="random seed of the factor initialisation (default %(default)s)")
    parser.add_argument("--checkpoint-interval", type=int, default=defaults.checkpoint_interval,
                        help="iterations between RDD checkpoints, which keep lineage short "
                             "(default %(default)s)")
    parser.add_argument("--checkpoint-dir",
                        help="checkpoint directory visible to all executors (HDFS/S3 on a "
                             "cluster); default: a scratch folder inside the output")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    params = AlsParams(rank=args.rank, reg=args.reg, alpha=args.alpha, eps=args.eps,
                       iterations=args.iterations, seed=args.seed,
                       checkpoint_interval=args.checkpoint_interval)
    spark = SparkSession.builder.appName("coldstart-als").getOrCreate()
    try:
        run(spark, args.plays, args.out, params, args.checkpoint_dir)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
