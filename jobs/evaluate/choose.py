"""Choose the predictor to ship among the trained candidates and the bag-of-words baseline.

    python -m jobs.evaluate.choose --mels DATA/mels/<hash> --item-factors ALS/item_factors \\
        --user-factors ALS/user_factors --plays plays.parquet \\
        --candidate model-head.pt --candidate model-wpe.pt --out chosen.pt

Candidates are judged by the evaluation's judge (jobs/evaluate/judge.py): each listener
of the judged tracks ranks them by x_u . y over the candidate's predictions, and the
mean per-user AUC counts. That uses every play of those tracks, not only their
factors.

A decision on a dozen validation tracks is noise: two candidates 0.01 AUC apart swap
places between reruns. So a candidate whose members were also fitted without each
fold of the warm tracks (the pretrained front end's head and the taste classifier,
model/head.py) is judged out of fold on every warm track, and the best of those wins,
unless a candidate that can only be judged on training's validation tracks (a trained
network, judged with its taste classifier as fitted without them; the bag-of-words
baseline, fitted on the training tracks) beats it there by --margin. Without folded
candidates the best validation AUC wins, as before. A candidate whose predictions
collapse (spread below --min-spread) is out. The winner is written to --out as a model
file like any other, its metrics saying what was chosen, why, and every candidate's
scores; the log says the same.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import schemas
from jobs.evaluate.judge import HeldOut, judge, predicted
from model import metadata
from model.bow import Bow, BagOfWords
from model.data import fold_of, in_validation, mel_array, read_mels, shard_track_ids
from model.predictor import FactorSpace, Predictor
from schemas import cli, factor_matrix, layout, storage
from schemas.config import BowConfig, ChooseConfig, EvaluateConfig, TrainConfig

logger = logging.getLogger(__name__)

BASELINE = "bag-of-words + linear regression"
ENSEMBLE = "ensemble of the candidates"


def bag_of_words(shards: list[Path], train_ids: list[str], targets: np.ndarray,
                 factor_space: str | None, config: BowConfig) -> Predictor:
    """The linear bag-of-words baseline fitted on ``train_ids``, as a predictor."""
    mels = read_mels(shards, train_ids)
    order = {t: i for i, t in enumerate(train_ids)}
    rows = [order[t] for t in mels.column("track_id").to_pylist()]
    net = BagOfWords(config).fit(mel_array(mels), targets[rows]).to_net()
    return Predictor((Bow(net, float(np.median(np.linalg.norm(targets, axis=1))), True),),
                     schemas.params_of(pq.read_schema(shards[0])), factor_space,
                     {"loss": "linear regression"}, source=BASELINE)


def out_of_fold(candidate: Predictor, held: HeldOut) -> np.ndarray | None:
    """The candidate's factors for every track of ``held``, each predicted by its version
    fitted without that track's fold; None when a member has no fold versions."""
    folds = candidate.metrics.get("folds", 0)
    versions = [candidate.fold(i) for i in range(folds)]
    if folds < 2 or any(v is None for v in versions):
        return None
    out = np.zeros((len(held.track_ids), candidate.n_factors), np.float32)
    for i, version in enumerate(versions):
        rows = [r for r, t in enumerate(held.track_ids) if fold_of(t, folds) == i]
        if rows:
            out[rows] = predicted(version, dataclasses.replace(
                held, track_ids=[held.track_ids[r] for r in rows]))
    return out


def scores(rows: list[dict]) -> dict[str, dict]:
    return {row["method"]: {key: value for key, value in row.items()
                            if key not in ("method", "slices", "members")} for row in rows}


def usable(judged: dict[str, dict], min_spread: float) -> dict[str, dict]:
    return {name: j for name, j in judged.items()
            if j["spread"] >= min_spread and np.isfinite(j["auc"])}


def decide(folded: dict[str, dict], validated: dict[str, dict], margin: float,
           n_warm: int, n_val: int, ensemble: str | None = None) -> tuple[str, str]:
    """(the winner, why). The ``ensemble`` of the candidates, where there is one, is the
    incumbent; else the best of the candidates judged on every warm track out of fold
    (``folded``). Another candidate, judged on the validation tracks, displaces the
    incumbent only when it beats it there by ``margin``. Without either, the best
    validation AUC wins."""
    if ensemble is not None and ensemble in validated:
        incumbent = ensemble
        why = (f"the ensemble of the candidates ({validated[ensemble]['auc']:.3f} validation "
               f"AUC on {n_val} tracks)")
    elif folded:
        incumbent = max(folded, key=lambda name: folded[name]["auc"])
        runner_up = sorted((j["auc"] for name, j in folded.items() if name != incumbent),
                           reverse=True)[:1]
        why = (f"highest out-of-fold AUC ({folded[incumbent]['auc']:.3f}"
               + (f", next {runner_up[0]:.3f}" if runner_up else "")
               + f") on all {n_warm} warm tracks")
    else:
        winner = max(validated, key=lambda name: validated[name]["auc"])
        return winner, (f"highest validation AUC ({validated[winner]['auc']:.3f}) on {n_val} "
                        f"validation tracks, among {len(validated)} candidates that do not "
                        "collapse; none could be judged out of fold")
    bar = validated.get(incumbent, {}).get("auc", float("-inf")) + margin
    challengers = {name: j for name, j in validated.items()
                   if name != incumbent and name not in folded and j["auc"] >= bar}
    if ensemble is not None and incumbent == ensemble:  # every candidate may challenge it
        challengers = {name: j for name, j in validated.items()
                       if name != incumbent and j["auc"] >= bar}
    if not challengers:
        return incumbent, why + (f"; no other candidate beat it on the {n_val} validation "
                                 f"tracks by {margin}")
    winner = max(challengers, key=lambda name: challengers[name]["auc"])
    return winner, (f"validation AUC {validated[winner]['auc']:.3f} on {n_val} tracks beats "
                    f"{incumbent}, {why}, ({bar - margin:.3f} there) by at least {margin}")


def choose(mels: Path, item_factors: Path, user_factors: Path, plays: Path,
           candidates: list[Path], out: Path, val_fraction: float = TrainConfig.val_fraction,
           min_spread: float = TrainConfig.min_spread, bow: BowConfig = BowConfig(),
           bow_train_tracks: int = EvaluateConfig.bow_train_tracks,
           catalogue: Path | None = None, frontend_mels: Path | None = None,
           margin: float = ChooseConfig.margin, combine: bool = ChooseConfig.combine) -> dict:
    """Judge every candidate and the baseline; write the winner to ``out``. Returns the
    selection record (also in the model file's metrics). ValueError when nothing
    qualifies or there is nothing to judge on. Candidates with a metadata branch read
    the ``catalogue``'s tokens; the pretrained front end's, ``frontend_mels``."""
    shards = layout.mel_shards(mels)
    tagger_shards = layout.mel_shards(frontend_mels) if frontend_mels else []
    items = storage.read_table(item_factors, schemas.ITEM_FACTORS)
    space = FactorSpace.of(item_factors)
    factors = factor_matrix(items)
    row_of = {t: i for i, t in enumerate(items.column("track_id").to_pylist())}
    heard = set(shard_track_ids(shards))
    if tagger_shards:
        heard &= set(shard_track_ids(tagger_shards))
    warm = sorted(t for t in row_of if t in heard)
    val = [t for t in warm if in_validation(t, val_fraction)]
    train = [t for t in warm if not in_validation(t, val_fraction)]
    if len(val) < 2 or not train:
        raise ValueError(f"{mels}: {len(warm)} warm tracks with spectrograms leave too few "
                         f"to choose a model on at --val-fraction {val_fraction}")
    listened = storage.read_table(plays, schemas.PLAYS)
    sample = sorted(np.random.default_rng(bow.seed).choice(
        train, min(bow_train_tracks, len(train)), replace=False).tolist())

    options = {path.name: Predictor.load(path) for path in candidates}
    tokens = None
    if any(p.vocabulary for p in options.values()):
        if catalogue is None:
            raise ValueError("a candidate reads catalogue metadata: give --catalogue")
        tokens = metadata.read_tokens(catalogue)
    candidate_names = list(options)
    options[BASELINE] = bag_of_words(shards, sample, factors[[row_of[t] for t in sample]],
                                     space.id, bow)
    users = storage.read_table(user_factors, schemas.USER_FACTORS)

    def held_out(ids: list[str]) -> HeldOut:
        return HeldOut(users, listened.filter(pc.is_in(listened["track_id"], pa.array(ids))),
                       ids, factors[[row_of[t] for t in ids]], items, shards + tagger_shards,
                       space, tokens)

    every, on_val = held_out(warm), held_out(val)
    folds = {name: oof for name, oof in ((name, out_of_fold(p, every))
                                         for name, p in options.items()) if oof is not None}
    position = {t: i for i, t in enumerate(warm)}
    val_rows = [position[t] for t in val]
    # on the validation tracks: out-of-fold predictions where there are, else each
    # candidate as fitted without them (a network's taste classifier)
    rows, _ = judge({name: folds[name][val_rows] if name in folds else p.held_out()
                     for name, p in options.items()}, on_val)
    validated = scores(rows)
    folded = scores(judge({name: folds[name] for name in folds}, every)[0]) if folds else {}
    ensemble = None
    together = [name for name in usable(validated, min_spread) if name in candidate_names]
    if combine and len(together) > 1:  # of the candidates that do not collapse
        try:
            options[ENSEMBLE] = Predictor.combined([options[n] for n in together], ENSEMBLE)
            validated.update(scores(judge({ENSEMBLE: options[ENSEMBLE].held_out()}, on_val)[0]))
            ensemble = ENSEMBLE
        except ValueError as err:
            logger.warning("the candidates are not combined: %s", err)
    fit_folded, fit_validated = usable(folded, min_spread), usable(validated, min_spread)
    if not fit_validated:
        raise ValueError(f"no candidate can be chosen: each collapsed (validation spread "
                         f"below {min_spread}) or its validation tracks have no listeners: "
                         f"{validated}")
    winner, why = decide({n: j for n, j in fit_folded.items() if n in fit_validated},
                         fit_validated, margin, len(warm), len(val), ensemble)
    selection = {"chosen": winner, "why": why, "candidates": validated,
                 "out_of_fold": folded, "margin": margin}
    options[winner].with_metrics({"selection": selection}).save(out)
    logger.info("chose %s: %s -> %s", winner, why, out)
    return selection


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate.choose", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mels", required=True, type=Path,
                        help="mel-spectrogram directory the candidates were trained on")
    parser.add_argument("--item-factors", required=True, type=Path,
                        help="the ALS item factors the candidates learned")
    parser.add_argument("--user-factors", required=True, type=Path,
                        help="the ALS user factors of the same run")
    parser.add_argument("--plays", required=True, type=Path,
                        help="the plays ALS learned from (schemas.PLAYS)")
    parser.add_argument("--candidate", type=Path, action="append", default=[],
                        help="a trained model file; repeat for each")
    parser.add_argument("--catalogue", type=Path,
                        help="the catalogue; needed by candidates with a metadata branch")
    parser.add_argument("--frontend-mels", type=Path,
                        help="the pretrained taggers' input (DATA/mels/<tagger hash>); needed by "
                             "candidates with a pretrained front end")
    parser.add_argument("--out", required=True, type=Path, help="model file to write")
    cli.add_settings(parser, TrainConfig, only=("val_fraction", "min_spread"))
    cli.add_settings(parser, ChooseConfig, only=("margin", "combine"))
    cli.add_settings(parser, BowConfig, only=("codebook",))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    args = parse_args(argv)

    def body() -> None:
        choose(args.mels, args.item_factors, args.user_factors, args.plays, args.candidate,
               args.out, args.val_fraction, args.min_spread,
               cli.settings_from(BowConfig, args, only=("codebook",)), catalogue=args.catalogue,
               frontend_mels=args.frontend_mels, margin=args.margin, combine=args.combine)
    return cli.run_job(body, logger, ValueError, FileNotFoundError)


if __name__ == "__main__":
    sys.exit(main())
