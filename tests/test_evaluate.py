"""The evaluation protocol's parts: metrics, the ALS upper bound, the MFCC baseline."""
import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from jobs.evaluate import average_precision_at, cosine_distance, fold_in, markdown, rank_metrics
from jobs.score import factors_column
from model.bow import BagOfWords, BowConfig, mfcc_frames


def table(ids, key, matrix):
    return pa.table({key: ids, "factors": factors_column(np.asarray(matrix, np.float32))})


def test_rank_metrics_perfect_and_reversed():
    users = table(["a", "b"], "user_id", [[1, 0], [0, 1]])
    heldout = pa.table({"user_id": ["a", "b"], "track_id": ["x", "y"], "plays": [3, 1]})
    good = rank_metrics(users, table(["x", "y", "z"], "track_id", [[1, 0], [0, 1], [0, 0]]), heldout)
    bad = rank_metrics(users, table(["x", "y", "z"], "track_id", [[-1, 0], [0, -1], [0, 0]]), heldout)
    assert good["auc"] == 1.0 and good["map@500"] == 1.0 and good["users"] == 2
    assert bad["auc"] == 0.0


def test_average_precision_at_k():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    relevant = np.array([True, False, True, False])
    assert average_precision_at(scores, relevant, 500) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision_at(scores, relevant, 1) == pytest.approx(1.0)


def test_fold_in_solves_the_weighted_objective():
    """Against a brute-force minimiser of sum_u c_u (p_u - x_u.y)^2 + reg * n * |y|^2."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    counts = np.zeros(40)
    counts[[2, 5, 7, 30]] = [1, 4, 9, 2]
    alpha, eps, reg = 3.0, 0.5, 0.2
    y = fold_in(x, sp.csr_matrix(counts[None, :]), alpha, eps, reg)[0]
    c = 1 + alpha * np.log1p(counts / eps)
    p = (counts > 0).astype(float)
    weighted = x.T @ (c[:, None] * x) + reg * 4 * np.eye(3)
    np.testing.assert_allclose(y, np.linalg.solve(weighted, x.T @ (c * p)), rtol=1e-4)

    def objective(v):
        return np.sum(c * (p - x @ v) ** 2) + reg * 4 * v @ v
    for _ in range(5):  # no nearby point does better
        assert objective(y) <= objective(y + rng.normal(scale=1e-3, size=3))


def test_cosine_distance():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert cosine_distance(a, a * 3) == pytest.approx(0.0, abs=1e-7)
    assert cosine_distance(a, -a) == pytest.approx(2.0)


def test_mfcc_frames_shape():
    mels = np.random.default_rng(0).normal(size=(2, 128, 50)).astype(np.float32)
    assert mfcc_frames(mels).shape == (2, 50, 39)


def test_bag_of_words_learns_a_timbre_mapping():
    """Tracks with energy in low or high bands map to two directions; BoW gets it."""
    rng = np.random.default_rng(0)
    kinds = rng.integers(0, 2, 80)
    mels = rng.normal(size=(80, 32, 60)).astype(np.float32)
    for i, k in enumerate(kinds):
        mels[i, :16] += 4.0 if k == 0 else 0.0
        mels[i, 16:] += 4.0 if k == 1 else 0.0
    factors = np.eye(2, dtype=np.float32)[kinds] * 3
    bow = BagOfWords(BowConfig(codebook=16, frames_per_track=30)).fit(mels[:60], factors[:60])
    pred = bow.predict(mels[60:])
    assert np.mean(np.argmax(pred, axis=1) == kinds[60:]) > 0.9


def test_markdown_table_lists_every_method():
    report = {"k": 500, "users": 3, "heldout_tracks": 2,
              "methods": [{"method": "random", "map@500": 0.1, "auc": 0.5, "cosine_distance": 1.0}]}
    assert "| random | 0.1000 | 0.5000 | 1.0000 |" in markdown(report)
