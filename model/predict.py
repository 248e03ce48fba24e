"""Factors predicted from spectrograms by a trained model, as its model file says.

Shared by scoring (jobs/score.py), evaluation (jobs/evaluate.py) and model choice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow.parquet as pq
import torch

from model import metadata, taste
from model.data import unit_rows
from schemas import mels


def vocabulary(model: torch.nn.Module) -> tuple[str, ...]:
    """The metadata tokens a model reads; empty when it reads audio only."""
    return tuple(getattr(model.config, "metadata_vocab", ()))


@torch.no_grad()
def predict(model: torch.nn.Module, artefact: dict, mels: np.ndarray,
            token_ids: np.ndarray | None = None, batch_size: int = 64) -> np.ndarray:
    """Factors (n, rank) float32 for mels (n, n_mels, n_frames) of any float dtype, as the
    model file says;
    ``token_ids`` (n, MAX_TOKENS) feed a metadata branch.

    Nets trained on directions give unit vectors times the ALS factor scale. A model
    file with a taste classifier averages its prediction with the network's. Batches go
    to the model's device, the classifier's statistics too; on a GPU the network runs
    in bf16 autocast (the statistics in float32).
    """
    weight = next(model.parameters(), None)  # the bag-of-words baseline has none
    device = weight.device if weight is not None else torch.device("cpu")
    out, tastes = [], []
    for i in range(0, len(mels), batch_size):
        # a copy: the values may be a read-only view of Arrow's memory
        inputs = [torch.tensor(mels[i:i + batch_size]).to(device, non_blocking=True)]
        if token_ids is not None:
            inputs.append(torch.from_numpy(token_ids[i:i + batch_size]).to(device))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(model(*inputs).float().cpu().numpy())
        if artefact.get("taste"):
            tastes.append(taste.predict(artefact["taste"], inputs[0]).cpu().numpy())
    pred = np.concatenate(out) if out else np.zeros((0, model.config.n_factors), np.float32)
    if artefact["unit_output"]:
        pred = unit_rows(pred) * artefact["factor_scale"]
    # the network's prediction averaged with the taste classifier's (model/taste.py)
    return (pred + np.concatenate(tastes)) / 2 if tastes else pred


def predict_tracks(model: torch.nn.Module, artefact: dict, shards: list[Path],
                   track_ids: list[str], tokens: metadata.Tokens | None = None,
                   withhold: Sequence[str] = ()) -> tuple[list[str], np.ndarray]:
    """Predicted factors of ``track_ids`` found in the shards, one row group at a time.

    A model with a metadata branch needs the catalogue's ``tokens``
    (metadata.read_tokens); ``withhold`` names columns to leave out (("artist",):
    predict each track as if its artist were new). Returns (ids in the order found,
    factors (n, rank)); memory is bounded by a row group, whatever the catalogue's
    size (a track in several shards is predicted once).
    """
    vocab = vocabulary(model)
    if vocab and tokens is None:
        raise ValueError("the model reads catalogue metadata (artist, genre, tags): give it "
                         "the catalogue")
    wanted, ids, parts = set(track_ids), [], []
    for shard in shards:
        reader = pq.ParquetFile(shard)
        for group in range(reader.metadata.num_row_groups):
            if not wanted:
                break
            names = reader.read_row_group(group, columns=["track_id"])["track_id"].to_pylist()
            first: dict[str, int] = {}  # each wanted track's first row, in shard order
            for i, track in enumerate(names):
                if track in wanted:
                    first.setdefault(track, i)
            if not first:
                continue
            found = list(first)
            table = mels.conform(reader.read_row_group(group)).take([first[t] for t in found])
            ids += found
            parts.append(predict(model, artefact, mels.values(table),
                                 metadata.token_ids(vocab, tokens, found, withhold)
                                 if vocab else None))
            wanted -= set(found)
    rank = model.config.n_factors
    return ids, (np.concatenate(parts) if parts else np.zeros((0, rank), np.float32))
