"""Semi-cold tracks in the evaluation: a few plays revealed, ALS alone, audio alone, the blend.

For each number r of revealed plays (1, 2, 5, 10), every held-out track with more than
r listeners shows r of them, chosen at random (seeded); its remaining plays are what
the factors must rank. Three ways to give the track factors from what is known:

- ALS on those plays: the exact ALS item step against the trained user factors
  (Spark's regularisation, toward zero);
- audio alone: the audio model's prediction, which ignores the plays;
- the blend: the item step held toward the audio prediction with strength lambda
  (schemas.feedback.fold_in_toward), which is what scoring does for semi-cold tracks.

lambda is chosen by validation for each r, and the choice is judged on tracks it
never saw: the held-out tracks are split in two halves by a hash of their id, the
lambda chosen on one half (see choose) is used on the other, and the other way round;
this is repeated over SPLITS different hashes and every figure is the mean over
those 2 x SPLITS test halves (ALS alone and audio alone on the very same halves).
One split of a few dozen tracks is too noisy to decide between the ways. Each half
is ranked on its own: factors held with different strengths differ in scale, so
mixing them in one ranking would mislead. The grid runs up to infinity, the audio
prediction itself, so validation may also decide that a few plays should not move
it. Scoring's lambda and its listener bound (SemiColdConfig) were set from these choices.
"""
from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import factor_matrix, factors_column
from schemas.feedback import fold_in, fold_in_toward, plays_matrix
from schemas.metrics import mean_auc, rank_metrics

logger = logging.getLogger(__name__)

REVEALED = (1, 2, 5, 10)
LAMBDAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, math.inf)
SPLITS = 5


def first_half(track_id: str, split: int) -> bool:
    # blake2b, not crc32: crc32 is affine, so salts would give the same split or its mirror
    digest = hashlib.blake2b(f"semi-cold:{split}:{track_id}".encode(), digest_size=8).digest()
    return digest[0] % 2 == 0


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


def choose(scores: dict[float, np.ndarray], relevant: np.ndarray) -> tuple[float, dict]:
    """(lambda, validation AUC by lambda) on one validation half: the largest lambda
    whose AUC is within one standard error of the best (the one-standard-error rule).

    A choice among a dozen tracks is noisy, and the audio alone is the safe side when
    a few plays say little, so the strongest hold on the audio that these tracks cannot
    tell from the best wins. The standard error is the jackknife's over the tracks
    (leaving out one at a time): the users' AUCs all rank the same few tracks, so they
    are far from independent, and the tracks are the real sample.
    """
    n = relevant.shape[1]
    full = {lam: mean_auc(s, relevant) for lam, s in scores.items()}
    best = max(full, key=lambda lam: np.nan_to_num(full[lam], nan=-1))
    leave_out = [np.arange(n) != j for j in range(n)]
    for lam in sorted(scores, reverse=True):
        gap = full[best] - full[lam]
        reps = np.array([mean_auc(scores[best][:, keep], relevant[:, keep])
                         - mean_auc(scores[lam][:, keep], relevant[:, keep]) for keep in leave_out])
        error = np.sqrt((n - 1) / n * np.nansum((reps - np.nanmean(reps)) ** 2))
        if gap <= error:
            return lam, full
    return best, full


def evaluate_semicold(users: pa.Table, heldout: pa.Table, track_ids: list[str], audio: np.ndarray,
                      als: dict[str, float], k: int, recall_k: int, seed: int) -> dict:
    """The semi-cold report: per r, AUC and mAP@k of ALS alone, audio alone and the
    validated blend, each the mean over the test halves of SPLITS two-way splits; the
    lambda each validation half chose, and the validation AUC of every lambda."""
    user_x = factor_matrix(users)
    user_index = {u: i for i, u in enumerate(users.column("user_id").to_pylist())}
    audio_of = dict(zip(track_ids, audio))
    rng = np.random.default_rng(seed)
    report = {"buckets": []}
    for r in REVEALED:
        kept, shown, hidden = reveal(heldout, track_ids, r, rng)
        matrix = plays_matrix(shown, {t: i for i, t in enumerate(kept)}, user_index)
        prior = np.stack([audio_of[t] for t in kept]) if kept else np.zeros((0, user_x.shape[1]))
        ways = {"als": fold_in(user_x, matrix, als["alpha"], als["eps"], als["reg"]),
                "audio": prior}
        blends = {lam: prior if math.isinf(lam) else
                  fold_in_toward(user_x, matrix, als["alpha"], als["eps"], lam, prior)
                  for lam in LAMBDAS}

        def half_scores(rows: np.ndarray, factors: dict) -> dict:
            ids = [kept[i] for i in rows]
            plays = hidden.filter(pc.is_in(hidden["track_id"], pa.array(ids, pa.string())))
            return {name: scores(users, ids, f[rows], plays, k, recall_k)
                    for name, f in factors.items()}

        chosen, validation, tested = [], [], []
        for split in range(SPLITS):
            first = np.array([first_half(t, split) for t in kept], dtype=bool)
            halves = np.flatnonzero(first), np.flatnonzero(~first)
            if min(map(len, halves)) < 2:  # nothing to rank on one side
                continue
            for val, test in (halves, halves[::-1]):
                val_ids = {kept[i]: j for j, i in enumerate(val)}
                relevant = np.zeros((len(user_x), len(val)), dtype=bool)
                for user, track in zip(hidden["user_id"].to_pylist(), hidden["track_id"].to_pylist()):
                    if track in val_ids and user in user_index:
                        relevant[user_index[user], val_ids[track]] = True
                lam, by_lambda = choose({lam: user_x @ f[val].T for lam, f in blends.items()},
                                        relevant)
                chosen.append(lam)
                validation.append(by_lambda)
                tested.append(half_scores(test, {**ways, "blend": blends[lam]}))
        if not tested:
            continue
        # lambdas as text ("inf" for the audio itself): JSON has no infinity
        row = {"revealed": r, "tracks": len(kept), "test_halves": len(tested),
               "lambda": f"{Counter(chosen).most_common(1)[0][0]:g}",
               "lambdas_chosen": [f"{lam:g}" for lam in chosen],
               "validation_auc_by_lambda": {f"{lam:g}": float(np.nanmean([v[lam] for v in validation]))
                                            for lam in LAMBDAS}}
        for name in ("als", "audio", "blend"):
            row[name] = {key: float(np.nanmean([t[name][key] for t in tested]))
                         for key in ("auc", f"map@{k}")}
        report["buckets"].append(row)
        logger.info("semi-cold, %d revealed plays, %d tracks: ALS %.3f, audio %.3f, blend %.3f "
                    "AUC (lambdas chosen %s)", r, len(kept), row["als"]["auc"],
                    row["audio"]["auc"], row["blend"]["auc"], dict(Counter(chosen)))
    return report


def markdown(report: dict, k: int) -> str:
    lines = [f"Semi-cold tracks (audio: {report['audio']}; lambda chosen on one half of the "
             f"held-out tracks, AUC / mAP@{k} on the other, mean over {SPLITS} splits both ways)",
             "", "| revealed plays | tracks | ALS alone | audio alone | blend | lambda (most chosen) |",
             "|---|---|---|---|---|---|"]
    for b in report["buckets"]:
        cells = [f"{b[m]['auc']:.4f} / {b[m][f'map@{k}']:.4f}" for m in ("als", "audio", "blend")]
        lines.append(f"| {b['revealed']} | {b['tracks']} | " + " | ".join(cells)
                     + f" | {b['lambda']} |")
    return "\n".join(lines) + "\n"
