"""The training loop: epochs over streamed shards under DDP, validation, snapshots."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.algorithms.join import Join
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.artefact import load_weights
from model.data import ShardStream
from model.net import FactorNet
from schemas import cli, metrics, storage
from schemas.config import TrainConfig

logger = logging.getLogger(__name__)

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Progress:
    """What a snapshot restores besides the weights."""
    epoch: int = 0
    best_loss: float = float("inf")
    bad_epochs: int = 0
    best_state: dict | None = None
    best_spread: float = float("nan")
    best_score: float = -float("inf")
    history: list = dataclasses.field(default_factory=list)  # one dict per epoch
    # the distinct training tracks each rank read in the first epoch, and all ranks together
    rank_shares: list = dataclasses.field(default_factory=list)
    tracks_covered: int = 0


class CollapsedModel(ValueError):
    """Training ended on a model that predicts nearly one direction for every track."""


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


class Trainer:
    """Runs epochs, validates on all ranks, snapshots atomically and stops early.

    The best epoch is the one whose validation predictions agree best with their
    targets once the targets' common direction (``reference``, the mean unit target
    of the training tracks) is taken from both: that direction adds the same to every
    track's score for a user, so it ranks nothing, and a loss that rewards it picks a
    model that predicts it for every track when the validation tracks are few.

    A snapshot (weights, optimiser, progress) is written by rank 0 after every epoch;
    a Trainer started where one exists resumes from it, which is how a run restarted
    by torchrun (--max-restarts) continues after losing a worker.

    ``tokens`` (tracks, MAX_TOKENS), by the examples' track index, feed a network's
    metadata branch (model/metadata.py).
    """

    def __init__(self, model: FactorNet, loss: Loss, train_data: ShardStream, val_data: ShardStream,
                 config: TrainConfig, device: torch.device, reference: np.ndarray,
                 snapshot: Path | None = None, tensorboard: Path | None = None,
                 steps_per_epoch: int | None = None, tokens: torch.Tensor | None = None):
        self.config, self.device, self.snapshot = config, device, snapshot
        self.tokens = None if tokens is None else tokens.to(device)
        self.reference = reference
        self.module = model.to(device)
        self.loss = loss.to(device) if isinstance(loss, torch.nn.Module) else loss
        self.model = DistributedDataParallel(self.module) if dist.is_initialized() else self.module
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=config.lr,
                                          weight_decay=config.weight_decay)
        self.train_data, self.val_data = train_data, val_data
        # the streams batch themselves (ShardStream); workers prefetch two batches each
        loader = dict(batch_size=None, num_workers=config.loader_workers,
                      pin_memory=device.type == "cuda")
        self.train_loader = DataLoader(train_data, **loader)
        self.val_loader = DataLoader(val_data, **loader)
        self.steps_per_epoch = steps_per_epoch
        self.writer = None
        if tensorboard is not None and is_main():
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(tensorboard))
        self.progress = Progress()
        if snapshot is not None and snapshot.exists():
            self.load_snapshot()

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def inputs(self, mel: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The network's inputs for a batch: the spectrograms, and the tracks' tokens
        when it has a metadata branch."""
        mel = mel.to(self.device, non_blocking=True)
        return (mel,) if self.tokens is None else (mel, self.tokens[index.to(self.device)])

    def batch_loss(self, mel: torch.Tensor, target: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        inputs = self.inputs(mel, index)
        if len(inputs) > 1:
            # A network with a metadata branch sees each example twice in one forward
            # pass: with its tokens and without, as a track of a new artist, so that
            # its audio alone must predict too and the metadata cannot be all it uses.
            mel, tokens = inputs
            inputs = (torch.cat([mel, mel]), torch.cat([tokens, torch.zeros_like(tokens)]))
            target, index = torch.cat([target, target]), torch.cat([index, index])
        with self.autocast():
            pred = self.model(*inputs)
        return self.loss(pred.float(), target.to(self.device), index.to(self.device))

    def run_batch(self, mel: torch.Tensor, target: torch.Tensor, index: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.batch_loss(mel, target, index)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def run_epoch(self, epoch: int) -> tuple[float, int]:
        """One pass over this rank's share; returns (mean loss, clips seen)."""
        self.model.train()
        self.train_data.set_epoch(epoch)
        losses, clips, seen = [], 0, set()
        # Ranks may hold different numbers of examples: Join lets one run out early
        # without the others hanging in gradient all-reduce.
        joined = Join([self.model]) if dist.is_initialized() else contextlib.nullcontext()
        with joined, tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}", unit="batch",
                          disable=None if is_main() else True,  # None: on a terminal only
                          leave=False) as bar:
            for mel, target, index in self.train_loader:
                losses.append(self.run_batch(mel, target, index))
                clips += len(mel)
                if epoch == 0:
                    seen.update(index.tolist())
                bar.update()
        if epoch == 0:
            self.record_shares(seen)
        return (float(np.mean(losses)) if losses else float("nan")), clips

    def record_shares(self, seen: set[int]) -> None:
        """How many distinct tracks each rank read, and all together: the shares are
        disjoint and cover the training tracks when the counts add up to the total."""
        shares = [seen]
        if dist.is_initialized():
            shares = [None] * dist.get_world_size()
            dist.all_gather_object(shares, seen)
        self.progress.rank_shares = [len(share) for share in shares]
        self.progress.tracks_covered = len(set().union(*shares))

    @torch.no_grad()
    def validate(self) -> tuple[float, float, float]:
        """Over all ranks' validation examples: the mean loss, the spread of the
        predictions and their agreement with the targets (schemas.metrics).

        A network with a metadata branch is also asked without its tokens, as for a
        track of an artist it never saw; its agreement is the mean of both, so the
        epoch kept serves new artists too, not only known ones."""
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        preds, bare, targets = [], [], []
        for mel, target, index in self.val_loader:
            inputs = self.inputs(mel, index)
            target, index = target.to(self.device), index.to(self.device)
            # The bare module: a DDP forward may broadcast buffers, a collective that
            # would hang or garble when ranks hold different numbers of batches.
            with self.autocast():
                pred = self.module(*inputs).float()
                if len(inputs) > 1:
                    bare.append(self.module(inputs[0]).float().cpu().numpy())
            total[0] += self.loss(pred, target, index) * len(mel)
            total[1] += len(mel)
            preds.append(pred.cpu().numpy())
            targets.append(target.cpu().numpy())
        shares = [(preds, bare, targets)]
        if dist.is_initialized():
            dist.all_reduce(total)
            shares = [None] * dist.get_world_size()
            dist.all_gather_object(shares, (preds, bare, targets))
        pred, bare, target = (np.concatenate([a for share in shares for a in share[part]]
                                             or [np.zeros((0, 1))]) for part in range(3))
        if not len(pred):
            return float("nan"), float("nan"), float("nan")
        score = metrics.agreement(pred, target, self.reference)
        if len(bare):
            score = (score + metrics.agreement(bare, target, self.reference)) / 2
        return (total[0] / total[1]).item(), metrics.spread(pred), score

    def save_snapshot(self) -> None:
        if not is_main() or self.snapshot is None:
            return
        with storage.atomic_file(self.snapshot) as tmp:
            torch.save({"model": self.module.state_dict(),
                        "optimizer": self.optimizer.state_dict(),
                        "progress": dataclasses.asdict(self.progress)}, tmp)

    def load_snapshot(self) -> None:
        saved = load_weights(self.snapshot, self.device)
        self.module.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.progress = Progress(**saved["progress"])
        logger.info("resumed from %s after epoch %d", self.snapshot, self.progress.epoch)

    def log_epoch(self, train_loss: float, val_loss: float, val_spread: float,
                  val_score: float, clips: int, seconds: float) -> None:
        p = self.progress
        p.history.append({"epoch": p.epoch, "train_loss": train_loss, "validation_loss": val_loss,
                          "validation_score": val_score, "validation_spread": val_spread})
        elapsed = time.perf_counter() - self.started
        # at most: patience may stop it earlier
        left = elapsed / (p.epoch - self.first_epoch) * (self.config.epochs - p.epoch)
        logger.info("epoch %d of %d: train loss %.4f, validation loss %.4f, score %.3f, "
                    "spread %.3f, %.0f clips/s on this rank; %s, at most %s left", p.epoch,
                    self.config.epochs, train_loss, val_loss, val_score, val_spread,
                    clips / max(seconds, 1e-9), cli.duration(elapsed), cli.duration(left))
        if self.writer is not None:
            self.writer.add_scalar("loss/train", train_loss, p.epoch)
            self.writer.add_scalar("loss/validation", val_loss, p.epoch)
            self.writer.add_scalar("spread/validation", val_spread, p.epoch)
            self.writer.add_scalar("score/validation", val_score, p.epoch)
            self.writer.add_scalar("speed/clips_per_s_rank0", clips / max(seconds, 1e-9), p.epoch)
            self.writer.flush()

    def train(self) -> Progress:
        """Train until ``epochs``, or ``patience`` epochs without improvement.

        Epochs whose validation predictions spread less than ``min_spread`` are never
        chosen; a run in which no epoch qualifies fails (CollapsedModel).
        """
        p = self.progress
        widest = p.best_spread if p.best_state is not None else 0.0
        self.started, self.first_epoch = time.perf_counter(), p.epoch  # for the time left
        while p.epoch < self.config.epochs and p.bad_epochs < self.config.patience:
            started = time.perf_counter()
            train_loss, clips = self.run_epoch(p.epoch)
            seconds = time.perf_counter() - started
            val_loss, val_spread, val_score = self.validate()
            p.epoch += 1
            widest = max(widest, val_spread) if val_spread == val_spread else widest
            # a single validation track has no spread to measure: it is not refused for it
            if not val_spread < self.config.min_spread and val_score > p.best_score:
                p.best_loss, p.best_spread, p.best_score = val_loss, val_spread, val_score
                p.bad_epochs = 0
                p.best_state = {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}
            elif p.best_state is not None:  # patience counts from the first usable epoch
                p.bad_epochs += 1
            self.log_epoch(train_loss, val_loss, val_spread, val_score, clips, seconds)
            self.save_snapshot()
        if self.writer is not None:
            self.writer.close()
        if p.best_state is None:
            raise CollapsedModel(
                f"the trained model collapsed: in no epoch did its validation predictions "
                f"spread more than {widest:.3f} (1 - mean pairwise cosine; {self.config.min_spread} "
                "needed), so it would give every cold track nearly the same factors; more "
                "warm tracks, more epochs or a smaller network may help")
        return p
