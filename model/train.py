"""Train the audio CNN to regress warm tracks' unit-normalised ALS factors.

Runs on one process or under torchrun with DistributedDataParallel (gloo on CPU,
nccl on GPU):

    torchrun --nproc_per_node=2 -m model.train --mels DATA/mels/<hash> \\
        --item-factors DATA/als/item_factors --out model.pt

Rank 0 writes. A snapshot is saved atomically after every epoch when --snapshot is
given, and a restarted run resumes from it. The model file carries everything
scoring needs: network shape, weights, input statistics, mel parameters, version.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

import schemas
from jobs import storage
from jobs.mel import mel_shards
from model.artefact import save_model
from model.data import CropDataset, unit_rows, warm_examples
from model.net import FactorNet, NetConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings."""
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    crop_frames: int = 256  # random time crop (frames of hop 512 at 22050 Hz: ~6 s)
    val_fraction: float = 0.1
    patience: int = 5  # epochs without validation improvement before stopping
    seed: int = 0


@dataclass
class Progress:
    """What a snapshot restores besides the weights."""
    epoch: int = 0
    best_loss: float = float("inf")
    bad_epochs: int = 0
    best_state: dict | None = None


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def setup_distributed() -> torch.device:
    """Join the torchrun process group if there is one; pick the device and backend."""
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if "RANK" in os.environ:
        dist.init_process_group("nccl" if cuda else "gloo")
    return device


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, validation) split of range(n); every rank gets the same one."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction))) if n > 1 and val_fraction > 0 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class Trainer:
    """Runs epochs over a sharded loader, validates, snapshots and stops early."""

    def __init__(self, model: FactorNet, train_data: CropDataset, val_data: CropDataset,
                 config: TrainConfig, device: torch.device, snapshot: Path | None):
        self.config = config
        self.device = device
        self.snapshot = snapshot
        self.module = model.to(device)
        self.model = DistributedDataParallel(self.module) if dist.is_initialized() else self.module
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=config.lr,
                                          weight_decay=config.weight_decay)
        self.train_sampler = DistributedSampler(train_data, shuffle=True, seed=config.seed) \
            if dist.is_initialized() else None
        self.train_loader = DataLoader(train_data, batch_size=config.batch_size,
                                       sampler=self.train_sampler,
                                       shuffle=self.train_sampler is None, drop_last=False)
        val_sampler = DistributedSampler(val_data, shuffle=False) if dist.is_initialized() else None
        self.val_loader = DataLoader(val_data, batch_size=config.batch_size, sampler=val_sampler)
        self.progress = Progress()
        if snapshot is not None and snapshot.exists():
            self.load_snapshot()

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def run_batch(self, mel: torch.Tensor, target: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = nn.functional.mse_loss(self.model(mel.to(self.device)).float(),
                                          target.to(self.device))
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def run_epoch(self, epoch: int) -> float:
        self.model.train()
        if self.train_sampler is not None:
            self.train_sampler.set_epoch(epoch)
        losses = [self.run_batch(mel, target) for mel, target in self.train_loader]
        return float(np.mean(losses)) if losses else float("nan")

    @torch.no_grad()
    def validate(self) -> float:
        """Mean validation loss over all ranks."""
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        for mel, target in self.val_loader:
            with self.autocast():
                pred = self.model(mel.to(self.device)).float()
            total[0] += nn.functional.mse_loss(pred, target.to(self.device), reduction="sum")
            total[1] += target.numel()
        if dist.is_initialized():
            dist.all_reduce(total)
        return (total[0] / total[1].clamp(min=1)).item()

    def save_snapshot(self) -> None:
        if not is_main() or self.snapshot is None:
            return
        tmp = storage.atomic_file(self.snapshot)
        torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "progress": dataclasses.asdict(self.progress)}, tmp)
        os.replace(tmp, self.snapshot)

    def load_snapshot(self) -> None:
        saved = torch.load(self.snapshot, map_location=self.device, weights_only=False)
        self.module.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.progress = Progress(**saved["progress"])
        logger.info("resumed from %s after epoch %d", self.snapshot, self.progress.epoch)

    def train(self) -> Progress:
        """Train until ``epochs`` or ``patience`` epochs without improvement."""
        p = self.progress
        while p.epoch < self.config.epochs and p.bad_epochs < self.config.patience:
            train_loss = self.run_epoch(p.epoch)
            val_loss = self.validate()
            p.epoch += 1
            if val_loss < p.best_loss:
                p.best_loss, p.bad_epochs = val_loss, 0
                p.best_state = {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}
            else:
                p.bad_epochs += 1
            logger.info("epoch %d: train mse %.4f, validation mse %.4f", p.epoch, train_loss, val_loss)
            self.save_snapshot()
        return p


def input_stats(mels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-band mean and std over examples and time: (n_mels,), (n_mels,)."""
    return (torch.from_numpy(mels.mean(axis=(0, 2))),
            torch.from_numpy(mels.std(axis=(0, 2)) + 1e-5))


def train(mels_dir: Path, item_factors: Path, out: Path, net: dict, config: TrainConfig,
          snapshot: Path | None = None) -> None:
    """Load warm examples, train under whatever process group exists, write ``out``."""
    device = setup_distributed()
    torch.manual_seed(config.seed + (dist.get_rank() if dist.is_initialized() else 0))
    shards = mel_shards(mels_dir)
    if not shards:
        raise FileNotFoundError(f"{mels_dir}: no mel shards to train on")
    ids, mels, factors = warm_examples(shards, item_factors)
    if len(ids) < 2:
        raise ValueError(f"{mels_dir}: only {len(ids)} warm tracks with spectrograms")
    train_idx, val_idx = split_indices(len(ids), config.val_fraction, config.seed)
    targets = unit_rows(factors)
    model = FactorNet(NetConfig(n_mels=mels.shape[1], n_factors=factors.shape[1], **net))
    if mels.shape[2] < model.config.min_frames():
        raise ValueError(f"{mels_dir}: excerpts of {mels.shape[2]} frames are shorter than the "
                         f"network's minimum of {model.config.min_frames()}")
    model.mel_mean, model.mel_std = input_stats(mels[train_idx])
    trainer = Trainer(model, CropDataset(mels[train_idx], targets[train_idx], config.crop_frames),
                      CropDataset(mels[val_idx], targets[val_idx], None), config, device, snapshot)
    progress = trainer.train()
    if is_main():
        mel_params = schemas.params_of(pq.read_schema(shards[0]))
        scale = float(np.median(np.linalg.norm(factors, axis=1)))
        version = save_model(out, model.config, progress.best_state or model.state_dict(), mel_params,
                             scale, {"validation_mse": progress.best_loss, "epochs": progress.epoch,
                                     "train_tracks": len(train_idx), "val_tracks": len(val_idx)})
        logger.info("model %s (validation mse %.4f) -> %s", version, progress.best_loss, out)
    if dist.is_initialized():
        dist.barrier()  # gloo aborts a rank that tears down while another still works


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    t, n = TrainConfig(), NetConfig()
    parser = argparse.ArgumentParser(prog="model.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mels", required=True, type=Path,
                        help="mel-spectrogram directory of one parameter set (DATA/mels/<hash>)")
    parser.add_argument("--item-factors", required=True, type=Path,
                        help="ALS item factors (Parquet file or directory, schemas.ITEM_FACTORS)")
    parser.add_argument("--out", required=True, type=Path, help="model file to write")
    parser.add_argument("--snapshot", type=Path,
                        help="per-epoch snapshot file; resumed from when it exists")
    parser.add_argument("--epochs", type=int, default=t.epochs, help="maximum epochs (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=t.batch_size,
                        help="examples per step and process (default %(default)s)")
    parser.add_argument("--lr", type=float, default=t.lr, help="Adam learning rate (default %(default)s)")
    parser.add_argument("--weight-decay", type=float, default=t.weight_decay,
                        help="L2 weight decay (default %(default)s)")
    parser.add_argument("--crop-frames", type=int, default=t.crop_frames,
                        help="random time-crop length in frames, 0 for none (default %(default)s)")
    parser.add_argument("--val-fraction", type=float, default=t.val_fraction,
                        help="fraction of tracks held out for validation (default %(default)s)")
    parser.add_argument("--patience", type=int, default=t.patience,
                        help="epochs without validation improvement before stopping (default %(default)s)")
    parser.add_argument("--seed", type=int, default=t.seed, help="random seed (default %(default)s)")
    parser.add_argument("--channels", type=int, nargs="+", default=list(n.channels),
                        help="conv layer widths (default %(default)s)")
    parser.add_argument("--dense", type=int, default=n.dense, help="dense layer width (default %(default)s)")
    parser.add_argument("--dropout", type=float, default=n.dropout, help="dropout rate (default %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         weight_decay=args.weight_decay, crop_frames=args.crop_frames,
                         val_fraction=args.val_fraction, patience=args.patience, seed=args.seed)
    net = {"channels": tuple(args.channels), "dense": args.dense, "dropout": args.dropout}
    try:
        train(args.mels, args.item_factors, args.out, net, config, args.snapshot)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
