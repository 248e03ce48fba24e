"""What the evaluations' figures mean: one definition of each, used by every report.

Per user: ``scores`` (n_tracks,) the model's scores, ``relevant`` (n_tracks,) bool
the tracks the user did play. Reports average them over users.
"""
from __future__ import annotations

import numpy as np


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """AUC: the probability that a positive outscores a negative, ties counting half.

    The Mann-Whitney statistic over n_pos * n_neg pairs in O(n log n); equal to
    sklearn's roc_auc_score without its per-call overhead.
    """
    ranked = np.sort(negative)
    below = np.searchsorted(ranked, positive, side="left")
    below_or_tied = np.searchsorted(ranked, positive, side="right")
    return float((below + below_or_tied).sum() / (2.0 * len(positive) * len(negative)))


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


def mean(values: list[float]) -> float:
    """The mean over users; NaN when no user could be scored."""
    return float(np.mean(values)) if values else float("nan")
