"""What the evaluations' figures mean: one definition of each, used by every report.

Per user: ``scores`` (n_tracks,) the model's scores, ``relevant`` (n_tracks,) bool
the tracks the user did play. Reports average them over users. Per set of predicted
factors ``pred`` (n, k): their spread, and their agreement with targets.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

import schemas


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """AUC: the probability that a positive outscores a negative, ties counting half.

    The Mann-Whitney statistic over n_pos * n_neg pairs in O(n log n); equal to
    sklearn's roc_auc_score without its per-call overhead.
    """
    ranked = np.sort(negative)
    below = np.searchsorted(ranked, positive, side="left")
    below_or_tied = np.searchsorted(ranked, positive, side="right")
    return float((below + below_or_tied).sum() / (2.0 * len(positive) * len(negative)))


def mean_auc(scores: np.ndarray, relevant: np.ndarray) -> float:
    """The mean of ``auc`` over users at once: ``scores`` and ``relevant`` are (users x
    tracks), and the mean runs over the users with a played and an unplayed track among
    the columns; NaN when there is none. Ties count half, as in ``auc``."""
    positives, n = relevant.sum(axis=1), relevant.shape[1]
    users = (positives > 0) & (positives < n)
    if not users.any():
        return float("nan")
    from scipy.stats import rankdata  # a second to import: not for every user of this module
    ranks = rankdata(scores[users], axis=1)
    p = positives[users]
    return float(np.mean(((ranks * relevant[users]).sum(axis=1) - p * (p + 1) / 2) / (p * (n - p))))


def mean_auc_without_each(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """``mean_auc`` with each track left out in turn: (n_tracks,), entry j the mean AUC
    over the other tracks (NaN where no user has a played and an unplayed one left).
    One ranking serves every j, instead of n_tracks rankings.

    A user's AUC counts, over played tracks i, the unplayed tracks i outscores (ties
    half); that count for track j among all others is its rank - 1, and among the
    played or the unplayed ones its rank among those - 1. Leaving j out takes its
    pairs out of the count and the total.
    """
    from scipy.stats import rankdata  # a second to import: not for every user of this module
    relevant = relevant.astype(bool)
    n = relevant.shape[1]
    beaten = rankdata(scores, axis=1) - 1  # others track j outscores
    # valid for the played tracks, and for the unplayed ones (inf ranks above all)
    beats_unplayed = beaten - (rankdata(np.where(relevant, scores, np.inf), axis=1) - 1)
    beats_played = beaten - (rankdata(np.where(relevant, np.inf, scores), axis=1) - 1)
    p = relevant.sum(axis=1, keepdims=True).astype(float)
    q = n - p
    pairs_won = np.where(relevant, beats_unplayed, 0).sum(axis=1, keepdims=True)
    # a played j takes out the unplayed tracks it beats; an unplayed j, the played
    # tracks that beat it
    lost = np.where(relevant, beats_unplayed, p - beats_played)
    p_left, q_left = p - relevant, q - ~relevant
    counted = (p_left > 0) & (q_left > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_user = np.where(counted, (pairs_won - lost) / (p_left * q_left), 0.0)
    users = counted.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(users > 0, per_user.sum(axis=0) / users, np.nan)


def average_precision_at(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """AP@k, normalised by min(relevant tracks, k) (the paper's mAP@500 per user)."""
    top = np.argsort(-scores, kind="stable")[:k]
    hits = relevant[top]
    if not hits.any():
        return 0.0
    precision = np.cumsum(hits) / np.arange(1, len(top) + 1)
    return float((precision * hits).sum() / min(relevant.sum(), k))


def recall_at(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Share of the relevant tracks that are among the top k."""
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    return float(relevant[top].sum() / relevant.sum())


def user_metrics(scores: np.ndarray, relevant: np.ndarray, k: int, recall_k: int,
                 candidates: np.ndarray | None = None) -> tuple[float, float, float]:
    """One user's AUC, AP@k and recall@recall_k: ``scores`` (n_tracks,), ``relevant``
    (n_tracks,) bool the tracks they played; ``candidates`` (n_tracks,) bool the tracks
    that may be ranked (default all; those played in training are not). AUC is NaN
    when no candidate is unplayed."""
    if candidates is not None:
        negative = candidates & ~relevant
        scores = np.where(candidates, scores, -np.inf)  # never recommended
    else:
        negative = ~relevant
    area = auc(scores[relevant], scores[negative]) if negative.any() else float("nan")
    return (area, average_precision_at(scores, relevant, k), recall_at(scores, relevant, recall_k))


def averages(per_user: list[tuple[float, float, float]], k: int, recall_k: int) -> dict:
    """Mean AUC (over the users that have one), AP@k and recall@recall_k of
    ``user_metrics`` rows."""
    aucs = [a for a, _, _ in per_user if not np.isnan(a)]
    return {"auc": mean(aucs), f"map@{k}": mean([ap for _, ap, _ in per_user]),
            f"recall@{recall_k}": mean([r for _, _, r in per_user])}


def mean(values: list[float]) -> float:
    """The mean over users; NaN when no user could be scored."""
    return float(np.mean(values)) if values else float("nan")


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def spread(pred: np.ndarray) -> float:
    """1 - the mean pairwise cosine of the rows: near 0 when a model predicts nearly one
    direction for every track (a collapsed model); NaN for fewer than two rows."""
    n = len(pred)
    if n < 2:
        return float("nan")
    total = unit_rows(np.asarray(pred, np.float64)).sum(axis=0)
    return float(1 - (total @ total - n) / (n * (n - 1)))  # pairs i != j


def agreement(pred: np.ndarray, target: np.ndarray, reference: np.ndarray) -> float:
    """Mean cosine of prediction and target, both unit and less ``reference`` (the mean
    unit target): the targets' common direction adds the same to every track's score
    for a user, so it ranks nothing, and predicting it alone scores about 0."""
    a, b = unit_rows(pred) - reference, unit_rows(target) - reference
    return float(np.mean(np.sum(unit_rows(a) * unit_rows(b), axis=1)))


def rank_metrics(user_factors: pa.Table, track_factors: pa.Table, heldout: pa.Table,
                 k: int, recall_k: int) -> dict:
    """Mean per-user AUC, mAP@k and recall@recall_k over users with a held-out play.

    Only tracks present in ``track_factors`` are ranked; users unknown to
    ``user_factors`` (no warm plays) cannot be scored and are counted apart.
    """
    tracks = track_factors.column("track_id").to_pylist()
    col_of = {t: j for j, t in enumerate(tracks)}
    row_of = {u: i for i, u in enumerate(user_factors.column("user_id").to_pylist())}
    scores = schemas.factor_matrix(user_factors) @ schemas.factor_matrix(track_factors).T
    played: dict[int, list[int]] = {}
    unknown_users = set()
    for user, track in zip(heldout.column("user_id").to_pylist(), heldout.column("track_id").to_pylist()):
        if user not in row_of:
            unknown_users.add(user)
        elif track in col_of:
            played.setdefault(row_of[user], []).append(col_of[track])
    per_user = []
    for row, cols in played.items():
        relevant = np.zeros(len(tracks), dtype=bool)
        relevant[cols] = True
        if relevant.all():
            continue  # AUC needs a track the user did not play
        per_user.append(user_metrics(scores[row], relevant, k, recall_k))
    return {"users": len(per_user), "tracks": len(tracks), "unknown_users": len(unknown_users),
            **averages(per_user, k, recall_k)}
