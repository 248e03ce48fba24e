"""Semi-cold tracks in the evaluation: a few plays revealed, ALS alone, audio alone, the blend.

For each number r of revealed plays (1, 2, 5, 10), every held-out track with more than
r listeners shows r of them, chosen at random (seeded); its remaining plays are what
the factors must rank. Three ways to give the track factors from what is known:

- ALS on those plays: the exact ALS item step against the trained user factors
  (Spark's regularisation, toward zero);
- audio alone: the audio model's prediction, which ignores the plays;
- the blend: the item step held toward the audio prediction with strength lambda
  (schemas.feedback.fold_in_toward), which is what scoring does for semi-cold tracks.

lambda is chosen by validation for each r: the held-out tracks are split in two by a
hash of their id, the lambda of the best AUC on one half is used on the other, where
all three ways are compared. (Each half's blends must be compared among themselves:
factors held with different strengths differ in scale, so mixing them in one ranking
would mislead.) Scoring's lambda (SemiColdConfig.reg) was set from these choices.
"""
from __future__ import annotations

import logging
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import factor_matrix, factors_column
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
    """The semi-cold report: per r, the lambda that did best on the validation half of
    the held-out tracks, and AUC and mAP@k of ALS alone, audio alone and that blend on
    the other half."""
    user_x = factor_matrix(users)
    user_index = {u: i for i, u in enumerate(users.column("user_id").to_pylist())}
    audio_of = dict(zip(track_ids, audio))
    rng = np.random.default_rng(seed)
    report = {"buckets": []}
    for r in REVEALED:
        kept, shown, hidden = reveal(heldout, track_ids, r, rng)
        val = np.flatnonzero([validation_half(t) for t in kept])
        test = np.setdiff1d(np.arange(len(kept)), val)
        if min(len(val), len(test)) < 2:  # nothing to rank on one side
            continue
        matrix = plays_matrix(shown, {t: i for i, t in enumerate(kept)}, user_index)
        prior = np.stack([audio_of[t] for t in kept])
        ways = {"als": fold_in(user_x, matrix, als["alpha"], als["eps"], als["reg"]),
                "audio": prior}
        blends = {lam: fold_in_toward(user_x, matrix, als["alpha"], als["eps"], lam, prior)
                  for lam in LAMBDAS}
        parts = {}
        for name, rows in (("val", val), ("test", test)):
            ids = [kept[i] for i in rows]
            parts[name] = (rows, ids, hidden.filter(pc.is_in(hidden["track_id"],
                                                             pa.array(ids, pa.string()))))
        rows, ids, plays = parts["val"]
        validation = {lam: scores(users, ids, factors[rows], plays, k, recall_k)["auc"]
                      for lam, factors in blends.items()}
        chosen = max(LAMBDAS, key=lambda lam: np.nan_to_num(validation[lam], nan=-1))
        rows, ids, plays = parts["test"]
        row = {"revealed": r, "tracks": len(ids), "lambda": chosen,
               "validation_auc_by_lambda": validation}
        for name, factors in {**ways, "blend": blends[chosen]}.items():
            row[name] = scores(users, ids, factors[rows], plays, k, recall_k)
        report["buckets"].append(row)
        logger.info("semi-cold, %d revealed plays, %d tracks: ALS %.3f, audio %.3f, blend %.3f "
                    "AUC (lambda %g)", r, len(ids), row["als"]["auc"], row["audio"]["auc"],
                    row["blend"]["auc"], chosen)
    return report


def markdown(report: dict, k: int) -> str:
    lines = [f"Semi-cold tracks (audio: {report['audio']}; lambda chosen on the validation half "
             f"of the held-out tracks): AUC / mAP@{k} on the other half", "",
             "| revealed plays | tracks | ALS alone | audio alone | blend | lambda |",
             "|---|---|---|---|---|---|"]
    for b in report["buckets"]:
        cells = [f"{b[m]['auc']:.4f} / {b[m][f'map@{k}']:.4f}" for m in ("als", "audio", "blend")]
        lines.append(f"| {b['revealed']} | {b['tracks']} | " + " | ".join(cells)
                     + f" | {b['lambda']:g} |")
    return "\n".join(lines) + "\n"
