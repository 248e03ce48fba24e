"""Training examples: warm tracks' log-mel excerpts joined with their ALS factors."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import torch
from torch.utils.data import Dataset

import schemas
from jobs import storage

logger = logging.getLogger(__name__)


def read_mels(shards: Iterable[Path], track_ids: Iterable[str] | None = None) -> pa.Table:
    """Read mel shards (schemas.MEL_SHARD), optionally only ``track_ids``.

    A track present in several shards (it can be re-made by a later run) is kept once.
    """
    paths = [str(p) for p in shards]
    if not paths:
        return schemas.MEL_SHARD.empty_table()
    dataset = ds.dataset(paths, format="parquet")
    wanted = None if track_ids is None else ds.field("track_id").isin(pa.array(list(track_ids)))
    table = schemas.conform(dataset.to_table(filter=wanted), schemas.MEL_SHARD)
    _, first = np.unique(table.column("track_id").to_numpy(zero_copy_only=False), return_index=True)
    return table.take(np.sort(first))


def mel_array(table: pa.Table) -> np.ndarray:
    """Stack the ``mel`` column into (rows, n_mels, n_frames) float32.

    Raises ValueError when the excerpts differ in shape (mixed parameters).
    """
    shapes = set(zip(table.column("n_mels").to_pylist(), table.column("n_frames").to_pylist()))
    if len(shapes) > 1:
        raise ValueError(f"mel excerpts of different shapes {sorted(shapes)}")
    if not shapes:
        return np.zeros((0, 0, 0), dtype=np.float32)
    n_mels, n_frames = shapes.pop()
    flat = pc.list_flatten(table.column("mel")).to_numpy()
    return flat.reshape(table.num_rows, n_mels, n_frames).astype(np.float32)  # writable copy for torch


def factor_matrix(table: pa.Table) -> np.ndarray:
    """The ``factors`` list column as (rows, rank) float32."""
    flat = pc.list_flatten(table.column("factors")).to_numpy()
    return flat.reshape(table.num_rows, -1).astype(np.float32, copy=False)


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def warm_examples(shards: Iterable[Path], item_factors: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Tracks with both a spectrogram and ALS factors.

    Returns (track_ids, mels (n, n_mels, n_frames) float32, factors (n, rank) float32).
    """
    factors = storage.read_table(item_factors, schemas.ITEM_FACTORS)
    mels = read_mels(shards, factors.column("track_id").to_pylist())
    row_of = {t: i for i, t in enumerate(factors.column("track_id").to_pylist())}
    ids = mels.column("track_id").to_pylist()
    targets = factor_matrix(factors)[[row_of[t] for t in ids]]
    logger.info("%d warm tracks with factors, %d of them with spectrograms",
                factors.num_rows, len(ids))
    return ids, mel_array(mels), targets


class CropDataset(Dataset):
    """Random time crops of fixed-length excerpts, with their target factors.

    mels: (n, n_mels, n_frames) float32; targets: (n, rank) float32. With
    ``crop_frames`` None or >= n_frames the whole excerpt is returned.
    """

    def __init__(self, mels: np.ndarray, targets: np.ndarray, crop_frames: int | None):
        self.mels = torch.from_numpy(mels)
        self.targets = torch.from_numpy(targets)
        self.crop = crop_frames if crop_frames and crop_frames < mels.shape[2] else None

    def __len__(self) -> int:
        return len(self.mels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        mel = self.mels[i]
        if self.crop:
            # torch's global RNG: seeded per process and per loader worker by torch.
            start = int(torch.randint(0, mel.shape[1] - self.crop + 1, ()))
            mel = mel[:, start:start + self.crop]
        return mel, self.targets[i]
