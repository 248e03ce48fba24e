"""Top-k by inner product, in batches: who should hear a track, what a user should hear.

Shared by the audience job (jobs/audience.py) and the query command (jobs/query.py).
Predicted preference is x_u . y_i, as ALS defines it; similarity is the cosine.
"""
from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``scores`` (n, m): the columns of the ``k`` highest, best first, and
    their scores; ties go to the lower column, at the k-th place too. Both (n, min(k, m))."""
    k = min(k, scores.shape[1])
    if k == 0:
        return np.zeros((len(scores), 0), np.int64), np.zeros((len(scores), 0), scores.dtype)
    if k < scores.shape[1]:
        # everything above the k-th score, then as many of the columns equal to it as
        # fill k, the lowest first (a partition alone would take any of them)
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]
        above = scores > kth
        tied = scores == kth
        wanted = k - above.sum(axis=1, keepdims=True)
        chosen = above | (tied & (np.cumsum(tied, axis=1) <= wanted))
        part = np.nonzero(chosen)[1].reshape(len(scores), k)
    else:
        part = np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    best = np.take_along_axis(part, order, axis=1)
    return best, np.take_along_axis(scores, best, axis=1)


class RunningTop:
    """Each of ``rows`` rows' ``k`` highest scores over columns that come a block at a
    time, best first, ties to the lower column, as :func:`top_k` of all the columns at
    once would give. Memory is rows x k, however many columns pass.

    Once a row holds k, a block's column can enter only above the row's k-th score,
    and after the first blocks few do: the candidates are found by one comparison
    and only they are merged, so a block costs little more than computing its scores.
    """

    def __init__(self, rows: int, k: int) -> None:
        self.k = k
        self.columns = np.zeros((rows, 0), np.int64)
        self.scores = np.zeros((rows, 0), np.float32)
        self.seen = 0

    def add(self, block: np.ndarray) -> None:
        """Take the scores of the next ``block.shape[1]`` columns, (rows, m)."""
        block = block.astype(np.float32, copy=False)
        offset, self.seen = self.seen, self.seen + block.shape[1]
        if self.columns.shape[1] < self.k:  # not full yet: every column is a candidate
            rows = np.arange(len(block))
            candidates, columns = block, np.broadcast_to(offset + np.arange(block.shape[1]),
                                                         block.shape)
        else:
            hit_rows, hit_columns = np.nonzero(block > self.scores[:, -1:])
            if not len(hit_rows):
                return
            counts = np.bincount(hit_rows, minlength=len(block))
            rows = np.flatnonzero(counts)
            # each row's candidates side by side, padded with -inf, which never enters
            slot = np.arange(len(hit_rows)) - np.repeat(np.cumsum(counts) - counts, counts)
            at = np.searchsorted(rows, hit_rows)
            candidates = np.full((len(rows), counts.max()), -np.inf, np.float32)
            columns = np.zeros(candidates.shape, np.int64)
            candidates[at, slot] = block[hit_rows, hit_columns]
            columns[at, slot] = offset + hit_columns
        # the running best first: on a tie, its columns are the lower ones
        merged = np.concatenate([self.scores[rows], candidates], axis=1)
        keep, kept = top_k(merged, self.k)
        chosen = np.take_along_axis(np.concatenate([self.columns[rows], columns], axis=1),
                                    keep, axis=1)
        if chosen.shape[1] > self.columns.shape[1]:  # still filling: every row was merged
            self.columns, self.scores = chosen, kept
        else:
            self.columns[rows], self.scores[rows] = chosen, kept


def merge_tops(first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray],
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """Two tops of the same rows over disjoint columns as one: each is (scores, columns),
    arrays (rows, <= k) best first, ``columns`` global numbers. The ``k`` best of both,
    ties to the lower column as :func:`top_k` would give over all the columns at once,
    whatever order the parts come in."""
    scores, columns = (np.concatenate(pair, axis=1) for pair in zip(first, second))
    order = np.lexsort((columns, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(columns, order, axis=1)
