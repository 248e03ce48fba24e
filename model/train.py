"""Train the audio CNN to predict warm tracks' ALS factors from their log-mel excerpts.

Runs on one process or under torchrun with DistributedDataParallel (gloo on CPU,
nccl and bf16 autocast on GPU), any world size:

    torchrun --nproc_per_node=2 --max-restarts=3 -m model.train \\
        --mels DATA/mels/<hash> --item-factors DATA/als/item_factors \\
        --out model.pt --snapshot model.snapshot

Each rank streams its share of the Parquet shards. Rank 0 writes. A snapshot is
saved atomically after every epoch; a restarted run (torchrun --max-restarts after a
lost worker, or a rerun) resumes from it. The model file carries everything scoring
needs: architecture, weights, input statistics, mel parameters, output scale, version.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import logging
import math
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

import schemas
from model import losses, metadata, musicnn, taste
from model.predictor import Predictor
from model.taste import Taste
from model.data import (ShardStream, band_stats, in_validation, plan_pieces, shard_track_ids,
                        unit_rows)
from model.net import NetConfig, Network, build_net
from model.trainer import CollapsedModel, Trainer, is_main
from schemas import cli, factor_matrix, layout, model_file, spaces, storage
from schemas.config import DEFAULT_ARCH, DEFAULT_LOSS, NetworkChoice, TrainConfig
from schemas.feedback import als_settings, plays_matrix

logger = logging.getLogger(__name__)


def die_with_launcher() -> None:
    """Under torchrun, have the kernel kill this worker when the launcher dies.

    torchrun starts workers in sessions of their own, so killing a scheduler's
    process group leaves them running, blocked forever in a collective and possibly
    writing outputs after the run was stopped. PR_SET_PDEATHSIG (Linux) prevents that.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the launcher died before the request took effect
        os._exit(1)


def setup_distributed() -> torch.device:
    """Join the torchrun process group if there is one; pick the device and backend."""
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if "RANK" in os.environ and not dist.is_initialized():
        # torchrun keeps one key-value store across worker restarts, and a restarted
        # worker could read its dead peer's address left there by the last attempt and
        # wait on it until the timeout: each attempt gets a key space of its own.
        store, rank, world = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world,
                                store=dist.PrefixStore(f"attempt-{attempt}/", store))
    return device


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


@dataclass(frozen=True)
class TrainJob:
    """What to train on and where to write it.

    mels: the spectrograms of one parameter set (<mels root>/<params hash>);
    item_factors: the ALS targets; user_factors and plays: needed by the wpe loss;
    net: overrides of the seeds' network sizes (NetConfig fields: channels, pools,
    dense, dropout, window_frames); catalogue: when given, its metadata columns feed
    the network's metadata branch (late fusion, model/metadata.py).
    """
    mels: Path
    item_factors: Path
    out: Path
    user_factors: Path | None = None
    plays: Path | None = None
    snapshot: Path | None = None
    tensorboard: Path | None = None
    arch: str = DEFAULT_ARCH
    loss: str = DEFAULT_LOSS
    net: dict = dataclasses.field(default_factory=dict)
    catalogue: Path | None = None
    config: TrainConfig = TrainConfig()
    init_from: Path | None = None
    init_factors: Path | None = None


def wpe_loss(item_factors: Path, user_factors: Path, plays: Path,
             track_index: dict[str, int]) -> losses.WeightedPredictionError:
    """Eq. 5 against the ALS user factors, with the ALS run's own alpha and eps."""
    users = storage.read_table(user_factors, schemas.USER_FACTORS)
    als = als_settings(storage.read_params(item_factors), item_factors)
    user_index = {u: i for i, u in enumerate(users.column("user_id").to_pylist())}
    matrix = plays_matrix(storage.read_table(plays, schemas.PLAYS), track_index, user_index)
    return losses.WeightedPredictionError(factor_matrix(users), matrix,
                                          alpha=als["alpha"], eps=als["eps"])


@dataclass(frozen=True)
class Examples:
    """What training reads: the shards, the ALS targets by track id, and the warm
    tracks that have both (n_val of them held out for validation); with a catalogue,
    the tracks' metadata tokens."""
    shards: list[Path]
    track_index: dict[str, int]
    factors: np.ndarray
    warm: list[str]
    n_val: int
    tokens: dict[str, tuple[str, ...]] | None = None


def examples(job: TrainJob) -> Examples:
    """Check and gather the training examples; ValueError or FileNotFoundError naming
    the input when there is nothing to train on. Cheap, and the same on every rank:
    the launcher runs it alone first (``--check``), since restarting workers cannot
    mend such an input."""
    shards = layout.mel_shards(job.mels)
    if not shards:
        raise FileNotFoundError(f"{job.mels}: no mel shards to train on")
    items = storage.read_table(job.item_factors, schemas.ITEM_FACTORS)
    track_index = {t: i for i, t in enumerate(items.column("track_id").to_pylist())}
    warm = sorted(set(shard_track_ids(shards)) & track_index.keys())
    if not warm:
        raise ValueError(f"{job.item_factors}: none of its tracks has a spectrogram in "
                         f"{job.mels}: do the plays and the catalogue name the same tracks?")
    n_val = sum(in_validation(t, job.config.val_fraction) for t in warm)
    if n_val == 0 or n_val == len(warm):
        raise ValueError(f"{job.mels}: {len(warm)} warm tracks with spectrograms leave no "
                         f"train/validation split at --val-fraction {job.config.val_fraction}")
    tokens = None
    if job.catalogue is not None:
        tokens = metadata.read_tokens(job.catalogue)
        if not metadata.vocabulary(tokens, warm):
            raise ValueError(f"{job.catalogue}: none of the {len(warm)} warm tracks has a value "
                             f"in the metadata columns {list(metadata.COLUMNS)}")
    return Examples(shards, track_index, factor_matrix(items), warm, n_val, tokens)


def fit_taste(shards: list[Path], track_index: dict[str, int], factors: np.ndarray,
              warm: list[str], train_ids: list[str], config: TrainConfig,
              device: torch.device) -> tuple[dict | None, dict | None]:
    """The taste classifier (model/taste.py) fitted on a seeded sample of every warm
    track, and the same fitted without the validation tracks, for choosing to judge
    on them. Both matter on small catalogues: on held-out real music the one that also
    learns the validation tracks ranks better (benchmarks/real_music.py). The statistics
    are computed on ``device``, the training GPU where there is one."""
    if not config.taste_tracks:
        return None, None
    rng = np.random.default_rng(config.seed)
    sample = rng.choice(warm, min(config.taste_tracks, len(warm)), replace=False)
    ids, features = taste.features_of(shards, sample.tolist(), device)
    targets = factors[[track_index[t] for t in ids]]
    trained = np.isin(ids, train_ids)
    return (taste.fit(features, targets, config.taste_c, config.seed, bags=config.taste_bags),
            taste.fit(features[trained], targets[trained], config.taste_c, config.seed,
                      bags=config.taste_bags))


def warm_start(model: torch.nn.Module, job: TrainJob) -> dict | None:
    """Load the network of the model at ``job.init_from`` into ``model``, its output
    layer turned from the factor space it learned (``job.init_factors``) into that of
    ``job.item_factors`` (schemas/spaces.py): what it says of the warm tracks is then
    already nearly right, and a few epochs finish it. None, to train from scratch,
    when that network is shaped otherwise or the spaces share too few tracks."""
    previous = Predictor.load(job.init_from)
    network = previous.member("network")
    try:
        if network is None:
            raise ValueError("it has no network")
        model.load_state_dict(network.module.state_dict())
        out = model.head[-1]  # y = h W' + b in the old space; y R in the new
        if not isinstance(out, torch.nn.Linear):
            raise ValueError("its network does not end in a linear layer")
        turn = spaces.alignment(storage.read_table(job.init_factors, schemas.ITEM_FACTORS),
                                storage.read_table(job.item_factors, schemas.ITEM_FACTORS),
                                str(job.init_factors))
    except (KeyError, RuntimeError, ValueError) as err:
        logger.warning("training from scratch: cannot start from %s: %s", job.init_from,
                       " ".join(str(err).split())[:300])
        return None
    rotation = torch.from_numpy(turn.rotation)
    with torch.no_grad():
        out.weight.copy_(rotation.T @ out.weight)
        out.bias.copy_(out.bias @ rotation)
    logger.info("warm start from %s (model %s), turned into this space on %d shared tracks "
                "(residual %.3f)", job.init_from, previous.version, turn.shared, turn.residual)
    return {"model": previous.version, "shared_tracks": turn.shared,
            "residual": round(turn.residual, 4)}


def train(job: TrainJob) -> None:
    """Stream warm examples, train under whatever process group exists, write ``job.out``."""
    config = job.config
    found = examples(job)
    shards, track_index, factors, warm, n_val = (found.shards, found.track_index,
                                                 found.factors, found.warm, found.n_val)
    device = setup_distributed()
    rank, world = rank_and_world()
    torch.manual_seed(config.seed + rank)
    logger.info("%d warm tracks with spectrograms (%d for validation), world size %d",
                len(warm), n_val, world)

    pieces = plan_pieces(shards, world * max(1, config.loader_workers))
    mean, std = band_stats(pieces, track_index)
    net = NetConfig.for_arch(job.arch, n_mels=len(mean), n_factors=factors.shape[1], **job.net)
    crop = max(config.crop_frames, net.min_frames()) if config.crop_frames else None
    if job.arch == "vandenoord2013":
        crop = net.window_frames  # trained on single windows, as in the paper
    elif job.arch == "musicnn":
        crop = musicnn.PATCH_FRAMES  # the input length the tagger was trained on
    else:
        net = dataclasses.replace(net, clip_frames=crop)
    train_ids = [t for t in warm if not in_validation(t, config.val_fraction)]
    tokens = None
    if found.tokens is not None:  # the vocabulary: what the training tracks say
        net = dataclasses.replace(net, metadata_vocab=metadata.vocabulary(found.tokens, train_ids))
        by_index = sorted(track_index, key=track_index.get)
        tokens = torch.from_numpy(metadata.token_ids(net.metadata_vocab, found.tokens, by_index))
        logger.info("metadata branch: %d tokens from %s", len(net.metadata_vocab), job.catalogue)
    model = build_net(net, pretrained=True)
    started_from = warm_start(model, job) if job.init_from is not None else None
    if started_from is not None:
        config = dataclasses.replace(config, epochs=min(config.epochs, config.warm_epochs))
    model.mel_mean, model.mel_std = mean, std
    loss = wpe_loss(job.item_factors, job.user_factors, job.plays, track_index) \
        if job.loss == "wpe" else getattr(losses, job.loss)
    stream = dict(pieces=pieces, track_index=track_index, targets=factors,
                  val_fraction=config.val_fraction, rank=rank, world=world, seed=config.seed,
                  batch_size=config.batch_size)
    reference = unit_rows(factors[[track_index[t] for t in train_ids]]).mean(axis=0)
    trainer = Trainer(model, loss, ShardStream(validation=False, crop_frames=crop,
                                               clips_per_track=config.clips_per_track, **stream),
                      ShardStream(validation=True, **stream), config, device, reference,
                      job.snapshot, job.tensorboard,
                      math.ceil((len(warm) - n_val) * config.clips_per_track / world
                                / config.batch_size), tokens)
    progress = trainer.train()
    if is_main():
        # a network with a metadata branch knows what the audio cannot tell (the
        # artist): averaging it with an audio-only classifier would blur that
        tastes, held_out = (None, None) if tokens is not None else fit_taste(
            shards, track_index, factors, warm, train_ids, config, device)
        mel_params = schemas.params_of(pq.read_schema(shards[0]))
        unit = losses.wants_unit_targets(job.loss)
        scale = float(np.median(np.linalg.norm(factors, axis=1))) if unit else 1.0
        if progress.best_state is not None:
            model.load_state_dict(progress.best_state)
        members = [Network(model, scale, unit)]
        if tastes is not None:
            members.append(Taste(tastes, held_out))
        predictor = Predictor(
            tuple(members), mel_params,
            storage.read_params(job.item_factors).get(model_file.FACTOR_SPACE),
            {"loss": job.loss, "validation_loss": progress.best_loss,
             "epochs": progress.epoch, "train_tracks": len(warm) - n_val,
             "val_tracks": n_val, "world_size": world,
             "validation_spread": progress.best_spread,
             "validation_score": progress.best_score,
             "history": progress.history,
             "rank_shares": progress.rank_shares,
             "tracks_covered": progress.tracks_covered,
             "metadata_tokens": len(net.metadata_vocab),
             "taste_clusters": tastes["centres"].shape[-2] if tastes else 0,
             "warm_start": started_from})
        version = predictor.save(job.out)
        logger.info("model %s (%s, %s loss; validation loss %.4f, score %.3f, spread %.3f) "
                    "-> %s", version, job.arch, job.loss, progress.best_loss,
                    progress.best_score, progress.best_spread, job.out)
        if job.snapshot is not None:  # only a run that has not finished resumes from it
            job.snapshot.unlink(missing_ok=True)
    if dist.is_initialized():
        dist.barrier()  # gloo aborts a rank that tears down while another still works


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="torchrun -m model.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--mels", required=True, type=Path,
                    help="mel-spectrogram directory of one parameter set (DATA/mels/<hash>)")
    io.add_argument("--item-factors", required=True, type=Path,
                    help="ALS item factors (Parquet file or directory, schemas.ITEM_FACTORS)")
    io.add_argument("--user-factors", type=Path,
                    help="ALS user factors; needed by --loss wpe")
    io.add_argument("--plays", type=Path, help="the play counts ALS saw; needed by --loss wpe")
    io.add_argument("--catalogue", type=Path,
                    help="late fusion: feed this catalogue's artist, genre and tags columns "
                         "(those it has) to a metadata branch beside the audio")
    io.add_argument("--out", required=True, type=Path, help="model file to write")
    io.add_argument("--snapshot", type=Path,
                    help="per-epoch snapshot file; resumed from when it exists")
    io.add_argument("--tensorboard", type=Path, help="TensorBoard log directory (rank 0 writes)")
    io.add_argument("--init-from", type=Path,
                    help="warm start: a model file whose network (of the same shape) to start "
                         "from, for at most --warm-epochs; its output is turned into this "
                         "space first. Without a usable one, training starts from scratch")
    io.add_argument("--init-factors", type=Path,
                    help="the item factors of the space the --init-from model learned")
    net = parser.add_argument_group("network (defaults: the seeds' sizes for --arch)")
    cli.add_settings(net, NetworkChoice, only=("arch",))
    net.add_argument("--channels", type=int, nargs="+", help="conv layer widths")
    net.add_argument("--pools", type=int, nargs="+", help="max-pool sizes after the conv layers")
    net.add_argument("--dense", type=int, help="dense layer width")
    net.add_argument("--dropout", type=float, help="dropout rate")
    net.add_argument("--window-frames", type=int, help="vandenoord2013 window length in frames")
    opt = parser.add_argument_group("optimisation")
    cli.add_settings(opt, NetworkChoice, only=("loss",))
    cli.add_settings(opt, TrainConfig)
    parser.add_argument("--check", action="store_true",
                        help="only check the inputs (in one process, without torchrun) and "
                             "exit: 0 when there is something to train on, 1 with the reason")
    args = parser.parse_args(argv)
    if args.loss == "wpe" and not (args.user_factors and args.plays):
        parser.error("--loss wpe needs --user-factors and --plays")
    if (args.init_from is None) != (args.init_factors is None):
        parser.error("--init-from and --init-factors go together")
    if args.taste_tracks < 0:  # found here, not after the whole training run
        parser.error(f"--taste-tracks must be 0 or more, got {args.taste_tracks}")
    return args


def job_of(args: argparse.Namespace) -> TrainJob:
    """The TrainJob the command line describes."""
    shape = {"channels": args.channels and tuple(args.channels),
             "pools": args.pools and tuple(args.pools), "dense": args.dense,
             "dropout": args.dropout, "window_frames": args.window_frames}
    return TrainJob(
        mels=args.mels, item_factors=args.item_factors, out=args.out,
        user_factors=args.user_factors, plays=args.plays, snapshot=args.snapshot,
        tensorboard=args.tensorboard, arch=args.arch, loss=args.loss,
        net={key: value for key, value in shape.items() if value is not None},
        catalogue=args.catalogue, config=cli.settings_from(TrainConfig, args),
        init_from=args.init_from, init_factors=args.init_factors)


def train_once(job: TrainJob) -> None:
    """train(job). A collapse ends every rank alike (its spread is measured over all of
    them): under torchrun for the workflow, which reads the failure file, every rank
    then exits 0 with the file saying why, as torchrun would only restart it to
    collapse again."""
    try:
        train(job)
    except CollapsedModel as err:
        if "TORCHELASTIC_RUN_ID" not in os.environ or not os.environ.get(cli.FAILURE_FILE):
            raise
        cli.record_failure(logger, err)


def main(argv: list[str] | None = None) -> int:
    die_with_launcher()
    cli.setup_logging(prefix=f"rank{os.environ.get('RANK', '0')} ")
    args = parse_args(argv)
    job = job_of(args)
    if args.check:
        return cli.run_job(lambda: logger.info("%d warm tracks to train on",
                                               len(examples(job).warm)),
                           logger, ValueError, FileNotFoundError)
    try:
        return cli.run_job(lambda: train_once(job), logger, ValueError, FileNotFoundError)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
