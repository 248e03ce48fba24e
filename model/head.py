"""Fit the pretrained front end's head (and the taste classifier beside it) on warm tracks.

    python -m model.head --mels DATA/mels/<hash> --frontend-mels DATA/mels/<tagger hash> \\
        --item-factors ALS/item_factors --out model.pt

No torchrun and no GPU needed: the taggers are frozen (model/pretrained.py), so fitting
is one pass of them over the warm tracks' tagger inputs and a closed-form head. The
predictor it writes averages the head's predictions with the taste classifier's
(model/taste.py) unless --taste-tracks is 0; both members also keep versions fitted
without each fold of the warm tracks (--folds) and without training's validation
tracks, which choosing judges (jobs/evaluate/choose.py). Same inputs and settings, the
same model file: nothing here is random but the seeded k-means of the taste clusters.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.parquet as pq

import schemas
from model import frontend, pretrained, taste
from model.data import fold_of, in_validation, shard_track_ids
from model.pretrained import Pretrained
from model.predictor import Predictor
from model.taste import Taste
from schemas import cli, factor_matrix, layout, model_file, storage
from schemas.config import HeadConfig, TrainConfig

logger = logging.getLogger(__name__)

# what of training's settings the head shares with the networks
TRAIN_SETTINGS = ("val_fraction", "seed", "taste_tracks", "taste_c", "taste_bags")


def versions(ids: list[str], features: np.ndarray, targets: np.ndarray,
             fit: Callable[[np.ndarray, np.ndarray], dict | None], folds: int,
             val_fraction: float) -> tuple[dict | None, list, dict | None]:
    """``fit`` on every track, without each fold, and without the validation tracks."""
    fold = np.array([fold_of(t, folds) for t in ids]) if folds > 1 else np.zeros(len(ids))
    val = np.array([in_validation(t, val_fraction) for t in ids], dtype=bool)
    return (fit(features, targets),
            [fit(features[fold != i], targets[fold != i]) for i in range(folds if folds > 1 else 0)],
            fit(features[~val], targets[~val]))


def fit_predictor(mels: Path, frontend_mels: Path, item_factors: Path, config: HeadConfig,
                  train: TrainConfig) -> Predictor:
    """The predictor of the head (and taste classifier) fitted on the warm tracks."""
    main_shards, tagger_shards = layout.mel_shards(mels), layout.mel_shards(frontend_mels)
    items = storage.read_table(item_factors, schemas.ITEM_FACTORS)
    factors = factor_matrix(items)
    row_of = {t: i for i, t in enumerate(items.column("track_id").to_pylist())}
    warm = sorted(set(row_of) & set(shard_track_ids(main_shards))
                  & set(shard_track_ids(tagger_shards)))
    if len(warm) < 3:
        raise ValueError(f"{item_factors}: {len(warm)} warm tracks have spectrograms in both "
                         f"{mels} and {frontend_mels}; the head needs at least 3")
    ids, found = frontend.heard_tracks(tagger_shards, warm)
    features = found.features.astype(np.float64)
    logger.info("%d warm tracks, %d tagger features each", len(ids), features.shape[1])
    targets = factors[[row_of[t] for t in ids]]
    head, head_folds, head_held = versions(
        ids, features, targets,
        lambda x, y: pretrained.fit(x, y, config.head, config.head_c, train.seed,
                                    train.taste_bags),
        config.folds, train.val_fraction)
    if head is None:
        raise ValueError(f"{item_factors}: too few warm tracks to fit the head")
    members = [Pretrained(head, frontend.version(), head_folds, head_held)]
    if train.taste_tracks:
        sample = sorted(np.random.default_rng(train.seed).choice(
            warm, min(train.taste_tracks, len(warm)), replace=False).tolist())
        found, statistics = taste.features_of(main_shards, sample)
        arrays, taste_folds, taste_held = versions(
            found, statistics, factors[[row_of[t] for t in found]],
            lambda x, y: taste.fit(x, y, train.taste_c, train.seed, bags=train.taste_bags),
            config.folds, train.val_fraction)
        if arrays is not None:
            members.append(Taste(arrays, taste_held, taste_folds))
    alpha = head.get("alpha")
    return Predictor(tuple(members), schemas.params_of(pq.read_schema(main_shards[0])),
                     storage.read_params(item_factors).get(model_file.FACTOR_SPACE),
                     {"loss": f"{config.head} head", "train_tracks": len(ids),
                      "features": int(features.shape[1]), "folds": config.folds,
                      "ridge_alpha": None if alpha is None else float(alpha[0]),
                      "taste_clusters": members[-1].arrays["centres"].shape[-2]
                      if len(members) > 1 else 0})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m model.head", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mels", required=True, type=Path,
                        help="spectrograms of the predictor's own settings (DATA/mels/<hash>)")
    parser.add_argument("--frontend-mels", required=True, type=Path,
                        help="the taggers' input made with them (DATA/mels/<tagger hash>)")
    parser.add_argument("--item-factors", required=True, type=Path,
                        help="ALS item factors (schemas.ITEM_FACTORS)")
    parser.add_argument("--out", required=True, type=Path, help="model file to write")
    cli.add_settings(parser, HeadConfig)
    cli.add_settings(parser, TrainConfig, only=TRAIN_SETTINGS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    args = parse_args(argv)

    def body() -> None:
        predictor = fit_predictor(args.mels, args.frontend_mels, args.item_factors,
                                  cli.settings_from(HeadConfig, args),
                                  cli.settings_from(TrainConfig, args, only=TRAIN_SETTINGS))
        version = predictor.save(args.out)
        logger.info("model %s (%s) -> %s", version, predictor.metrics["loss"], args.out)
    return cli.run_job(body, logger, ValueError, FileNotFoundError)


if __name__ == "__main__":
    sys.exit(main())
