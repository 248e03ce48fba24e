"""Training throughput: clips/s, the data loader's share of step time, model FLOP/s.

Writes synthetic 30-second log-mel excerpts (128 x 1292 frames) as Parquet shards
the way the spectrogram job does, streams them with the training reader, and runs
optimiser steps of the chosen network on the chosen device (CUDA with bf16 autocast
when present). Under torchrun each rank trains on its share, in DDP (nccl on CUDA,
gloo on CPU), and rank 0 prints the figures of all ranks together. Prints figures;
asserts nothing.

    python benchmarks/train.py --tracks 1024 --batch-size 64 --steps 40 --loader-workers 2
    python benchmarks/train.py --write-only DIR --tracks 8192        # shards, kept
    torchrun --nproc_per_node=8 benchmarks/train.py --shards DIR --batch-size 256
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from apache_beam.options.pipeline_options import PipelineOptions
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from jobs.spectrograms.pipeline import MelOutputs, write
from model.data import ShardStream, plan_pieces
from model.net import NetConfig, build_net
from schemas import layout
from schemas.config import ARCHS, MEL_DTYPES, MelParams

# Dense bf16 tensor-core peaks, for model FLOP utilisation.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12}


def synthetic_mel(index: int, params: MelParams, frames: int) -> dict:
    """One track's spectrogram row as the job's log-mel step emits it."""
    mel = np.random.default_rng(index).normal(size=params.n_mels * frames).astype(params.dtype)
    return {"track_id": f"t{index:07d}", "n_mels": params.n_mels, "n_frames": frames,
            "dtype": params.dtype, "mel": mel}


def write_shards(root: Path, tracks: int, frames: int, params: MelParams = MelParams()) -> list[Path]:
    """Shards written by the spectrogram job's own writer (row groups, shard bound,
    codec and schema metadata as a real run has them), from synthetic rows."""
    with beam.Pipeline(options=PipelineOptions([], direct_running_mode="in_memory",
                                               direct_num_workers=1)) as pipeline:
        rows = (pipeline | beam.Create(range(tracks))
                | beam.Map(synthetic_mel, params=params, frames=frames))
        write(MelOutputs(mels=rows, dead_letters=pipeline | "NoDeadLetters" >> beam.Create([])),
              root, params)
    return layout.mel_shards(root.parent)


def step_flops(model: torch.nn.Module, batch: torch.Tensor) -> int:
    """FLOPs of one forward and backward pass on ``batch``."""
    with FlopCounterMode(display=False) as counter:
        model(batch).float().pow(2).mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=512, help="synthetic tracks to write")
    parser.add_argument("--frames", type=int, default=1292, help="frames per excerpt (1292 = 30 s)")
    parser.add_argument("--crop-frames", type=int, default=0, help="random crop; 0 trains on whole clips")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps after 3 warm-up steps")
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--arch", choices=ARCHS, default="dieleman2014")
    parser.add_argument("--dense", type=int, default=None,
                        help="dense layer width (default: the seed's size)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--dtype", choices=MEL_DTYPES, default=MelParams.dtype,
                        help="how the synthetic shards store values")
    parser.add_argument("--write-only", type=Path, metavar="DIR",
                        help="write the synthetic shards under DIR and stop")
    parser.add_argument("--shards", type=Path, metavar="DIR",
                        help="train on the shards --write-only wrote under DIR")
    args = parser.parse_args()
    if args.write_only:
        write_shards(args.write_only / "run", args.tracks, args.frames, MelParams(dtype=args.dtype))
        return

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if distributed:
        dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    with tempfile.TemporaryDirectory() as tmp:
        shards = layout.mel_shards(args.shards) if args.shards else \
            write_shards(Path(tmp) / "run", args.tracks, args.frames, MelParams(dtype=args.dtype))
        tracks = sum(pq.ParquetFile(s).metadata.num_rows for s in shards)
        n_frames = pq.ParquetFile(shards[0]).read_row_group(0, columns=["n_frames"])["n_frames"][0].as_py()
        index = {f"t{i:07d}": i for i in range(tracks)}
        targets = np.random.default_rng(1).normal(size=(tracks, 32)).astype(np.float32)
        pieces = plan_pieces(shards, world * max(1, args.loader_workers))
        stream = ShardStream(pieces, index, targets, validation=False, val_fraction=0.0,
                             crop_frames=args.crop_frames or None, rank=rank, world=world,
                             batch_size=args.batch_size)
        loader = DataLoader(stream, batch_size=None, num_workers=args.loader_workers,
                            pin_memory=device.type == "cuda",
                            persistent_workers=args.loader_workers > 0)
        model = build_net(NetConfig.for_arch(args.arch, n_factors=32, dense=args.dense)).to(device)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        runner = DistributedDataParallel(model) if distributed else model
        runner = torch.compile(runner) if args.compile else runner
        frames = args.crop_frames or n_frames
        flops = step_flops(model, torch.randn(args.batch_size, 128, frames, device=device))

        wait = compute = 0.0
        clips = steps = 0
        epoch = 0
        while steps < args.steps + 3:
            stream.set_epoch(epoch)
            epoch += 1
            fetched = time.perf_counter()
            for mel, target, _ in loader:
                ready = time.perf_counter()
                mel, target = mel.to(device, non_blocking=True), target.to(device, non_blocking=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    loss = torch.nn.functional.mse_loss(runner(mel).float(), target)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                done = time.perf_counter()
                steps += 1
                if steps > 3:  # warm-up excluded
                    wait += ready - fetched
                    compute += done - ready
                    clips += len(mel)
                fetched = time.perf_counter()
                if steps >= args.steps + 3:
                    break

    # every rank's time and clips; the job's rate is all clips over the slowest rank's time
    figures = torch.tensor([wait, compute, clips], dtype=torch.float64, device=device)
    if distributed:
        summed, slowest = figures.clone(), figures.clone()
        dist.all_reduce(summed)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        wait, compute, clips = summed[0].item(), summed[1].item(), summed[2].item()
        total_slowest = (slowest[0] + slowest[1]).item()
        dist.destroy_process_group()
    total = wait + compute
    if rank != 0:
        return
    per_rank_total = total / world if not distributed else total_slowest
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name} x {world}; arch {args.arch}; batch {args.batch_size} per rank; "
          f"clip {frames} frames; loader workers {args.loader_workers} per rank")
    print(f"clips/s: {clips / per_rank_total:.1f}")
    print(f"data loader share of step time: {wait / total:.1%}")
    achieved = flops / args.batch_size * clips / per_rank_total
    print(f"model GFLOP per clip (fwd+bwd): {flops / args.batch_size / 1e9:.2f}; "
          f"achieved TFLOP/s: {achieved / 1e12:.3f}")
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    if peak:
        print(f"model FLOP utilisation: {achieved / (peak * world):.1%}")


if __name__ == "__main__":
    main()
