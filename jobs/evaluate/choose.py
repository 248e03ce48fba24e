"""Choose the predictor to ship among the trained CNNs and the bag-of-words baseline.

    python -m jobs.evaluate.choose --mels DATA/mels/<hash> --item-factors ALS/item_factors \\
        --user-factors ALS/user_factors --plays plays.parquet \\
        --candidate model-mse.pt --candidate model-wpe.pt --out chosen.pt

Every candidate is judged on training's own validation tracks (the same hash split,
--val-fraction) by the evaluation's judge (jobs/evaluate/judge.py): each listener of
those tracks ranks them by x_u . y over the candidate's predictions, and the mean
per-user AUC wins.
That uses every play of the validation tracks, not only their handful of factors. A
CNN's taste classifier learns every warm track, so it is judged in the version fitted
without the validation tracks. The bag-of-words baseline is fitted on the training
tracks and competes too; a candidate whose predictions collapse (spread below
--min-spread) is out. The winner is written to --out as a model file like any other,
its metrics saying what was chosen, why, and every candidate's score; the log says
the same.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import schemas
from jobs.evaluate.judge import HeldOut, judge
from model import metadata
from model.bow import Bow, BagOfWords
from model.data import in_validation, mel_array, read_mels, shard_track_ids
from model.predictor import FactorSpace, Predictor
from schemas import cli, factor_matrix, layout, storage
from schemas.config import BowConfig, EvaluateConfig, TrainConfig

logger = logging.getLogger(__name__)

BASELINE = "bag-of-words + linear regression"


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


def choose(mels: Path, item_factors: Path, user_factors: Path, plays: Path,
           candidates: list[Path], out: Path, val_fraction: float = TrainConfig.val_fraction,
           min_spread: float = TrainConfig.min_spread, bow: BowConfig = BowConfig(),
           bow_train_tracks: int = EvaluateConfig.bow_train_tracks,
           catalogue: Path | None = None) -> dict:
    """Judge every candidate and the baseline; write the winner to ``out``. Returns the
    selection record (also in the model file's metrics). ValueError when nothing
    qualifies or there is nothing to judge on. Candidates with a metadata branch read
    the ``catalogue``'s tokens."""
    shards = layout.mel_shards(mels)
    items = storage.read_table(item_factors, schemas.ITEM_FACTORS)
    space = FactorSpace.of(item_factors)
    factors = factor_matrix(items)
    row_of = {t: i for i, t in enumerate(items.column("track_id").to_pylist())}
    heard = set(shard_track_ids(shards))
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
    options[BASELINE] = bag_of_words(shards, sample, factors[[row_of[t] for t in sample]],
                                     space.id, bow)
    held = HeldOut(storage.read_table(user_factors, schemas.USER_FACTORS),
                   listened.filter(pc.is_in(listened["track_id"], pa.array(val))), val,
                   factors[[row_of[t] for t in val]], items, shards, space, tokens)
    # each candidate as fitted without the validation tracks (its taste classifier)
    rows, _ = judge({name: p.held_out() for name, p in options.items()}, held)
    judged = {row["method"]: {key: value for key, value in row.items()
                              if key not in ("method", "slices")} for row in rows}
    usable = {name: j for name, j in judged.items()
              if j["spread"] >= min_spread and np.isfinite(j["auc"])}
    if not usable:
        raise ValueError(f"no candidate can be chosen: each collapsed (validation spread "
                         f"below {min_spread}) or its validation tracks have no listeners: "
                         f"{judged}")
    winner = max(usable, key=lambda name: usable[name]["auc"])
    runner_up = sorted(usable.values(), key=lambda j: -j["auc"])[1:2]
    why = (f"highest validation AUC ({usable[winner]['auc']:.3f}"
           + (f", next {runner_up[0]['auc']:.3f}" if runner_up else "")
           + f") on {len(val)} validation tracks and their listeners, among "
             f"{len(usable)} candidates that do not collapse")
    selection = {"chosen": winner, "why": why, "candidates": judged}
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
    parser.add_argument("--out", required=True, type=Path, help="model file to write")
    cli.add_settings(parser, TrainConfig, only=("val_fraction", "min_spread"))
    cli.add_settings(parser, BowConfig, only=("codebook",))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    args = parse_args(argv)

    def body() -> None:
        choose(args.mels, args.item_factors, args.user_factors, args.plays, args.candidate,
               args.out, args.val_fraction, args.min_spread,
               cli.settings_from(BowConfig, args, only=("codebook",)), catalogue=args.catalogue)
    return cli.run_job(body, logger, ValueError, FileNotFoundError)


if __name__ == "__main__":
    sys.exit(main())
