"""Predict factors for every cold track (in the catalogue, without ALS factors).

    python -m jobs.score --model model.pt --mels DATA/mels/<hash> \\
        --catalogue catalogue.parquet --item-factors DATA/als/item_factors --out DIR

Output directory (appears atomically):
    predicted_factors.parquet  schemas.PREDICTED_FACTORS: cold tracks, from audio
    track_factors.parquet      schemas.TRACK_FACTORS: warm from ALS + cold from audio
    unscored.parquet           schemas.DEAD_LETTERS: cold tracks with no spectrogram
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import schemas
from jobs import storage
from jobs.mel import mel_shards
from model.artefact import load_model
from model.data import factor_matrix, mel_array, read_mels, unit_rows

logger = logging.getLogger(__name__)


def cold_track_ids(catalogue: pa.Table, item_factors: pa.Table) -> list[str]:
    """Catalogue tracks that ALS gave no factors, in catalogue order."""
    warm = set(item_factors.column("track_id").to_pylist())
    return [t for t in catalogue.column("track_id").to_pylist() if t not in warm]


def check_mel_params(shards: list[Path], expected: dict) -> None:
    """Refuse spectrograms made with other settings than the model was trained on."""
    for shard in shards:
        found = schemas.params_of(pq.read_schema(shard))
        if found != expected:
            raise ValueError(f"{shard}: mel parameters {found} differ from the model's {expected}")


@torch.no_grad()
def predict(model: torch.nn.Module, artefact: dict, mels: np.ndarray,
            batch_size: int = 64) -> np.ndarray:
    """Factors (n, rank) float32 for mels (n, n_mels, n_frames), as the model file says.

    Nets trained on directions give unit vectors times the ALS factor scale.
    """
    out = [model(torch.from_numpy(mels[i:i + batch_size])).numpy()
           for i in range(0, len(mels), batch_size)]
    pred = np.concatenate(out) if out else np.zeros((0, model.config.n_factors), np.float32)
    return unit_rows(pred) * artefact["factor_scale"] if artefact.get("unit_output", True) else pred


def predict_tracks(model: torch.nn.Module, artefact: dict, shards: list[Path],
                   track_ids: list[str]) -> tuple[list[str], np.ndarray]:
    """Predicted factors of ``track_ids`` found in the shards, one shard at a time.

    Returns (ids in the order found, factors (n, rank)); memory is bounded by a shard.
    """
    wanted, ids, parts = set(track_ids), [], []
    for shard in shards:
        table = read_mels([shard], wanted)
        if table.num_rows:
            ids += table.column("track_id").to_pylist()
            parts.append(predict(model, artefact, mel_array(table)))
            wanted -= set(ids)
    rank = model.config.n_factors
    return ids, (np.concatenate(parts) if parts else np.zeros((0, rank), np.float32))


def factors_column(matrix: np.ndarray) -> pa.Array:
    """(n, rank) float32 -> list<float32> column."""
    rank = matrix.shape[1]
    return pa.ListArray.from_arrays(np.arange(0, matrix.size + 1, rank, dtype=np.int32),
                                    pa.array(matrix.astype(np.float32).ravel()))


def score(model_path: Path, mels_dir: Path, catalogue_path: Path, item_factors_path: Path,
          out: Path) -> None:
    model, artefact = load_model(model_path)
    catalogue = storage.read_table(catalogue_path, schemas.CATALOGUE)
    warm = storage.read_table(item_factors_path, schemas.ITEM_FACTORS)
    cold = cold_track_ids(catalogue, warm)
    shards = mel_shards(mels_dir)
    check_mel_params(shards, artefact["mel_params"])
    ids, predicted = predict_tracks(model, artefact, shards, cold)
    version = artefact["version"]

    predicted_table = pa.table({"track_id": ids, "factors": factors_column(predicted),
                                "model_version": [version] * len(ids)})
    combined = pa.table({
        "track_id": warm.column("track_id").to_pylist() + ids,
        "factors": pa.concat_arrays([factors_column(factor_matrix(warm)), factors_column(predicted)]),
        "source": ["als"] * warm.num_rows + ["audio"] * len(ids),
        "model_version": [None] * warm.num_rows + [version] * len(ids),
    })
    missing = sorted(set(cold) - set(ids))
    uri_of = dict(zip(catalogue.column("track_id").to_pylist(),
                      catalogue.column("audio_uri").to_pylist()))
    unscored = pa.table({"track_id": missing, "audio_uri": [uri_of[t] for t in missing],
                         "stage": ["score"] * len(missing),
                         "error": ["no spectrogram for this track"] * len(missing)})
    with storage.atomic_dir(out) as tmp:
        storage.write_table(predicted_table, tmp / "predicted_factors.parquet",
                            schemas.PREDICTED_FACTORS, {"model_version": version})
        storage.write_table(combined, tmp / "track_factors.parquet", schemas.TRACK_FACTORS,
                            {"model_version": version})
        storage.write_table(unscored, tmp / "unscored.parquet", schemas.DEAD_LETTERS)
    if missing:
        logger.warning("%d cold tracks have no spectrogram (see unscored.parquet)", len(missing))
    logger.info("model %s: factors for %d of %d cold tracks -> %s", version, len(ids), len(cold), out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jobs.score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="model file from model.train")
    parser.add_argument("--mels", required=True, type=Path,
                        help="mel-spectrogram directory of the model's parameter set")
    parser.add_argument("--catalogue", required=True, type=Path,
                        help="catalogue Parquet (schemas.CATALOGUE): every track to cover")
    parser.add_argument("--item-factors", required=True, type=Path,
                        help="ALS item factors: tracks listed here are warm, the rest are cold")
    parser.add_argument("--out", required=True, type=Path,
                        help="output directory; must not exist, appears when complete")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    score(args.model, args.mels, args.catalogue, args.item_factors, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
