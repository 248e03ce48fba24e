"""Carrying vectors from one ALS factor space into another.

Every full ALS refit learns a space of its own: on the tracks both know, two refits of
nearly the same plays differ by a rotation (and sign flips), up to noise. An
orthogonal Procrustes map fitted on those shared tracks carries a model's predictions,
or a network's output layer, from the space it learned into tonight's.
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import pyarrow as pa
from scipy.linalg import orthogonal_procrustes

from schemas import factor_matrix

logger = logging.getLogger(__name__)


class Alignment(NamedTuple):
    """The rotation (rank, rank) with ``old @ rotation ~ new``, the tracks it was fitted
    on, and its relative residual there."""
    rotation: np.ndarray
    shared: int
    residual: float


def alignment(old: pa.Table, new: pa.Table, where: str) -> Alignment:
    """The rotation from the space of item factors ``old`` to that of ``new``
    (schemas.ITEM_FACTORS tables); ValueError naming ``where`` (the old factors) when
    they share too few tracks or differ in rank."""
    row = {t: i for i, t in enumerate(new.column("track_id").to_pylist())}
    pairs = [(i, row[t]) for i, t in enumerate(old.column("track_id").to_pylist()) if t in row]
    old_x, new_x = factor_matrix(old), factor_matrix(new)
    if old_x.shape[1] != new_x.shape[1] or len(pairs) < new_x.shape[1]:
        raise ValueError(f"{where}: rank {old_x.shape[1]} and {len(pairs)} tracks shared with "
                         f"factors of rank {new_x.shape[1]}: too few to map one space onto the "
                         "other")
    rows = np.array(pairs)
    a, b = old_x[rows[:, 0]].astype(np.float64), new_x[rows[:, 1]].astype(np.float64)
    rotation, _ = orthogonal_procrustes(a, b)
    residual = float(np.linalg.norm(a @ rotation - b) / max(np.linalg.norm(b), 1e-12))
    logger.info("a rotation between the factor spaces, fitted on %d shared tracks: relative "
                "residual %.3f", len(pairs), residual)
    return Alignment(rotation.astype(np.float32), len(pairs), residual)
