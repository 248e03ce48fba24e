"""Top-k by inner product, in batches: who should hear a track, what a user should hear.

Shared by the audience job (jobs/audience.py) and the query command (jobs/query.py).
Predicted preference is x_u . y_i, as ALS defines it; similarity is the cosine.
"""
from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``scores`` (n, m): the columns of the ``k`` highest, best first, and
    their scores; ties go to the lower column. Both (n, min(k, m))."""
    k = min(k, scores.shape[1])
    if k == 0:
        return np.zeros((len(scores), 0), np.int64), np.zeros((len(scores), 0), scores.dtype)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
        np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    best = np.take_along_axis(part, order, axis=1)
    return best, np.take_along_axis(scores, best, axis=1)


def top_users(user_x: np.ndarray, track_y: np.ndarray, k: int,
              user_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """For each track (rows of ``track_y``), the ``k`` users of highest x_u . y_i, best
    first: (user rows, scores), each (tracks, min(k, users)). Users are scored
    ``user_batch`` at a time and merged into a running top k, so memory is
    tracks x (k + user_batch) however many users there are."""
    best = np.zeros((len(track_y), 0), np.int64)
    best_scores = np.zeros((len(track_y), 0), np.float32)
    for start in range(0, len(user_x), user_batch):
        block = track_y @ user_x[start:start + user_batch].T
        kept = best.shape[1]
        keep, best_scores = top_k(np.concatenate([best_scores, block.astype(np.float32)], axis=1), k)
        # column j < kept is the running best's j-th user; the others, this block's
        earlier = np.take_along_axis(best, np.minimum(keep, kept - 1), axis=1) if kept else keep
        best = np.where(keep < kept, earlier, start + keep - kept)
    return best, best_scores
