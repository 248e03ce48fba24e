"""Hold-out evaluation of the ALS stage: how well its factors rank plays it never saw.

For every user, a fraction of their (user, track) pairs is held out (the same ones
for the same seed); ALS is fitted on the rest. Each user's candidates are all
tracks they did not play in training, scored by x_u . y_i; the held-out ones
should come first. Reported as JSON, averaged over users with held-out plays:
AUC, mAP@K (AP normalised by min(held-out, K), as jobs.evaluate) and recall@K
(held-out tracks in the top K / held-out tracks).

    spark-submit jobs/als/holdout.py --plays plays.parquet --out als-eval.json \\
        --rank 32 --iterations 15 --holdout 0.2 --k 500

Input and ALS arguments are those of the ALS job (jobs/als/job.py); see there for the
objective.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs.als import job as als  # the same validation and fit as the job
from schemas import cli, metrics, storage
from schemas.config import AlsParams, AlsTuning, HoldoutOptions, InputOptions
from schemas.inputs import PlaysInputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pairs:
    """(user, track) pairs as dense ALS indices: users, tracks int32 (n,); plays float64 (n,)."""
    users: np.ndarray
    tracks: np.ndarray
    plays: np.ndarray


def split_holdout(plays: DataFrame, fraction: float, seed: int) -> tuple[DataFrame, DataFrame]:
    """Split each user's pairs into (train, heldout): round(fraction * n) of a user's
    n pairs are held out, always leaving at least one for training.

    Which ones is decided by a hash of (seed, user, track), so the split depends on
    the data and the seed only, not on partitioning.
    """
    key = F.xxhash64(F.lit(seed), "user_id", "track_id")
    by_user = Window.partitionBy("user_id")
    ranked = (plays.withColumn("_rank", F.row_number().over(by_user.orderBy(key, "track_id")))
              .withColumn("_n", F.count(F.lit(1)).over(by_user)))
    n_held = F.least(F.round(F.col("_n") * fraction), F.col("_n") - 1)
    held = F.col("_rank") <= n_held
    return (ranked.where(~held).drop("_rank", "_n"), ranked.where(held).drop("_rank", "_n"))


def factor_array(factors: DataFrame, n: int) -> np.ndarray:
    """Spark's (id, features) factor table as an (n, rank) float32 array indexed by id.

    Rows of ids without factors stay zero.
    """
    table = factors.toArrow()
    ids = table.column("id").to_numpy()
    flat = table.column("features").combine_chunks().flatten().to_numpy()
    rank = len(flat) // max(len(ids), 1)
    out = np.zeros((n, rank), dtype=np.float32)
    out[ids] = flat.reshape(len(ids), rank)
    return out


def indexed_pairs(plays: DataFrame, user_ids: DataFrame, track_ids: DataFrame) -> Pairs:
    """The plays whose user and track are both indexed, as index arrays."""
    table = (plays.join(user_ids, "user_id").join(track_ids, "track_id")
             .select("user_index", "track_index", F.col("plays").cast("double"))
             .toArrow())
    return Pairs(table.column("user_index").to_numpy().astype(np.int32),
                 table.column("track_index").to_numpy().astype(np.int32),
                 table.column("plays").to_numpy())


def _tracks_by_user(pairs: Pairs) -> dict[int, np.ndarray]:
    order = np.argsort(pairs.users, kind="stable")
    users, starts = np.unique(pairs.users[order], return_index=True)
    return dict(zip(users.tolist(), np.split(pairs.tracks[order], starts[1:])))


def ranking_metrics(user_factors: np.ndarray, item_factors: np.ndarray, train: Pairs,
                    heldout: Pairs, k: int, chunk: int = 512) -> dict:
    """Mean per-user AUC, AP@k and recall@k of the held-out tracks.

    user_factors (n_users, rank), item_factors (n_tracks, rank); ``train`` and
    ``heldout`` index into them. A user's candidates are the tracks not in their
    training plays; users whose every candidate is held out have no AUC.
    """
    trained = _tracks_by_user(train)
    held = _tracks_by_user(heldout)
    users = np.array(sorted(held), dtype=np.int64)
    n_tracks = item_factors.shape[0]
    per_user = []
    for start in range(0, len(users), chunk):
        block = users[start:start + chunk]
        scores = user_factors[block] @ item_factors.T
        for row, user in zip(scores, block.tolist()):
            relevant = np.zeros(n_tracks, dtype=bool)
            relevant[held[user]] = True
            candidates = np.ones(n_tracks, dtype=bool)
            candidates[trained.get(user, [])] = False  # never recommend what was played
            per_user.append(metrics.user_metrics(row, relevant, k, k, candidates))
    return {"users": len(users), "tracks": n_tracks, "heldout_plays": int(len(heldout.users)),
            **metrics.averages(per_user, k, k)}


@dataclass(frozen=True)
class Split:
    """Validated plays split for evaluation and indexed for ALS: ``train`` and
    ``heldout`` (user_id, track_id, plays), ``user_ids``/``track_ids`` index the
    training plays (n_users, n_tracks of them). All persisted."""
    train: DataFrame
    heldout: DataFrame
    user_ids: DataFrame
    track_ids: DataFrame
    n_users: int
    n_tracks: int

    def unpersist(self) -> None:
        for table in (self.train, self.heldout, self.user_ids, self.track_ids):
            table.unpersist()


def prepare(spark: SparkSession, plays_path: str, holdout: HoldoutOptions = HoldoutOptions(),
            options: InputOptions = InputOptions()) -> Split:
    """Validate the plays as the ALS job does, split them, index the training plays."""
    plays = als.read_valid_plays(spark, plays_path, options)
    plays.quarantined.unpersist()
    train, heldout = split_holdout(plays.usable, holdout.fraction, holdout.seed)
    train = train.persist(StorageLevel.MEMORY_AND_DISK)
    heldout = heldout.persist(StorageLevel.MEMORY_AND_DISK)
    user_ids = als.index_ids(train, "user_id", "user_index")
    track_ids = als.index_ids(train, "track_id", "track_index")
    plays.usable.unpersist()
    return Split(train, heldout, user_ids, track_ids, user_ids.count(), track_ids.count())


def fit_factors(split: Split, params: AlsParams,
                tuning: AlsTuning = AlsTuning()) -> tuple[np.ndarray, np.ndarray]:
    """Spark ALS on the training plays: (user_factors (n_users, rank), item_factors
    (n_tracks, rank)) float32, rows by index."""
    model = als.transform(split.train, split.user_ids, split.track_ids, params, tuning)
    return (factor_array(model.userFactors, split.n_users),
            factor_array(model.itemFactors, split.n_tracks))


def score(split: Split, user_factors: np.ndarray, item_factors: np.ndarray,
          holdout: HoldoutOptions = HoldoutOptions()) -> dict:
    """ranking_metrics of the held-out plays of all users, or of a seeded sample of
    ``holdout.max_users``. Held-out tracks that no training play mentions have no
    factors and are left out (counted in ``heldout_plays_unknown_track``)."""
    users = split.heldout.select("user_id").distinct()
    if holdout.max_users is not None:
        users = users.orderBy(F.xxhash64(F.lit(holdout.seed), "user_id"), "user_id").limit(
            holdout.max_users)
    heldout = split.heldout.join(users, "user_id")
    test_pairs = indexed_pairs(heldout, split.user_ids, split.track_ids)
    train_pairs = indexed_pairs(split.train.join(users, "user_id"), split.user_ids, split.track_ids)
    report = ranking_metrics(user_factors, item_factors, train_pairs, test_pairs, holdout.k)
    report["heldout_plays_unknown_track"] = heldout.count() - len(test_pairs.users)
    return report


def evaluate(spark: SparkSession, plays_path: str, params: AlsParams, checkpoint_dir: str,
             holdout: HoldoutOptions = HoldoutOptions(),
             options: InputOptions = InputOptions(),
             tuning: AlsTuning = AlsTuning()) -> dict:
    """prepare, fit_factors and score; the report also records every setting.

    ``checkpoint_dir`` must be visible to every executor.
    """
    params = als.resolve_blocks(spark, params)
    spark.sparkContext.setCheckpointDir(checkpoint_dir)
    split = prepare(spark, plays_path, holdout, options)
    user_factors, item_factors = fit_factors(split, params, tuning)
    report = score(split, user_factors, item_factors, holdout)
    report.update(train_plays=split.train.count(), plays=plays_path,
                  params=dataclasses.asdict(params), holdout=dataclasses.asdict(holdout))
    split.unpersist()
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jobs/als/holdout.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    als.add_input_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="JSON report to write")
    cli.add_settings(parser, HoldoutOptions)
    als.add_als_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    args = parse_args(argv)
    return cli.run_job(lambda: run_job(args), logger, PlaysInputError)


def run_job(args: argparse.Namespace) -> None:
    holdout = cli.settings_from(HoldoutOptions, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    spark = SparkSession.builder.appName("coldstart-evaluate-als").getOrCreate()
    try:
        with tempfile.TemporaryDirectory(prefix=".checkpoints-", dir=args.out.parent) as scratch:
            report = evaluate(spark, args.plays, als.als_params(args),
                              args.checkpoint_dir or scratch, holdout,
                              als.input_options(args), als.als_tuning(args))
    finally:
        spark.stop()
    storage.write_text(args.out, json.dumps(report, indent=2) + "\n")
    logger.info("%s", json.dumps({key: value for key, value in report.items()
                                  if not isinstance(value, dict)}))


if __name__ == "__main__":
    sys.exit(main())
