"""The one judge: predictors and a held-out split in, the metrics table out.

Choosing a model to ship (jobs/evaluate/choose.py, on training's validation tracks)
and the evaluation (jobs/evaluate/job.py, on tracks ALS never saw) both call
``judge``; the metrics themselves are defined in schemas/metrics.py.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from model import metadata
from model.predictor import FactorSpace, Predictor
from schemas import cli, factor_matrix, factors_column, metrics
from schemas.config import EvaluateConfig
from schemas.metrics import unit_rows

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldOut:
    """Tracks held out of what a predictor learned, and what its predictions for them
    are judged against.

    users: ALS user factors (schemas.USER_FACTORS); plays: the plays of ``track_ids``
    (schemas.PLAYS), which each user's ranking of the tracks should put first;
    truth (len(track_ids), rank) float32: the factors ALS gives the tracks from their
    plays, for the cosine distance; warm: the ALS item factors of the warm tracks, for
    same_artist@n with ``artist_of`` (track -> artist; empty: no artists); shards,
    space, tokens: where the tracks' spectrograms are, the factor space, and the
    catalogue's tokens for predictors that read them; slices: named parts of
    ``track_ids`` also judged alone.
    """
    users: pa.Table
    plays: pa.Table
    track_ids: list[str]
    truth: np.ndarray
    warm: pa.Table
    shards: list[Path]
    space: FactorSpace
    tokens: metadata.Tokens | None = None
    artist_of: Mapping[str, str | None] = field(default_factory=dict)
    slices: Mapping[str, list[str]] = field(default_factory=dict)


def cosine_distance(pred: np.ndarray, reference: np.ndarray) -> float:
    """Mean over tracks of 1 - cos(pred_i, reference_i)."""
    return float(np.mean(1 - np.sum(unit_rows(pred) * unit_rows(reference), axis=1)))


def same_artist(pred: np.ndarray, artists: list[str | None], warm: np.ndarray,
                warm_artists: list[str | None], n: int) -> float:
    """How often a track's ``n`` nearest warm tracks (cosine) share its artist; NaN
    without artists."""
    known = [i for i, a in enumerate(artists) if a is not None]
    if not known or not any(a is not None for a in warm_artists):
        return float("nan")
    similar = unit_rows(pred[known]) @ unit_rows(warm).T
    nearest = np.argsort(-similar, axis=1, kind="stable")[:, :n]
    labels = np.array(warm_artists, dtype=object)
    return float(np.mean(labels[nearest] == np.array([artists[i] for i in known],
                                                     dtype=object)[:, None]))


def predicted(candidate: Predictor | np.ndarray, held: HeldOut) -> np.ndarray:
    """(len(track_ids), rank): a predictor's factors for the held-out tracks in their
    order, or the given factors of a reference (random, an oracle)."""
    if not isinstance(candidate, Predictor):
        return candidate
    ids, factors = candidate.predict_tracks(held.shards, held.track_ids, held.space, held.tokens)
    order = {t: i for i, t in enumerate(ids)}
    missing = [t for t in held.track_ids if t not in order]
    if missing:
        raise ValueError(f"no spectrogram for {len(missing)} held-out tracks, e.g. {missing[:3]}")
    return factors[[order[t] for t in held.track_ids]]


def judge(candidates: Mapping[str, Predictor | np.ndarray], held: HeldOut,
          config: EvaluateConfig = EvaluateConfig()
          ) -> tuple[list[dict], dict[str, np.ndarray]]:
    """(the table, each candidate's factors for the held-out tracks by name, so that
    nothing is predicted twice). The table has one row per candidate, in order:
    ``method`` (its name), ``members`` (a predictor's member kinds; empty for given
    factors), ``users`` ranked, the mean per-user AUC, mAP@k and recall@recall_k, the
    cosine distance to ``truth``, the predictions' spread, same_artist@neighbours, and
    AUC and mAP@k in each slice."""
    k, recall_k, n = config.k, config.recall_k, config.neighbours
    warm_x = factor_matrix(held.warm)
    warm_artists = [held.artist_of.get(t) for t in held.warm.column("track_id").to_pylist()]
    artists = [held.artist_of.get(t) for t in held.track_ids]
    rows, predictions = [], {}
    progress = cli.Progress(logger, "candidates judged", len(candidates), every_s=0.0)
    for name, candidate in candidates.items():
        factors = predictions[name] = predicted(candidate, held)
        table = pa.table({"track_id": held.track_ids, "factors": factors_column(factors)})
        ranked = metrics.rank_metrics(held.users, table, held.plays, k, recall_k)
        row = {"method": name,
               "members": list(candidate.kinds) if isinstance(candidate, Predictor) else [],
               "users": ranked["users"],
               **{key: ranked[key] for key in ("auc", f"map@{k}", f"recall@{recall_k}")},
               "cosine_distance": cosine_distance(factors, held.truth),
               "spread": metrics.spread(factors),
               f"same_artist@{n}": same_artist(factors, artists, warm_x, warm_artists, n),
               "slices": {}}
        for slice_name, ids in held.slices.items():
            part = metrics.rank_metrics(
                held.users, table.filter(pc.is_in(table["track_id"], pa.array(ids))),
                held.plays, k, recall_k)
            row["slices"][slice_name] = {"tracks": len(ids), "auc": part["auc"],
                                         f"map@{k}": part[f"map@{k}"]}
        rows.append(row)
        logger.info("%s: %s", name, {key: value for key, value in row.items()
                                     if key not in ("slices", "members")})
        progress.add()
    return rows, predictions
