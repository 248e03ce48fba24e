"""Semi-cold tracks in the evaluation: a few plays revealed, ALS alone, audio alone, the blend.

For each number r of revealed plays (1, 2, 5, 10), every held-out track with more than
r listeners shows r of them, chosen at random (seeded); its remaining plays are what
the factors must rank. Three ways to give the track factors from what is known:

- ALS on those plays: the exact ALS item step against the trained user factors
  (Spark's regularisation, toward zero);
- audio alone: the audio model's prediction, which ignores the plays;
- the blend: the item step held toward the audio prediction with strength lambda
  (schemas.feedback.fold_in_toward), which is what scoring does for semi-cold tracks.

lambda is chosen by validation, cross-fitted: the held-out tracks are split in two by a
hash of their id, each half's blend uses the lambda of the best mean AUC over all r on
the other half, and all three ways are compared over every track.
"""
from __future__ import annotations

import logging
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import factor_matrix, factors_column
from schemas.config import SemiColdConfig
from schemas.feedback import fold_in, fold_in_toward, plays_matrix
from schemas.metrics import rank_metrics

logger = logging.getLogger(__name__)

REVEALED = (1, 2, 5, 10)
LAMBDAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)


def validation_half(track_id: str) -> bool:
    return zlib.crc32(f"semi-cold:{track_id}".encode()) % 2 == 0


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
    table = pa.table({"track_id": track_ids, "factors": factors_column(factors)})
    ranked = rank_metrics(users, table, plays, k, recall_k)
    return {"auc": ranked["auc"], f"map@{k}": ranked[f"map@{k}"], "users": ranked["users"]}


def evaluate_semicold(users: pa.Table, heldout: pa.Table, track_ids: list[str], audio: np.ndarray,
                      als: dict[str, float], k: int, recall_k: int, seed: int) -> dict:
    """The semi-cold report: per r, AUC and mAP@k of ALS alone, audio alone and the
    blend over the held-out tracks, the blend of each half of them with the lambda
    chosen on the other half (cross-fitting: no track is scored with a lambda chosen
    on it)."""
    user_x = factor_matrix(users)
    user_index = {u: i for i, u in enumerate(users.column("user_id").to_pylist())}
    audio_of = dict(zip(track_ids, audio))
    rng = np.random.default_rng(seed)
    buckets = []
    # validation[half][lambda]: AUC of that half's tracks with that lambda, one per r
    validation = {half: {lam: [] for lam in LAMBDAS} for half in (True, False)}
    for r in REVEALED:
        kept, shown, hidden = reveal(heldout, track_ids, r, rng)
        if len(kept) < 2:
            continue
        matrix = plays_matrix(shown, {t: i for i, t in enumerate(kept)}, user_index)
        prior = np.stack([audio_of[t] for t in kept])
        ways = {"als": fold_in(user_x, matrix, als["alpha"], als["eps"], als["reg"]),
                "audio": prior}
        blends = {lam: fold_in_toward(user_x, matrix, als["alpha"], als["eps"], lam, prior)
                  for lam in LAMBDAS}
        half_of = np.array([validation_half(t) for t in kept])
        for half in (True, False):
            rows = np.flatnonzero(half_of == half)
            ids = [kept[i] for i in rows]
            plays = hidden.filter(pc.is_in(hidden["track_id"], pa.array(ids, pa.string())))
            for lam, factors in blends.items():
                if len(ids) > 1:
                    validation[half][lam].append(
                        scores(users, ids, factors[rows], plays, k, recall_k)["auc"])
        buckets.append((r, kept, half_of, hidden, ways, blends))
    chosen = {half: max(LAMBDAS, key=lambda lam: np.nanmean(validation[half][lam])
                        if validation[half][lam] else -np.inf) for half in (True, False)}
    report = {"lambda_by_half": {"first": chosen[True], "second": chosen[False]},
              "validation_auc_by_lambda": {
                  lam: float(np.nanmean(validation[True][lam] + validation[False][lam]))
                  for lam in LAMBDAS if validation[True][lam] + validation[False][lam]},
              "buckets": []}
    for r, kept, half_of, hidden, ways, blends in buckets:
        # each half blended with the lambda the other half chose
        blend = np.where(half_of[:, None], blends[chosen[False]], blends[chosen[True]])
        row = {"revealed": r, "tracks": len(kept)}
        for name, factors in {**ways, "blend": blend}.items():
            row[name] = scores(users, kept, factors, hidden, k, recall_k)
        report["buckets"].append(row)
        logger.info("semi-cold, %d revealed plays, %d tracks: ALS %.3f, audio %.3f, blend %.3f "
                    "AUC", r, len(kept), row["als"]["auc"], row["audio"]["auc"], row["blend"]["auc"])
    return report


def markdown(report: dict, k: int) -> str:
    lambdas = report["lambda_by_half"]
    lines = [f"Semi-cold tracks (audio: {report['audio']}; lambda {lambdas['first']:g} and "
             f"{lambdas['second']:g}, each chosen on the other half of the tracks): AUC / mAP@{k}",
             "",
             "| revealed plays | tracks | ALS alone | audio alone | blend |", "|---|---|---|---|---|"]
    for b in report["buckets"]:
        cells = [f"{b[m]['auc']:.4f} / {b[m][f'map@{k}']:.4f}" for m in ("als", "audio", "blend")]
        lines.append(f"| {b['revealed']} | {b['tracks']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
