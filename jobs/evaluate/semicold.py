"""Semi-cold tracks in the evaluation: a few plays revealed, ALS alone, audio alone, the blend.

For each number r of revealed plays (1, 2, 5, 10), every held-out track with more than
r listeners shows r of them, chosen at random (seeded); its remaining plays are what
the factors must rank. Three ways to give the track factors from what is known:

- ALS on those plays: the exact ALS item step against the trained user factors
  (Spark's regularisation, toward zero);
- audio alone: the audio model's prediction, which ignores the plays;
- the blend, as scoring serves it (SemiColdConfig): a track with fewer than
  min_listeners listeners keeps its audio prediction, the others get the item step
  held toward it with strength reg, at its length (schemas.feedback.blend_toward).

Those settings were chosen by a validated search on real music, which is a benchmark
(benchmarks/semicold_search.py), not a stage: the evaluation reports what ships.
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from schemas import factor_matrix, factors_column
from schemas.config import SemiColdConfig
from schemas.feedback import blend_toward, fold_in, plays_matrix
from schemas.metrics import rank_metrics

logger = logging.getLogger(__name__)

REVEALED = (1, 2, 5, 10)


def reveal(heldout: pa.Table, track_ids: list[str], r: int,
           rng: np.random.Generator) -> tuple[list[str], pa.Table, pa.Table]:
    """(tracks with more than r listeners, their r revealed plays, their other plays)."""
    rows: dict[str, list[int]] = {}
    for i, track in enumerate(heldout.column("track_id").to_pylist()):
        rows.setdefault(track, []).append(i)
    shown, hidden, kept = [], [], []
    for track in track_ids:
        mine = rows.get(track, [])
        if len(mine) <= r:
            continue
        kept.append(track)
        picked = set(rng.choice(len(mine), r, replace=False).tolist())
        shown += [row for j, row in enumerate(mine) if j in picked]
        hidden += [row for j, row in enumerate(mine) if j not in picked]
    return kept, heldout.take(pa.array(shown, pa.int64())), heldout.take(pa.array(hidden, pa.int64()))


def scores(users: pa.Table, track_ids: list[str], factors: np.ndarray, plays: pa.Table,
           k: int, recall_k: int) -> dict:
    """AUC, mAP@k and users ranked, for ``factors`` of ``track_ids`` against ``plays``."""
    table = pa.table({"track_id": track_ids, "factors": factors_column(factors)})
    ranked = rank_metrics(users, table, plays, k, recall_k)
    return {"auc": ranked["auc"], f"map@{k}": ranked[f"map@{k}"], "users": ranked["users"]}


def ways(users: pa.Table, shown: pa.Table, kept: list[str], audio: np.ndarray,
         als: dict[str, float], reg: float) -> tuple[np.ndarray, np.ndarray]:
    """(ALS alone, the blend with strength ``reg``) for the ``kept`` tracks from their
    ``shown`` plays; ``audio`` (len(kept), rank) their audio predictions."""
    user_index = {u: i for i, u in enumerate(users.column("user_id").to_pylist())}
    matrix = plays_matrix(shown, {t: i for i, t in enumerate(kept)}, user_index)
    user_x = factor_matrix(users)
    return (fold_in(user_x, matrix, als["alpha"], als["eps"], als["reg"]),
            blend_toward(user_x, matrix, als["alpha"], als["eps"], reg, audio))


def evaluate_semicold(users: pa.Table, heldout: pa.Table, track_ids: list[str], audio: np.ndarray,
                      als: dict[str, float], k: int, recall_k: int, seed: int,
                      settings: SemiColdConfig = SemiColdConfig()) -> dict:
    """The semi-cold report: per r, AUC and mAP@k of ALS alone, audio alone and the
    blend scoring serves, with ``settings`` (scoring's)."""
    audio_of = dict(zip(track_ids, audio))
    rng = np.random.default_rng(seed)
    report = {"min_listeners": settings.min_listeners, "reg": settings.reg, "buckets": []}
    for r in REVEALED:
        kept, shown, hidden = reveal(heldout, track_ids, r, rng)
        if len(kept) < 2:  # fewer rank nothing
            continue
        prior = np.stack([audio_of[t] for t in kept])
        alone, blended = ways(users, shown, kept, prior, als, settings.reg)
        served = blended if r >= settings.min_listeners else prior
        row = {"revealed": r, "tracks": len(kept), "blends": r >= settings.min_listeners}
        for name, factors in (("als", alone), ("audio", prior), ("blend", served)):
            ranked = scores(users, kept, factors, hidden, k, recall_k)
            row[name] = {key: ranked[key] for key in ("auc", f"map@{k}")}
        report["buckets"].append(row)
        logger.info("semi-cold, %d revealed plays, %d tracks: ALS %.3f, audio %.3f, blend %.3f AUC",
                    r, len(kept), row["als"]["auc"], row["audio"]["auc"], row["blend"]["auc"])
    return report


def markdown(report: dict, k: int) -> str:
    lines = [f"Semi-cold tracks (audio: {report['audio']}; as scoring serves them: fewer than "
             f"{report['min_listeners']} listeners keep the audio prediction, the others are "
             f"held toward it with strength {report['reg']:g}; AUC / mAP@{k})",
             "", "| revealed plays | tracks | ALS alone | audio alone | blend |",
             "|---|---|---|---|---|"]
    for b in report["buckets"]:
        cells = [f"{b[m]['auc']:.4f} / {b[m][f'map@{k}']:.4f}" for m in ("als", "audio", "blend")]
        lines.append(f"| {b['revealed']} | {b['tracks']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
