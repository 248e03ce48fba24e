"""The validated search that set scoring's semi-cold settings (SemiColdConfig).

    python benchmarks/semicold_search.py --als DATA/runs/backfill/als-<fp> \
        --mels DATA/mels/<hash> --model DATA/runs/backfill/model-<...>.pt [--seed 0]

On an evaluation's ALS run (trained without the held-out tracks' plays) and an
audio model, for each number r of revealed plays (jobs/evaluate/semicold.py reveals
them the same way) it searches what the blend should do: tracks with fewer than m
revealed plays keep the audio prediction, the others are held toward it with one
strength lambda. One (m, lambda) for every bucket, chosen on the validation AUC summed
over the buckets (see choose): a choice per bucket rests on a dozen tracks and follows
their luck. The grid runs up to infinity, the audio prediction itself, so validation
may also decide that a few plays should not move it.

The choice is judged on tracks it never saw: the held-out tracks are split in FOLDS
folds by a hash of their id, and each fold is blended as the choice made on the other
folds says; this is repeated over SPLITS different hashes and every figure is the
mean over those FOLDS x SPLITS test folds (ALS alone and audio alone on the very same
folds). Each fold is ranked on its own: factors held with different strengths differ
in scale, so mixing them in one ranking would mislead. benchmarks/real_music.py runs
it on every seed; SemiColdConfig states what it chose. Asserts nothing.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import schemas
from jobs.evaluate.semicold import REVEALED, reveal, scores
from model.predictor import FactorSpace, Predictor
from schemas import factor_matrix, layout, storage
from schemas.config import EvaluateConfig
from schemas.feedback import als_settings, blend_toward, fold_in, plays_matrix
from schemas.metrics import mean_auc, mean_auc_without_each

logger = logging.getLogger(__name__)

LAMBDAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, math.inf)
SPLITS = 5
FOLDS = 4
# How far below the best on validation a choice may be and still count as its equal:
# the best of 44 choices on a dozen tracks is flattered by its luck. On the test folds
# of benchmarks/real_music.py (both catalogues, 3 seeds, 24 seed-bucket pairs) the blend
# fell below the better of ALS and audio in 3 pairs at 1.5, by 0.0003 at most; in 4 at 0
# (by up to 0.007) and 5 at 1 (0.004); at 2 and 3 the audio is kept where ALS already
# beats it, losing up to 0.0015 and 0.037 at 10 plays.
ERRORS = 1.5


def fold_of(track_id: str, split: int) -> int:
    """Which of FOLDS folds ``track_id`` falls in, in split number ``split``."""
    # blake2b, not crc32: crc32 is affine, so salts would give the same split or its mirror
    digest = hashlib.blake2b(f"semi-cold:{split}:{track_id}".encode(), digest_size=8).digest()
    return digest[0] % FOLDS


@dataclass
class Validation:
    """One bucket's validation tracks: their ids, each lambda's scores (users x tracks),
    which of them each user played (hidden plays only), and how far each lambda moves
    the tracks' factors from their audio prediction (mean Euclidean distance)."""
    tracks: list[str]
    scores: dict[float, np.ndarray]
    relevant: np.ndarray
    moved: dict[float, float]


@dataclass
class Bucket:
    """The held-out tracks with more than r listeners, r of them revealed: their ids,
    their hidden plays, their factors from ALS alone and from the audio alone, and
    blended with each lambda."""
    kept: list[str]
    hidden: pa.Table
    ways: dict[str, np.ndarray]
    blends: dict[float, np.ndarray]

    def folds(self, split: int) -> list[np.ndarray]:
        fold = np.array([fold_of(t, split) for t in self.kept])
        return [np.flatnonzero(fold == f) for f in range(FOLDS)]

    def validation(self, rows: np.ndarray, user_x: np.ndarray,
                   user_index: dict[str, int]) -> Validation:
        column = {self.kept[i]: j for j, i in enumerate(rows)}
        relevant = np.zeros((len(user_x), len(rows)), dtype=bool)
        for user, track in zip(self.hidden["user_id"].to_pylist(), self.hidden["track_id"].to_pylist()):
            if track in column and user in user_index:
                relevant[user_index[user], column[track]] = True
        audio = self.ways["audio"][rows]
        return Validation([self.kept[i] for i in rows],
                          {lam: user_x @ f[rows].T for lam, f in self.blends.items()}, relevant,
                          {lam: float(np.linalg.norm(f[rows] - audio, axis=1).mean())
                           for lam, f in self.blends.items()})

    def tested(self, rows: np.ndarray, lam: float, users: pa.Table, k: int, recall_k: int) -> dict:
        """AUC and mAP@k of ALS alone, audio alone and the blend with ``lam`` on ``rows``."""
        ids = [self.kept[i] for i in rows]
        plays = self.hidden.filter(pc.is_in(self.hidden["track_id"], pa.array(ids, pa.string())))
        return {name: scores(users, ids, f[rows], plays, k, recall_k)
                for name, f in {**self.ways, "blend": self.blends[lam]}.items()}


def choose(validation: dict[int, Validation]
           ) -> tuple[tuple[int, float], dict[int, dict[float, float]]]:
    """((m, lambda), validation AUC by bucket and lambda) on the validation tracks: buckets
    with fewer than m revealed plays keep the audio prediction, the others are held
    toward it with strength lambda, which is what scoring does (SemiColdConfig's
    min_listeners and reg).

    The choice is judged on the validation AUC summed over the buckets, so that one
    choice rests on every bucket's tracks instead of a dozen. Of the choices that
    these tracks cannot tell from the best (within ERRORS standard errors, the
    jackknife's over the tracks, leaving out one at a time: the users' AUCs all rank
    the same few tracks, so the tracks are the real sample), the one that moves the
    factors least from the audio prediction wins: a few plays say little, and the
    audio alone is the safe side.
    """
    full = {r: {lam: mean_auc(s, v.relevant) for lam, s in v.scores.items()}
            for r, v in validation.items()}
    without = {r: {lam: dict(zip(v.tracks, mean_auc_without_each(s, v.relevant)))
                   for lam, s in v.scores.items()} for r, v in validation.items()}

    def leaving_out(track: str) -> dict[int, dict[float, float]]:
        return {r: {lam: without[r][lam].get(track, full[r][lam]) for lam in LAMBDAS}
                for r in validation}

    def total(by: dict[int, dict[float, float]], m: int, lam: float) -> float:
        return float(np.nansum([by[r][math.inf if r < m else lam] for r in validation]))

    tracks = sorted({t for v in validation.values() for t in v.tracks})
    leave_out = [leaving_out(t) for t in tracks]
    choices = [(m, lam) for m in sorted(validation) for lam in LAMBDAS]
    best = max(choices, key=lambda c: total(full, *c))
    n = len(tracks)

    def within_error(choice: tuple[int, float]) -> bool:
        reps = np.array([total(by, *best) - total(by, *choice) for by in leave_out])
        error = np.sqrt((n - 1) / n * np.sum((reps - reps.mean()) ** 2))
        return total(full, *best) - total(full, *choice) <= ERRORS * error

    def moved(choice: tuple[int, float]) -> float:
        m, lam = choice
        return sum(v.moved[lam] for r, v in validation.items() if r >= m)

    # the least moved; among equals (the audio everywhere), the strongest hold
    chosen = min(filter(within_error, choices), key=lambda c: (moved(c), -c[0], -c[1]))
    return chosen, full


def search(users: pa.Table, heldout: pa.Table, track_ids: list[str], audio: np.ndarray,
           als: dict[str, float], k: int, recall_k: int, seed: int) -> dict:
    """The semi-cold report: per r, AUC and mAP@k of ALS alone, audio alone and the
    validated blend, each the mean over the FOLDS x SPLITS test folds; the choice made
    for each test fold, and the validation AUC of every lambda."""
    user_x = factor_matrix(users)
    user_index = {u: i for i, u in enumerate(users.column("user_id").to_pylist())}
    audio_of = dict(zip(track_ids, audio))
    rng = np.random.default_rng(seed)
    buckets = {}
    for r in REVEALED:
        kept, shown, hidden = reveal(heldout, track_ids, r, rng)
        if not kept:
            continue
        matrix = plays_matrix(shown, {t: i for i, t in enumerate(kept)}, user_index)
        prior = np.stack([audio_of[t] for t in kept])
        buckets[r] = Bucket(kept, hidden, {
            "als": fold_in(user_x, matrix, als["alpha"], als["eps"], als["reg"]), "audio": prior},
            {lam: prior if math.isinf(lam) else
             blend_toward(user_x, matrix, als["alpha"], als["eps"], lam, prior)
             for lam in LAMBDAS})

    chosen, validated = [], []
    tested: dict[int, list[dict]] = {r: [] for r in buckets}
    lambdas: dict[int, list[float]] = {r: [] for r in buckets}  # what each test fold used
    for split in range(SPLITS):
        # the buckets with two tracks in every fold at least: fewer rank nothing
        folds = {r: parts for r, b in buckets.items()
                 if min(map(len, parts := b.folds(split))) >= 2}
        for test in range(FOLDS) if folds else ():
            (m, lam), by_lambda = choose({
                r: buckets[r].validation(
                    np.concatenate([p for f, p in enumerate(parts) if f != test]),
                    user_x, user_index)
                for r, parts in folds.items()})
            chosen.append((m, lam))
            validated.append(by_lambda)
            for r, parts in folds.items():
                lambdas[r].append(math.inf if r < m else lam)
                tested[r].append(buckets[r].tested(parts[test], lambdas[r][-1],
                                                   users, k, recall_k))
    report = {"buckets": [], "choices": [f"{m}/{lam:g}" for m, lam in chosen]}
    for r, b in buckets.items():
        if not tested[r]:
            continue
        # lambdas as text ("inf" for the audio itself): JSON has no infinity
        used = [f"{lam:g}" for lam in lambdas[r]]
        row = {"revealed": r, "tracks": len(b.kept), "test_folds": len(tested[r]),
               "lambda": Counter(used).most_common(1)[0][0], "lambdas_chosen": used,
               "validation_auc_by_lambda": {
                   f"{lam:g}": float(np.nanmean([v[r][lam] for v in validated if r in v]))
                   for lam in LAMBDAS}}
        for name in ("als", "audio", "blend"):
            row[name] = {key: float(np.nanmean([t[name][key] for t in tested[r]]))
                         for key in ("auc", f"map@{k}")}
        report["buckets"].append(row)
        logger.info("semi-cold, %d revealed plays, %d tracks: ALS %.3f, audio %.3f, blend %.3f "
                    "AUC (lambdas chosen %s)", r, len(b.kept), row["als"]["auc"],
                    row["audio"]["auc"], row["blend"]["auc"], dict(Counter(used)))
    return report


def markdown(report: dict, k: int) -> str:
    choices = ", ".join(f"{c} x{n}" for c, n in Counter(report["choices"]).most_common())
    lines = [f"Semi-cold search (min revealed plays / lambda chosen on {FOLDS - 1} of {FOLDS} "
             f"folds of the held-out tracks, AUC / mAP@{k} on the other, mean over the folds "
             f"of {SPLITS} splits; choices: {choices})",
             "", "| revealed plays | tracks | ALS alone | audio alone | blend | lambda (most chosen) |",
             "|---|---|---|---|---|---|"]
    for b in report["buckets"]:
        cells = [f"{b[m]['auc']:.4f} / {b[m][f'map@{k}']:.4f}" for m in ("als", "audio", "blend")]
        lines.append(f"| {b['revealed']} | {b['tracks']} | " + " | ".join(cells)
                     + f" | {b['lambda']} |")
    return "\n".join(lines) + "\n"


def run(als_dir: Path, mels: Path, model: Path, seed: int,
        config: EvaluateConfig = EvaluateConfig()) -> dict:
    """The search on the held-out tracks of the ALS run ``als_dir``, with ``model``'s
    predictions as the audio."""
    users = storage.read_table(als_dir / layout.USER_FACTORS, schemas.USER_FACTORS)
    items = als_dir / layout.ITEM_FACTORS
    heldout = storage.read_table(als_dir / layout.HELDOUT_PLAYS, schemas.PLAYS)
    wanted = sorted(set(heldout.column("track_id").to_pylist()))
    ids, audio = Predictor.load(model).predict_tracks(layout.mel_shards(mels), wanted,
                                                      FactorSpace.of(items))
    return search(users, heldout, ids, audio, als_settings(storage.read_params(items), items),
                  config.k, config.recall_k, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--als", type=Path, required=True,
                        help="an evaluation's ALS run (with held-out plays)")
    parser.add_argument("--mels", type=Path, required=True, help="the model's spectrograms")
    parser.add_argument("--model", type=Path, required=True, help="the audio model file")
    parser.add_argument("--seed", type=int, default=EvaluateConfig.seed)
    parser.add_argument("--out", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    report = run(args.als, args.mels, args.model, args.seed)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report, EvaluateConfig.k))
    return 0


if __name__ == "__main__":
    sys.exit(main())
