"""Choose the predictor to ship among the trained CNNs and the bag-of-words baseline.

    python -m model.choose --mels DATA/mels/<hash> --item-factors ALS/item_factors \\
        --user-factors ALS/user_factors --plays plays.parquet \\
        --candidate model-mse.pt --candidate model-wpe.pt --out chosen.pt

Every candidate is judged on training's own validation tracks (the same hash split,
--val-fraction) as the evaluation judges held-out tracks: each listener of those tracks
ranks them by x_u . y over the candidate's predictions, and the mean per-user AUC wins.
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
from model import metadata
from model.artefact import load_model, save_model
from model.bow import BagOfWords
from model.data import in_validation, mel_array, read_mels, shard_track_ids, unit_rows
from model.predict import predict_tracks, vocabulary
from schemas import cli, factor_matrix, factors_column, layout, metrics, model_file, storage
from schemas.config import BowConfig, EvaluateConfig, TrainConfig

logger = logging.getLogger(__name__)


def bag_of_words(shards: list[Path], train_ids: list[str], targets: np.ndarray,
                 factor_space: str | None, config: BowConfig) -> tuple[object, dict]:
    """The linear bag-of-words baseline fitted on ``train_ids``, as (model, artefact)."""
    mels = read_mels(shards, train_ids)
    order = {t: i for i, t in enumerate(train_ids)}
    rows = [order[t] for t in mels.column("track_id").to_pylist()]
    net = BagOfWords(config).fit(mel_array(mels), targets[rows]).to_net()
    artefact = {"net_config": net.config.to_dict(), "state": net.state_dict(),
                "mel_params": schemas.params_of(pq.read_schema(shards[0])),
                "factor_scale": float(np.median(np.linalg.norm(targets, axis=1))),
                "unit_output": True, "metrics": {"loss": "linear regression"},
                model_file.FACTOR_SPACE: factor_space}
    return net, artefact


def judged_as(artefact: dict) -> dict:
    """The candidate as judged on the validation tracks: with the taste classifier
    fitted without them, where the model file has one (model/taste.py)."""
    if "taste_held_out" not in artefact:
        return artefact
    return {**artefact, "taste": artefact["taste_held_out"]}


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
    factor_space = storage.read_params(item_factors).get(model_file.FACTOR_SPACE)
    factors = factor_matrix(items)
    row_of = {t: i for i, t in enumerate(items.column("track_id").to_pylist())}
    heard = set(shard_track_ids(shards))
    warm = sorted(t for t in row_of if t in heard)
    val = [t for t in warm if in_validation(t, val_fraction)]
    train = [t for t in warm if not in_validation(t, val_fraction)]
    if len(val) < 2 or not train:
        raise ValueError(f"{mels}: {len(warm)} warm tracks with spectrograms leave too few "
                         f"to choose a model on at --val-fraction {val_fraction}")
    reference = unit_rows(factors[[row_of[t] for t in train]]).mean(axis=0)
    users = storage.read_table(user_factors, schemas.USER_FACTORS)
    listened = storage.read_table(plays, schemas.PLAYS)
    listened = listened.filter(pc.is_in(listened["track_id"], pa.array(val)))
    sample = sorted(np.random.default_rng(bow.seed).choice(
        train, min(bow_train_tracks, len(train)), replace=False).tolist())

    judged = {}
    options = {path.name: load_model(path) for path in candidates}
    tokens = None
    if any(vocabulary(model) for model, _ in options.values()):
        if catalogue is None:
            raise ValueError("a candidate reads catalogue metadata: give --catalogue")
        tokens = metadata.read_tokens(catalogue)
    options["bag-of-words + linear regression"] = bag_of_words(
        shards, sample, factors[[row_of[t] for t in sample]], factor_space, bow)
    for name, (model, artefact) in options.items():
        if factor_space is not None:  # factors that name their space: it must be theirs
            model_file.check_factor_space(artefact, name,
                                          {model_file.FACTOR_SPACE: factor_space}, item_factors)
        ids, pred = predict_tracks(model, judged_as(artefact), shards, val, tokens)
        ranked = metrics.rank_metrics(users, pa.table({"track_id": ids,
                                                       "factors": factors_column(pred)}),
                                      listened, EvaluateConfig.k, EvaluateConfig.recall_k)
        judged[name] = {"auc": ranked["auc"], "users": ranked["users"],
                        "agreement": metrics.agreement(pred, factors[[row_of[t] for t in ids]],
                                                       reference),
                        "spread": metrics.spread(pred)}
        logger.info("%s: validation AUC %.3f over %d listeners, agreement %.3f, spread %.3f "
                    "on %d tracks", name, ranked["auc"], ranked["users"],
                    judged[name]["agreement"], judged[name]["spread"], len(ids))
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
    model, artefact = options[winner]
    save_model(out, model.config, artefact["state"], artefact["mel_params"],
               artefact["factor_scale"], {**artefact["metrics"], "selection": selection},
               unit_output=artefact["unit_output"], factor_space=factor_space,
               taste=artefact.get("taste"), taste_held_out=artefact.get("taste_held_out"))
    logger.info("chose %s: %s -> %s", winner, why, out)
    return selection


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m model.choose", description=__doc__,
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
    parser.add_argument("--val-fraction", type=float, default=TrainConfig.val_fraction,
                        help="training's validation share (default %(default)s)")
    parser.add_argument("--min-spread", type=float, default=TrainConfig.min_spread,
                        help="candidates whose predictions spread less are out "
                             "(default %(default)s)")
    parser.add_argument("--bow-codebook", type=int, default=BowConfig.codebook,
                        help="k-means words of the baseline (default %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    args = parse_args(argv)

    def body() -> None:
        choose(args.mels, args.item_factors, args.user_factors, args.plays, args.candidate,
               args.out, args.val_fraction, args.min_spread, BowConfig(codebook=args.bow_codebook),
               catalogue=args.catalogue)
    return cli.run_job(body, logger, ValueError, FileNotFoundError)


if __name__ == "__main__":
    sys.exit(main())
