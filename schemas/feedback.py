"""Implicit feedback as the pipeline models it (Hu, Koren & Volinsky 2008; NIPS 2013):
the confidence of a play count, the play matrix, and the exact ALS item step.

Spark's ALS is fed r' = log(1 + r / eps) (jobs/als/job.py), which makes its c = 1 + alpha r'
this same confidence.
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from schemas.metrics import unit_rows

# What an ALS run records in its factors' metadata, and what confidence and the
# item step need from it.
ALS_SETTINGS = ("alpha", "eps", "reg")


def confidence(plays: np.ndarray, alpha: float, eps: float) -> np.ndarray:
    """c = 1 + alpha * log(1 + r / eps), the paper's confidence of play counts r."""
    return 1 + alpha * np.log1p(np.asarray(plays, dtype=np.float64) / eps)


def als_settings(params: Mapping[str, object], source: str | os.PathLike) -> dict[str, float]:
    """alpha, eps and reg of the ALS run whose factors carry ``params`` as metadata.

    Raises ValueError naming ``source`` when they are missing: guessing would score
    with another confidence than the one the factors were learned with.
    """
    missing = [name for name in ALS_SETTINGS if name not in params]
    if missing:
        raise ValueError(f"{source}: its metadata lacks the ALS settings {missing}; "
                         "factors written by jobs/als/job.py carry them")
    return {name: float(params[name]) for name in ALS_SETTINGS}


def plays_matrix(plays: pa.Table, track_index: Mapping[str, int],
                 user_index: Mapping[str, int]) -> sp.csr_matrix:
    """(tracks x users) play counts of a schemas.PLAYS table, duplicates summed.

    Rows whose track or user has no index, or whose count is not positive, are left out.
    """
    triples = [(track_index[t], user_index[u], n) for u, t, n in zip(
        plays.column("user_id").to_pylist(), plays.column("track_id").to_pylist(),
        plays.column("plays").to_pylist()) if t in track_index and u in user_index and n > 0]
    rows, cols, counts = (np.array(v) for v in zip(*triples)) if triples else (np.zeros(0),) * 3
    return sp.csr_matrix((counts.astype(np.float64), (rows.astype(int), cols.astype(int))),
                         shape=(len(track_index), len(user_index)))


def item_step(user_factors: np.ndarray, plays: sp.csr_matrix, alpha: float, eps: float,
              reg: np.ndarray, prior: np.ndarray | None = None, batch: int = 4096) -> np.ndarray:
    """The exact ALS item step for each row i of ``plays`` (tracks x users), users fixed:
    the minimiser of sum_u c_ui (p_ui - x_u' y)^2 + reg_i ||y - prior_i||^2, i.e.
    y_i = (X'X + X' (C_i - I) X + reg_i I)^-1 (X' C_i p_i + reg_i prior_i).

    The sum runs over every user, as in implicit ALS (a user without plays of the
    track prefers it 0 with confidence 1). ``reg`` holds one strength per track;
    ``prior`` (tracks x k) defaults to zero. Solved ``batch`` tracks at a time.
    Returns (n_tracks, k) float32.
    """
    x = user_factors.astype(np.float64)
    k = x.shape[1]
    gram = x.T @ x
    plays = plays.tocsr()
    out = np.zeros((plays.shape[0], k))
    for start in range(0, plays.shape[0], batch):
        part = plays[start:start + batch].tocoo()
        n = part.shape[0]
        c = confidence(part.data, alpha, eps)
        xu = x[part.col]
        a = gram + reg[start:start + n, None, None] * np.eye(k)
        np.add.at(a, part.row, (c - 1)[:, None, None] * xu[:, :, None] * xu[:, None, :])
        b = np.zeros((n, k)) if prior is None else \
            reg[start:start + n, None] * prior[start:start + n].astype(np.float64)
        np.add.at(b, part.row, c[:, None] * xu)
        out[start:start + n] = np.linalg.solve(a, b[:, :, None])[:, :, 0]
    return out.astype(np.float32)


def fold_in(user_factors: np.ndarray, plays: sp.csr_matrix, alpha: float, eps: float,
            reg: float) -> np.ndarray:
    """The item step as Spark's ALS takes it: toward zero, its regularisation scaled
    by the track's number of plays n_i (reg * n_i). Returns (n_tracks, k) float32."""
    n_plays = np.diff(plays.tocsr().indptr)
    return item_step(user_factors, plays, alpha, eps, reg * np.maximum(n_plays, 1))


def fold_in_toward(user_factors: np.ndarray, plays: sp.csr_matrix, alpha: float, eps: float,
                   reg: float, prior: np.ndarray, batch: int = 4096) -> np.ndarray:
    """The item step held toward ``prior`` (tracks x k) with strength ``reg`` instead of
    toward zero: each play pulls y toward what ALS would learn, and reg sets how
    strongly the prior (a track's audio prediction) holds it. (n_tracks, k) float32."""
    return item_step(user_factors, plays, alpha, eps, np.full(plays.shape[0], float(reg)),
                     prior, batch)


def blend_toward(user_factors: np.ndarray, plays: sp.csr_matrix, alpha: float, eps: float,
                 reg: float, prior: np.ndarray, batch: int = 4096) -> np.ndarray:
    """A semi-cold track's factors: the item step held toward ``prior`` (its audio
    prediction, fold_in_toward), rescaled to the prior's norm. The few plays turn the
    direction; the length, which ranks a track for every listener alike, stays the
    audio's. On held-out real music this ranked better than the item step as it is
    (jobs/evaluate/semicold.py, benchmarks/semicold_search.py). (n_tracks, k) float32."""
    y = fold_in_toward(user_factors, plays, alpha, eps, reg, prior, batch).astype(np.float64)
    return (unit_rows(y) * np.linalg.norm(prior, axis=1, keepdims=True)).astype(np.float32)
