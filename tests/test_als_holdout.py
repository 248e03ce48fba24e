"""Hold-out evaluation of ALS, and Spark's ALS against the implicit library on real plays."""
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from jobs.als import holdout as als_holdout
from schemas import metrics
from schemas.config import AlsParams, HoldoutOptions, InputOptions
from tests.test_als import checkerboard_plays

logger = logging.getLogger(__name__)

HETREC = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "lastfm-hetrec2011"
HETREC_INPUT = InputOptions(format="csv", delimiter="\t", user_column="userID",
                                track_column="artistID", plays_column="weight")


def test_auc_of_is_roc_auc_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, 300).astype(float)  # many ties
    relevant = rng.random(300) < 0.1
    assert metrics.auc(scores[relevant], scores[~relevant]) == pytest.approx(
        roc_auc_score(relevant, scores))


def test_ranking_metrics_of_known_rankings():
    # Four tracks on a line; user 0 trained on track 0 and holds out track 1.
    tracks = np.array([[3.0], [2.0], [1.0], [0.5]], dtype=np.float32)
    train = als_holdout.Pairs(np.array([0]), np.array([0]), np.array([1.0]))
    heldout = als_holdout.Pairs(np.array([0]), np.array([1]), np.array([1.0]))
    best = als_holdout.ranking_metrics(np.array([[1.0]], np.float32), tracks, train, heldout, k=1)
    assert best == {"users": 1, "tracks": 4, "heldout_plays": 1, "auc": 1.0, "map@1": 1.0,
                    "recall@1": 1.0}, "the trained track must not take the top place"
    worst = als_holdout.ranking_metrics(np.array([[-1.0]], np.float32), tracks, train, heldout, k=1)
    assert worst["auc"] == 0.0 and worst["map@1"] == 0.0 and worst["recall@1"] == 0.0


def test_split_holds_out_a_fraction_of_each_user(spark):
    rows = [(f"u{u}", f"t{t}", 1.0) for u in range(30) for t in range(u % 10 + 1)]
    plays = spark.createDataFrame(rows, "user_id string, track_id string, plays double")
    train, heldout = als_holdout.split_holdout(plays, 0.3, seed=1)
    train_rows, held_rows = set(map(tuple, train.collect())), set(map(tuple, heldout.collect()))
    assert train_rows | held_rows == set(rows) and not train_rows & held_rows
    for u in range(30):
        n = u % 10 + 1
        held = sum(1 for row in held_rows if row[0] == f"u{u}")
        assert held == min(round(0.3 * n), n - 1), f"u{u} of {n} plays"
    again = set(map(tuple, als_holdout.split_holdout(plays.repartition(5), 0.3, seed=1)[1].collect()))
    other = set(map(tuple, als_holdout.split_holdout(plays, 0.3, seed=2)[1].collect()))
    assert again == held_rows and other != held_rows


def test_evaluate_ranks_held_out_checkerboard_plays(spark, tmp_path):
    pq.write_table(checkerboard_plays(), tmp_path / "plays.parquet")
    report = als_holdout.evaluate(
        spark, str(tmp_path / "plays.parquet"), AlsParams(rank=4, iterations=5, reg=0.05),
        str(tmp_path / "checkpoints"), HoldoutOptions(fraction=0.25, k=5))
    assert report["users"] == 40 and report["heldout_plays"] > 40
    # A held-out track ties at best with the user's unplayed tracks of the same block
    # (about 4 of 14 candidates); random factors would give AUC 0.5, recall@5 about 0.36.
    assert report["auc"] > 0.75 and report["recall@5"] > 0.7, report
    assert report["params"]["blocks"] == spark.sparkContext.defaultParallelism


@pytest.mark.skipif(not (HETREC / "user_artists.dat").exists(), reason="hetrec2011 data absent")
def test_spark_matches_implicit_on_hetrec(spark, tmp_path):
    """Same split, same confidences, same rank, iterations and (mapped) regularisation.

    implicit solves x_u = (Y^T C_u Y + lam I)^-1 Y^T C_u p_u taking its input values as
    c_ui themselves, so it is given c = 1 + alpha*log(1 + r/eps) (and alpha=1). Spark's
    lambda of a row is reg * (its number of plays); implicit's is one lam for every row;
    we give implicit the same total: lam = reg * 2 * nnz / (n_users + n_tracks).
    """
    implicit_als = pytest.importorskip("implicit.cpu.als")
    sparse = pytest.importorskip("scipy.sparse")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    params = AlsParams(rank=32, reg=0.01, alpha=2.0, eps=1.0, iterations=10, seed=0, blocks=2)
    holdout = HoldoutOptions(fraction=0.2, k=500, seed=0)
    spark.sparkContext.setCheckpointDir(str(tmp_path / "checkpoints"))
    split = als_holdout.prepare(spark, str(HETREC / "user_artists.dat"), holdout, HETREC_INPUT)
    spark_report = als_holdout.score(split, *als_holdout.fit_factors(split, params), holdout)

    train = als_holdout.indexed_pairs(split.train, split.user_ids, split.track_ids)
    confidence = 1 + params.alpha * np.log1p(train.plays / params.eps)
    matrix = sparse.csr_matrix((confidence.astype(np.float32), (train.users, train.tracks)),
                               shape=(split.n_users, split.n_tracks))
    lam = params.reg * 2 * len(train.plays) / (split.n_users + split.n_tracks)
    with threadpoolctl.threadpool_limits(1, "blas"):  # implicit threads itself
        model = implicit_als.AlternatingLeastSquares(
            factors=params.rank, regularization=lam, alpha=1.0, use_cg=False,
            iterations=params.iterations, random_state=0)
        model.fit(matrix, show_progress=False)
    implicit_report = als_holdout.score(split, model.user_factors, model.item_factors, holdout)
    split.unpersist()

    logger.info("hetrec spark %s implicit %s", spark_report, implicit_report)
    assert spark_report["users"] == implicit_report["users"] > 1800
    assert spark_report["auc"] > 0.9, "far better than chance"
    for metric in ("map@500", "auc"):
        assert spark_report[metric] == pytest.approx(implicit_report[metric], rel=0.02), (
            metric, spark_report, implicit_report)
