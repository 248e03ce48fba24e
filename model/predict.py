"""Factors predicted from spectrograms by a trained model, as its model file says.

Shared by scoring (jobs/score.py) and evaluation (jobs/evaluate.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.data import mel_array, read_mels, unit_rows


@torch.no_grad()
def predict(model: torch.nn.Module, artefact: dict, mels: np.ndarray,
            batch_size: int = 64) -> np.ndarray:
    """Factors (n, rank) float32 for mels (n, n_mels, n_frames), as the model file says.

    Nets trained on directions give unit vectors times the ALS factor scale.
    """
    out = [model(torch.from_numpy(mels[i:i + batch_size])).numpy()
           for i in range(0, len(mels), batch_size)]
    pred = np.concatenate(out) if out else np.zeros((0, model.config.n_factors), np.float32)
    return unit_rows(pred) * artefact["factor_scale"] if artefact["unit_output"] else pred


def predict_tracks(model: torch.nn.Module, artefact: dict, shards: list[Path],
                   track_ids: list[str]) -> tuple[list[str], np.ndarray]:
    """Predicted factors of ``track_ids`` found in the shards, one shard at a time.

    Returns (ids in the order found, factors (n, rank)); memory is bounded by a shard.
    """
    wanted, ids, parts = set(track_ids), [], []
    for shard in shards:
        if not wanted:
            break
        table = read_mels([shard], wanted)
        if table.num_rows:
            ids += table.column("track_id").to_pylist()
            parts.append(predict(model, artefact, mel_array(table)))
            wanted -= set(ids)
    rank = model.config.n_factors
    return ids, (np.concatenate(parts) if parts else np.zeros((0, rank), np.float32))
