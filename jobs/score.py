"""Predict factors for every cold track (in the catalogue, without ALS factors).

    python -m jobs.score --model model.pt --mels DATA/mels/<hash> \\
        --catalogue catalogue.parquet --item-factors DATA/als/item_factors --out DIR \\
        [--als DATA/als] [--tracks-per-part N] [Beam options]

With --als (the ALS run's directory), semi-cold tracks, those whose few plays the
run kept in sparse_plays/, get the ALS item step held toward their audio prediction,
at its length (schemas.feedback.blend_toward, strength --semi-cold-reg), instead of
their ALS factors, or their audio prediction alone below --semi-cold-min-listeners
listeners, and every track's listeners and plays are recorded.

The predictions are a Beam pipeline (schemas/pipelines.py; one worker in this
process unless told otherwise): the tracks to predict, cold and semi-cold, are cut
into parts of --tracks-per-part, and each worker loads the model once and predicts its
parts from the shards, reading only the row groups that hold them (the spectrogram
job writes tracks in catalogue order, so a part's tracks sit together). The job then
blends, combines and writes the tables.

Output directory (appears atomically):
    predicted_factors.parquet  schemas.PREDICTED_FACTORS: cold tracks, from audio
    track_factors.parquet      schemas.TRACK_FACTORS: warm from ALS, semi-cold from
                               ALS + audio, cold from audio
    unscored.parquet           schemas.DEAD_LETTERS: cold tracks with no spectrogram
    unlisted.parquet           schemas.DEAD_LETTERS: played tracks the catalogue lacks
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Callable

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import schemas
from model import metadata
from model.predictor import FactorSpace, Predictor
from schemas import cli, layout, pipelines, storage
from schemas import factor_matrix, factors_column
from schemas.config import SemiColdConfig
from schemas.feedback import als_settings, blend_toward, plays_matrix
from schemas.spaces import alignment

logger = logging.getLogger(__name__)
TRACKS_PER_PART = 20_000  # a part's spectrograms are read a row group at a time


def cold_track_ids(catalogue: pa.Table, item_factors: pa.Table) -> list[str]:
    """Catalogue tracks that ALS gave no factors, in catalogue order."""
    warm = set(item_factors.column("track_id").to_pylist())
    return [t for t in catalogue.column("track_id").to_pylist() if t not in warm]


def semi_cold_tracks(als_dir: Path, warm_ids: list[str]) -> tuple[pa.Table, list[str]]:
    """The plays ALS kept in ``als_dir``/sparse_plays, and the warm tracks they are of."""
    sparse = storage.read_table(als_dir / layout.SPARSE_PLAYS, schemas.PLAYS)
    warm = set(warm_ids)
    return sparse, sorted({t for t in sparse.column("track_id").to_pylist() if t in warm})


def semi_cold(predict: Predict, sparse: pa.Table, wanted: list[str], als_dir: Path, reg: float,
              min_listeners: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, factors, blended) of the semi-cold tracks ``wanted`` that ``predict`` gives
    factors: their ``sparse`` plays held toward their audio prediction with strength
    ``reg`` where they have at least ``min_listeners`` listeners (``blended``), else
    the audio prediction itself."""
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
          degraded: str | None = None, tracks_per_part: int = TRACKS_PER_PART,
          beam_args: list[str] = ()) -> None:
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
    warm_ids = warm.column("track_id").to_pylist()
    sparse, semi_wanted = semi_cold_tracks(als_dir, warm_ids) if als_dir is not None \
        else (None, [])
    if predictor is not None:
        predict = audio_predictions(predictor, model_path, mels_dir, frontend_mels,
                                    catalogue_path, learned or item_factors_path,
                                    factors if learned else None, cold + semi_wanted,
                                    out, tracks_per_part, beam_args)
        ids, predicted = predict(cold)
    else:
        ids, predicted = [], np.zeros((0, factor_matrix(factors).shape[1]), np.float32)
    version = predictor.version if predictor is not None else None

    warm_x = factor_matrix(warm).copy()
    sources = ["als"] * warm.num_rows
    counts: dict[str, tuple[int, int]] = {}
    if als_dir is not None:
        table = storage.read_table(als_dir / layout.TRACK_PLAYS, schemas.TRACK_PLAYS).to_pydict()
        counts = dict(zip(table["track_id"], zip(table["listeners"], table["plays"])))
    if als_dir is not None and predictor is not None:  # without a model they keep ALS's
        semi_ids, semi_x, blended = semi_cold(predict, sparse, semi_wanted, als_dir,
                                              semi_cold_reg, semi_cold_min_listeners)
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


@dataclasses.dataclass(frozen=True)
class Scoring:
    """What a worker needs to predict a part of the tracks: the model file, the shards,
    the space its predictions must be in, the rotation into tonight's (or None) and the
    catalogue (for a model that reads the artists)."""
    model: Path
    shards: tuple[Path, ...]
    space: FactorSpace
    rotation: np.ndarray | None
    catalogue: Path


class PredictParts(beam.DoFn):
    """Each part's predictions, written to ``folder``; the model is loaded once per worker."""

    def __init__(self, scoring: Scoring, folder: Path) -> None:
        self.scoring, self.folder = scoring, folder

    def setup(self) -> None:
        self.predictor = Predictor.load(self.scoring.model)
        self.tokens = metadata.read_tokens(self.scoring.catalogue) \
            if self.predictor.vocabulary else None

    def process(self, part: tuple[int, list[str]]):
        number, tracks = part
        ids, predicted = self.predictor.predict_tracks(self.scoring.shards, tracks,
                                                       self.scoring.space, self.tokens)
        if self.scoring.rotation is not None:
            predicted = predicted @ self.scoring.rotation
        storage.write_table(pa.table({"track_id": pa.array(ids, pa.string()),
                                      "factors": factors_column(predicted)}),
                            self.folder / f"part-{number:05d}.parquet", schemas.ITEM_FACTORS)
        yield len(ids)


def audio_predictions(predictor: Predictor, model_path: Path, mels_dir: Path,
                      frontend_mels: Path | None, catalogue_path: Path, learned: Path,
                      night: pa.Table | None, tracks: list[str], out: Path,
                      tracks_per_part: int = TRACKS_PER_PART, beam_args: list[str] = ()
                      ) -> Predict:
    """How tracks get their audio prediction: the model at ``model_path`` (``predictor``)
    on their spectrograms, in the space of the factors at ``learned``, rotated into
    that of ``night``'s factors when given. Checks first that the model learned that
    space, then predicts every track of ``tracks`` (cold and semi-cold) in parts, as
    Beam distributes them; the returned function looks them up."""
    space = FactorSpace.of(learned)
    # refused before any work: a model of another factor space would serve nonsense
    predictor.check_space(space)
    rotation = None if night is None else alignment(
        storage.read_table(learned, schemas.ITEM_FACTORS), night, str(learned)).rotation
    # the pretrained taggers' input beside the model's own spectrograms, for a model
    # that reads it (Predictor.predict_tracks picks each input's shards)
    shards = layout.mel_shards(mels_dir) + (layout.mel_shards(frontend_mels) if frontend_mels
                                            else [])
    scoring = Scoring(Path(model_path), tuple(shards), space, rotation, Path(catalogue_path))
    parts = [(number, tracks[start:start + tracks_per_part])
             for number, start in enumerate(range(0, len(tracks), tracks_per_part))]
    with storage.scratch_dir(out) as folder:
        if parts:
            with pipelines.pipeline(beam_args) as pipeline:
                _ = (pipeline | "Parts" >> beam.Create(parts)
                     | "Predict" >> beam.ParDo(PredictParts(scoring, folder)))
        found = [storage.read_table(folder / f"part-{number:05d}.parquet", schemas.ITEM_FACTORS)
                 for number, _ in parts]
    ids = [t for table in found for t in table.column("track_id").to_pylist()]
    factors = np.concatenate([factor_matrix(table) for table in found if table.num_rows]
                             or [np.zeros((0, predictor.n_factors), np.float32)])
    row = {track: i for i, track in enumerate(ids)}

    def predict(wanted: list[str]) -> tuple[list[str], np.ndarray]:
        have = [t for t in wanted if t in row]
        return have, factors[[row[t] for t in have]]
    return predict


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=pipelines.RUNNER_EPILOG, allow_abbrev=False)
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
    parser.add_argument("--tracks-per-part", type=int, default=TRACKS_PER_PART,
                        help="tracks one piece of the predictions covers (default %(default)s)")
    cli.add_settings(parser, SemiColdConfig, only=("min_listeners", "reg"))
    pipelines.add_runner_arguments(parser)
    args, args.beam_args = pipelines.parse(parser, argv)
    if args.model is None and args.degraded is None:
        parser.error("--model is required (unless --degraded)")
    if args.tracks_per_part < 1:
        parser.error("--tracks-per-part must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    args = parse_args(argv)
    return cli.run_job(lambda: score(args.model, args.mels, args.catalogue, args.item_factors,
                                     args.out, args.als, args.semi_cold_reg,
                                     args.semi_cold_min_listeners, args.frontend_mels,
                                     args.learned_factors, args.degraded,
                                     args.tracks_per_part, args.beam_args),
                       logger, ValueError, FileExistsError, FileNotFoundError)


if __name__ == "__main__":
    sys.exit(main())
