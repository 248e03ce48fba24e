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
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

import schemas
from schemas.metrics import unit_rows  # noqa: F401  (re-exported: model/ reads it here)

logger = logging.getLogger(__name__)


def read_mels(shards: Iterable[Path], track_ids: Iterable[str] | None = None) -> pa.Table:
    """Read mel shards (schemas.MEL_SHARD), optionally only ``track_ids``.

    A track present in several shards (it can be re-made by a later run) is kept once.
    """
    paths = [str(p) for p in shards]
    if not paths:
        return schemas.MEL_SHARD.empty_table()
    dataset = ds.dataset(paths, format="parquet")
    wanted = (None if track_ids is None
              else ds.field("track_id").isin(pa.array(list(track_ids), pa.string())))
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
    return flat.reshape(table.num_rows, n_mels, n_frames).astype(np.float32)  # writable copy


def in_validation(track_id: str, val_fraction: float) -> bool:
    """Stable split by a hash of the id: the same track is always on the same side."""
    return zlib.crc32(track_id.encode()) % 10_000 < val_fraction * 10_000


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


class ShardStream(IterableDataset):
    """Examples (mel, target, track_index) streamed from mel shards.

    mel: (n_mels, crop_frames or n_frames) float32; target: (rank,) float32; the
    track index is the row of the track in ``targets`` (for the weighted loss).
    Only tracks in ``track_index`` and on the ``validation`` side of the split are
    yielded, each as ``clips_per_track`` random crops (in shuffled order) when
    cropping. ``rank``/``world`` choose this process's share; data-loader workers
    split it further. Call ``set_epoch`` before each epoch to reshuffle.
    """

    def __init__(self, pieces: Sequence[Piece], track_index: dict[str, int], targets: np.ndarray,
                 validation: bool, val_fraction: float, crop_frames: int | None = None,
                 rank: int = 0, world: int = 1, seed: int = 0, clips_per_track: int = 1):
        self.pieces = list(pieces)
        self.track_index = track_index
        self.targets = torch.tensor(targets, dtype=torch.float32)  # a copy: factors read from Arrow are read-only
        self.validation = validation
        self.val_fraction = val_fraction
        self.crop = crop_frames or None
        self.clips_per_track = clips_per_track if self.crop else 1
        self.rank, self.world, self.seed = rank, world, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def my_pieces(self) -> list[Piece]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        return self.pieces[self.rank * workers + worker::self.world * workers]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        rng = np.random.default_rng((self.seed, self.epoch, self.rank))
        pieces = self.my_pieces()
        order = range(len(pieces)) if self.validation else rng.permutation(len(pieces))
        for p in order:
            yield from self.examples(pieces[p], rng)

    def examples(self, piece: Piece, rng: np.random.Generator):
        table = pq.ParquetFile(piece.path).read_row_group(
            piece.row_group, columns=schemas.MEL_SHARD.names).slice(piece.start, piece.stop - piece.start)
        keep = [i for i, t in enumerate(table.column("track_id").to_pylist())
                if t in self.track_index and in_validation(t, self.val_fraction) == self.validation]
        if not keep:
            return
        table = table.take(keep)
        mels = torch.from_numpy(mel_array(table))
        ids = table.column("track_id").to_pylist()
        rows = range(len(ids)) if self.validation else \
            rng.permutation(np.repeat(np.arange(len(ids)), self.clips_per_track))
        for r in rows:
            mel = mels[r]
            if self.crop and self.crop < mel.shape[1]:
                start = int(rng.integers(0, mel.shape[1] - self.crop + 1))
                mel = mel[:, start:start + self.crop]
            index = self.track_index[ids[r]]
            yield mel, self.targets[index], index


def shard_track_ids(shards: Sequence[Path]) -> list[str]:
    """Every track id in the shards (the ``track_id`` column only is read)."""
    return [t for path in shards for t in pq.read_table(path, columns=["track_id"])
            .column("track_id").to_pylist()]


def band_stats(pieces: Sequence[Piece], track_index: dict[str, int],
               max_tracks: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-band mean and std (n_mels,) over time, from the first ``max_tracks`` known tracks.

    Deterministic, so every rank computes the same statistics without communicating.
    """
    stream = ShardStream(pieces, track_index, np.zeros((max(track_index.values(), default=0) + 1, 1)),
                         validation=False, val_fraction=0.0)
    total = squares = None
    count = frames = 0
    for piece in pieces:
        for mel, _, _ in stream.examples(piece, np.random.default_rng(0)):
            mel = mel.double()
            total = mel.sum(1) if total is None else total + mel.sum(1)
            squares = (mel ** 2).sum(1) if squares is None else squares + (mel ** 2).sum(1)
            frames += mel.shape[1]
            count += 1
            if count >= max_tracks:
                break
        if count >= max_tracks:
            break
    if count == 0:
        raise ValueError("no spectrogram of a known track to compute input statistics from")
    mean = total / frames
    std = (squares / frames - mean ** 2).clamp(min=0).sqrt() + 1e-5
    return mean.float(), std.float()
