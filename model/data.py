"""Reading mel-spectrogram shards: whole tables for scoring, a stream for training.

Training streams the Parquet shards instead of loading them: the unit of work is a
*piece*, one row group (or a slice of one, when there are fewer row groups than
readers). Pieces are dealt round-robin to the (rank, data-loader worker) pairs, so
every example is read by exactly one reader per epoch.
"""
from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch.utils.data import IterableDataset, get_worker_info

import schemas
from schemas import mels
from schemas.metrics import unit_rows  # noqa: F401  (re-exported: model/ reads it here)

logger = logging.getLogger(__name__)


def read_mels(shards: Iterable[Path], track_ids: Iterable[str] | None = None) -> pa.Table:
    """Read mel shards (schemas.MEL_SHARD, or the float32 list format before it),
    optionally only ``track_ids``.

    A track present in several shards (it can be re-made by a later run) is kept once.
    """
    wanted = (None if track_ids is None
              else pc.field("track_id").isin(pa.array(list(track_ids), pa.string())))
    tables = [mels.conform(pq.read_table(path, filters=wanted)) for path in shards]
    if not tables:
        return schemas.MEL_SHARD.empty_table()
    table = pa.concat_tables(tables)
    _, first = np.unique(table.column("track_id").to_numpy(zero_copy_only=False), return_index=True)
    return table.take(np.sort(first))


def mel_array(table: pa.Table) -> np.ndarray:
    """The table's spectrograms as (rows, n_mels, n_frames) float32, a writable copy.

    Raises ValueError when the excerpts differ in shape (mixed parameters).
    """
    return mels.values(table).astype(np.float32)


def in_validation(track_id: str, val_fraction: float) -> bool:
    """Stable split by a hash of the id: the same track is always on the same side."""
    return zlib.crc32(track_id.encode()) % 10_000 < val_fraction * 10_000


def fold_of(track_id: str, folds: int) -> int:
    """The cross-validation fold of a track, stable like in_validation (a salted hash, so
    that folds cut across the validation split)."""
    return zlib.crc32(b"fold:" + track_id.encode()) % folds


@dataclass(frozen=True)
class Piece:
    """Rows [start, stop) of one row group of one shard."""
    path: str
    row_group: int
    start: int
    stop: int


def plan_pieces(shards: Sequence[Path], readers: int) -> list[Piece]:
    """Split the shards' row groups into at least ``readers`` pieces where rows allow."""
    groups = []
    for path in shards:
        meta = pq.ParquetFile(path).metadata
        groups += [(str(path), g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    parts = max(1, math.ceil(readers / max(1, len(groups))))
    pieces = []
    for path, group, rows in groups:
        bounds = np.linspace(0, rows, min(parts, max(rows, 1)) + 1).astype(int)
        pieces += [Piece(path, group, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return pieces


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class ShardStream(IterableDataset):
    """Batches (mels, targets, track indices) streamed from mel shards.

    mels: (B, n_mels, crop_frames or n_frames) in the shards' dtype (the network
    standardises in float32); targets: (B, rank) float32; track indices: (B,) int64,
    the rows of the tracks in ``targets`` (for the weighted loss). Only tracks in
    ``track_index`` and on the ``validation`` side of the split are read, each as
    ``clips_per_track`` random crops (in shuffled order) when cropping.
    ``rank``/``world`` choose this process's share; data-loader workers split it
    further. Call ``set_epoch`` before each epoch to reshuffle.

    A row group becomes batches by array operations alone: Arrow finds the rows
    wanted, its bytes are viewed as one array without a copy, and each batch's crops
    are gathered from it in one indexing step. Batches run across pieces, so every
    batch but an epoch's last has ``batch_size`` examples.
    """

    def __init__(self, pieces: Sequence[Piece], track_index: dict[str, int], targets: np.ndarray,
                 validation: bool, val_fraction: float, crop_frames: int | None = None,
                 rank: int = 0, world: int = 1, seed: int = 0, clips_per_track: int = 1,
                 batch_size: int = 32):
        self.pieces = list(pieces)
        self.targets = np.array(targets, dtype=np.float32)  # a copy: factors read from Arrow are read-only
        self.validation = validation
        self.crop = crop_frames or None
        self.clips_per_track = clips_per_track if self.crop else 1
        self.rank, self.world, self.seed = rank, world, seed
        self.batch_size = batch_size
        self.epoch = 0
        ids = [t for t in track_index if in_validation(t, val_fraction) == validation]
        self.wanted = pa.array(ids, pa.string())
        self.wanted_index = np.array([track_index[t] for t in ids], dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def my_pieces(self) -> list[Piece]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        return self.pieces[self.rank * workers + worker::self.world * workers]

    def read(self, piece: Piece) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(spectrograms of every row of the piece, read-only; the rows wanted; their
        track indices)."""
        table = mels.conform(pq.ParquetFile(piece.path).read_row_group(piece.row_group)
                             .slice(piece.start, piece.stop - piece.start))
        found = pc.index_in(table.column("track_id"), value_set=self.wanted)
        rows = np.flatnonzero(pc.is_valid(found).to_numpy(zero_copy_only=False))
        index = self.wanted_index[pc.fill_null(found, 0).to_numpy()[rows]]
        return mels.values(table) if len(rows) else np.zeros((0, 0, 0)), rows, index

    def __iter__(self) -> Iterator[Batch]:
        rng = np.random.default_rng((self.seed, self.epoch, self.rank))
        pieces = self.my_pieces()
        order = range(len(pieces)) if self.validation else rng.permutation(len(pieces))
        held: list[tuple[np.ndarray, np.ndarray]] = []  # examples short of a batch, from earlier pieces
        for p in order:
            values, rows, index = self.read(pieces[p])
            if not len(rows):
                continue
            picks = np.arange(len(rows)) if self.validation else \
                rng.permutation(np.repeat(np.arange(len(rows)), self.clips_per_track))
            start = 0
            while start < len(picks):
                size = self.batch_size - sum(len(part[1]) for part in held)
                chosen = picks[start:start + size]
                start += len(chosen)
                held.append((self.gather(values, rows[chosen], rng), index[chosen]))
                if len(chosen) == size:
                    yield self.batch(held)
                    held = []
        if held:
            yield self.batch(held)

    def gather(self, values: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The spectrograms of ``rows``, each cropped at a random start when cropping
        (a new array)."""
        if not self.crop or self.crop >= values.shape[2]:
            return values[rows]
        starts = rng.integers(0, values.shape[2] - self.crop + 1, size=len(rows))
        return sliding_window_view(values, self.crop, axis=2)[rows, :, starts]

    def batch(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> Batch:
        mel = parts[0][0] if len(parts) == 1 else np.concatenate([part[0] for part in parts])
        index = np.concatenate([part[1] for part in parts])
        return torch.from_numpy(mel), torch.from_numpy(self.targets[index]), torch.from_numpy(index)


def shard_track_ids(shards: Sequence[Path]) -> list[str]:
    """Every track id in the shards (the ``track_id`` column only is read)."""
    return [t for path in shards for t in pq.read_table(path, columns=["track_id"])
            .column("track_id").to_pylist()]


def band_stats(pieces: Sequence[Piece], track_index: dict[str, int],
               max_tracks: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-band mean and std (n_mels,) over time, from the first ``max_tracks`` known tracks.

    Deterministic, so every rank computes the same statistics without communicating.
    """
    stream = ShardStream(pieces, track_index, np.zeros((0, 1)), validation=False, val_fraction=0.0)
    total = squares = 0.0
    count = frames = 0
    for piece in pieces:
        values, rows, _ = stream.read(piece)
        if not len(rows):
            continue
        chosen = values[rows[:max_tracks - count]].astype(np.float64)
        total = total + chosen.sum(axis=(0, 2))
        squares = squares + (chosen ** 2).sum(axis=(0, 2))
        frames += chosen.shape[0] * chosen.shape[2]
        count += len(chosen)
        if count >= max_tracks:
            break
    if count == 0:
        raise ValueError("no spectrogram of a known track to compute input statistics from")
    mean = total / frames
    std = np.sqrt(np.clip(squares / frames - mean ** 2, 0, None)) + 1e-5
    return torch.from_numpy(mean).float(), torch.from_numpy(std).float()
