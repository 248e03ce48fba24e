"""Predict factors for every cold track (in the catalogue, without ALS factors).

    python -m jobs.score --model model.pt --mels DATA/mels/<hash> \\
        --catalogue catalogue.parquet --item-factors DATA/als/item_factors --out DIR \\
        [--als DATA/als]

With --als (the ALS run's directory), semi-cold tracks, those whose few plays the
run kept in sparse_plays/, get the ALS item step held toward their audio prediction,
at its length (schemas.feedback.blend_toward, strength --semi-cold-reg), instead of
their ALS factors, or their audio prediction alone below --semi-cold-min-listeners
listeners, and every track's listeners and plays are recorded.

Output directory (appears atomically):
    predicted_factors.parquet  schemas.PREDICTED_FACTORS: cold tracks, from audio
    track_factors.parquet      schemas.TRACK_FACTORS: warm from ALS, semi-cold from
                               ALS + audio, cold from audio
    unscored.parquet           schemas.DEAD_LETTERS: cold tracks with no spectrogram
    unlisted.parquet           schemas.DEAD_LETTERS: played tracks the catalogue lacks
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import schemas
from model import metadata
from model.predictor import FactorSpace, Predictor
from schemas import cli, layout, storage
from schemas import factor_matrix, factors_column
from schemas.config import SemiColdConfig
from schemas.feedback import als_settings, blend_toward, plays_matrix
from schemas.spaces import alignment

logger = logging.getLogger(__name__)


def cold_track_ids(catalogue: pa.Table, item_factors: pa.Table) -> list[str]:
    """Catalogue tracks that ALS gave no factors, in catalogue order."""
    warm = set(item_factors.column("track_id").to_pylist())
    return [t for t in catalogue.column("track_id").to_pylist() if t not in warm]


def semi_cold(predict: Predict, als_dir: Path, warm_ids: list[str], reg: float,
              min_listeners: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, factors, blended) of the semi-cold tracks ``predict`` gives factors:
    their plays in ``als_dir``/sparse_plays held toward their audio prediction with
    strength ``reg`` where they have at least ``min_listeners`` listeners
    (``blended``), else the audio prediction itself."""
    sparse = storage.read_table(als_dir / layout.SPARSE_PLAYS, schemas.PLAYS)
    warm = set(warm_ids)
    wanted = sorted({t for t in sparse.column("track_id").to_pylist() if t in warm})
    ids, audio = predict(wanted)
    users = storage.read_table(als_dir / layout.USER_FACTORS, schemas.USER_FACTORS)
    user_index = {u: i for i, u in enumerate(users.column("user_id").to_pylist())}
    als = als_settings(storage.read_params(als_dir / layout.ITEM_FACTORS), als_dir)
    matrix = plays_matrix(sparse, {t: i for i, t in enumerate(ids)}, user_index).tocsr()
    blended = np.diff(matrix.indptr) >= min_listeners  # one row per track, one entry per listener
    factors = audio.copy()
    factors[blended] = blend_toward(factor_matrix(users), matrix[blended], als["alpha"],
                                    als["eps"], reg, audio[blended])
    return ids, factors, blended


def score(model_path: Path | None, mels_dir: Path, catalogue_path: Path,
          item_factors_path: Path, out: Path, als_dir: Path | None = None,
          semi_cold_reg: float = SemiColdConfig.reg,
          semi_cold_min_listeners: int = SemiColdConfig.min_listeners,
          frontend_mels: Path | None = None, learned: Path | None = None,
          degraded: str | None = None) -> None:
    """Write ``out`` (see the module's docstring). ``learned``: the item factors of the
    space the model learned, when it is not tonight's (a degraded night serving the
    last good model): its predictions are rotated into tonight's space. No model
    (``model_path`` None, a degraded night with none to fall back on): the cold tracks
    are set aside and the semi-cold keep their ALS factors. ``degraded`` (why) is
    recorded with the factors."""
    predictor = Predictor.load(model_path) if model_path is not None else None
    catalogue = storage.read_table(catalogue_path, schemas.CATALOGUE)
    factors = storage.read_table(item_factors_path, schemas.ITEM_FACTORS)
    listed = pc.is_in(factors["track_id"], value_set=catalogue["track_id"])
    warm, outside = factors.filter(listed), factors.filter(pc.invert(listed))
    if warm.num_rows == 0 and factors.num_rows:
        raise ValueError(f"none of the {factors.num_rows} tracks of {item_factors_path} is in "
                         f"the catalogue {catalogue_path}")
    cold = cold_track_ids(catalogue, warm)
    if predictor is not None:
        predict = audio_predictions(predictor, mels_dir, frontend_mels, catalogue_path,
                                    learned or item_factors_path, factors if learned else None)
        ids, predicted = predict(cold)
    else:
        ids, predicted = [], np.zeros((0, factor_matrix(factors).shape[1]), np.float32)
    version = predictor.version if predictor is not None else None

    warm_ids = warm.column("track_id").to_pylist()
    warm_x = factor_matrix(warm).copy()
    sources = ["als"] * warm.num_rows
    counts: dict[str, tuple[int, int]] = {}
    if als_dir is not None:
        table = storage.read_table(als_dir / layout.TRACK_PLAYS, schemas.TRACK_PLAYS).to_pydict()
        counts = dict(zip(table["track_id"], zip(table["listeners"], table["plays"])))
    if als_dir is not None and predictor is not None:  # without a model they keep ALS's
        semi_ids, semi_x, blended = semi_cold(predict, als_dir, warm_ids, semi_cold_reg,
                                              semi_cold_min_listeners)
        row_of = {t: i for i, t in enumerate(warm_ids)}
        for track, factors, blend in zip(semi_ids, semi_x, blended):
            warm_x[row_of[track]] = factors
            sources[row_of[track]] = "als+audio" if blend else "audio"
        logger.info("%d semi-cold tracks: %d with their plays held toward their audio (reg %g), "
                    "%d with fewer than %d listeners from their audio alone", len(semi_ids),
                    blended.sum(), semi_cold_reg, len(semi_ids) - blended.sum(),
                    semi_cold_min_listeners)
    predicted_table = pa.table({"track_id": ids, "factors": factors_column(predicted),
                                "model_version": [version] * len(ids)})
    combined = pa.table({
        "track_id": warm_ids + ids,
        "factors": pa.concat_arrays([factors_column(warm_x), factors_column(predicted)]),
        "source": sources + ["audio"] * len(ids),
        "model_version": [None if s == "als" else version for s in sources]
        + [version] * len(ids),
        "listeners": pa.array([counts.get(t, (None, None))[0] for t in warm_ids] + [0] * len(ids),
                              pa.int64()),
        "plays": pa.array([counts.get(t, (None, None))[1] for t in warm_ids] + [0] * len(ids),
                          pa.int64()),
    })
    missing = sorted(set(cold) - set(ids))
    uri_of = dict(zip(catalogue.column("track_id").to_pylist(),
                      catalogue.column("audio_uri").to_pylist()))
    why = "no spectrogram for this track" if predictor is not None \
        else f"no model to predict it: {degraded}"
    unscored = pa.table({"track_id": missing, "audio_uri": [uri_of[t] for t in missing],
                         "stage": ["score"] * len(missing), "error": [why] * len(missing)})
    # Played tracks the catalogue does not list get no served factors; kept aside.
    unlisted = pa.table({"track_id": outside["track_id"],
                         "audio_uri": pa.nulls(outside.num_rows, pa.string()),
                         "stage": ["catalogue"] * outside.num_rows,
                         "error": ["played, but not in the catalogue"] * outside.num_rows})
    # what publishing records: the model served and the factors of the space it learned
    # (a later degraded night falls back on them), and why the night is degraded
    served = {"model_version": version, "model": model_path and str(Path(model_path).resolve()),
              "model_factors": str(Path(learned or item_factors_path).resolve()),
              "degraded": degraded}
    with storage.atomic_dir(out) as tmp:
        storage.write_table(predicted_table, tmp / layout.PREDICTED_FACTORS,
                            schemas.PREDICTED_FACTORS, {"model_version": version})
        storage.write_table(combined, tmp / layout.TRACK_FACTORS, schemas.TRACK_FACTORS, served)
        storage.write_table(unscored, tmp / layout.UNSCORED, schemas.DEAD_LETTERS)
        storage.write_table(unlisted, tmp / layout.UNLISTED, schemas.DEAD_LETTERS)
    if outside.num_rows:
        logger.warning("%d played tracks are not in the catalogue %s; left out of the factor "
                       "table (see %s)", outside.num_rows, catalogue_path, layout.UNLISTED)
    if missing:
        logger.warning("%d cold tracks have no factors, %s (see unscored.parquet)", len(missing),
                       why)
    logger.info("model %s: factors for %d of %d cold tracks -> %s", version, len(ids), len(cold), out)


# Audio predictions in tonight's space for the tracks asked: (ids predicted, factors).
Predict = Callable[[list[str]], tuple[list[str], np.ndarray]]


def audio_predictions(predictor: Predictor, mels_dir: Path, frontend_mels: Path | None,
                      catalogue_path: Path, learned: Path, night: pa.Table | None) -> Predict:
    """How tracks get their audio prediction: ``predictor`` on their spectrograms, in the
    space of the factors at ``learned``, rotated into that of ``night``'s factors when
    given. Checks first that the model learned that space."""
    space = FactorSpace.of(learned)
    # refused before any work: a model of another factor space would serve nonsense
    predictor.check_space(space)
    rotation = None if night is None else alignment(
        storage.read_table(learned, schemas.ITEM_FACTORS), night, str(learned)).rotation
    # the pretrained taggers' input beside the model's own spectrograms, for a model
    # that reads it (Predictor.predict_tracks picks each input's shards)
    shards = layout.mel_shards(mels_dir) + (layout.mel_shards(frontend_mels) if frontend_mels
                                            else [])
    tokens = metadata.read_tokens(catalogue_path) if predictor.vocabulary else None

    def predict(tracks: list[str]) -> tuple[list[str], np.ndarray]:
        ids, predicted = predictor.predict_tracks(shards, tracks, space, tokens)
        return ids, predicted if rotation is None else predicted @ rotation
    return predict


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path,
                        help="model file from model.train or jobs.evaluate.choose; without "
                             "one (only with --degraded), cold tracks are set aside")
    parser.add_argument("--mels", required=True, type=Path,
                        help="mel-spectrogram directory of the model's parameter set")
    parser.add_argument("--frontend-mels", type=Path,
                        help="the pretrained taggers' input (DATA/mels/<tagger hash>); needed by "
                             "a model with a pretrained front end")
    parser.add_argument("--catalogue", required=True, type=Path,
                        help="catalogue Parquet (schemas.CATALOGUE): every track to cover")
    parser.add_argument("--item-factors", required=True, type=Path,
                        help="ALS item factors: tracks listed here are warm, the rest are cold")
    parser.add_argument("--out", required=True, type=Path,
                        help="output directory; must not exist, appears when complete")
    parser.add_argument("--als", type=Path,
                        help="the ALS run's directory: blend its semi-cold tracks "
                             "(sparse_plays/) with their audio, and record plays")
    parser.add_argument("--learned-factors", type=Path,
                        help="the item factors of the space the model learned, when they are "
                             "not --item-factors (the last good model on a degraded night): "
                             "its predictions are rotated into --item-factors' space")
    parser.add_argument("--degraded", metavar="WHY",
                        help="tonight's own model could not be made, for this reason: recorded "
                             "with the factors, and published")
    cli.add_settings(parser, SemiColdConfig, only=("min_listeners", "reg"))
    args = parser.parse_args(argv)
    if args.model is None and args.degraded is None:
        parser.error("--model is required (unless --degraded)")
    return args


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    args = parse_args(argv)
    return cli.run_job(lambda: score(args.model, args.mels, args.catalogue, args.item_factors,
                                     args.out, args.als, args.semi_cold_reg,
                                     args.semi_cold_min_listeners, args.frontend_mels,
                                     args.learned_factors, args.degraded),
                       logger, ValueError, FileExistsError, FileNotFoundError)


if __name__ == "__main__":
    sys.exit(main())
