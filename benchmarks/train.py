"""Training throughput: clips/s, the data loader's share of step time, model FLOP/s.

Writes synthetic 30-second log-mel excerpts (128 x 1292 frames) as Parquet shards
the way the spectrogram job does, streams them with the training reader, and runs
optimiser steps of the chosen network on the chosen device (CUDA with bf16 autocast
when present). Prints figures; asserts nothing.

    python benchmarks/train.py --tracks 1024 --batch-size 64 --steps 40 --loader-workers 2
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import apache_beam as beam
import numpy as np
import torch
from apache_beam.options.pipeline_options import PipelineOptions
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from jobs.spectrograms.pipeline import MelOutputs, write
from model.data import ShardStream, plan_pieces
from model.net import NetConfig, build_net
from schemas import layout
from schemas.config import ARCHS, MelParams

# Dense bf16 tensor-core peaks, for model FLOP utilisation.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12}


def synthetic_mel(index: int, n_mels: int, frames: int) -> dict:
    """One track's spectrogram row as the job's log-mel step emits it."""
    mel = np.random.default_rng(index).normal(size=n_mels * frames).astype(np.float32)
    return {"track_id": f"t{index:07d}", "n_mels": n_mels, "n_frames": frames, "mel": mel}


def write_shards(root: Path, tracks: int, frames: int, n_mels: int = 128) -> list[Path]:
    """Shards written by the spectrogram job's own writer (row groups, shard bound,
    codec and schema metadata as a real run has them), from synthetic rows."""
    params = MelParams(n_mels=n_mels)
    with beam.Pipeline(options=PipelineOptions([], direct_running_mode="in_memory",
                                               direct_num_workers=1)) as pipeline:
        rows = (pipeline | beam.Create(range(tracks))
                | beam.Map(synthetic_mel, n_mels=n_mels, frames=frames))
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
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_shards(Path(tmp) / "run", args.tracks, args.frames)
        index = {f"t{i:07d}": i for i in range(args.tracks)}
        targets = np.random.default_rng(1).normal(size=(args.tracks, 32)).astype(np.float32)
        stream = ShardStream(plan_pieces(shards, max(1, args.loader_workers)), index, targets,
                             validation=False, val_fraction=0.0, crop_frames=args.crop_frames or None)
        loader = DataLoader(stream, batch_size=args.batch_size, num_workers=args.loader_workers,
                            pin_memory=device.type == "cuda", drop_last=True,
                            persistent_workers=args.loader_workers > 0)
        model = build_net(NetConfig.for_arch(args.arch, n_factors=32, dense=args.dense)).to(device)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        runner = torch.compile(model) if args.compile else model
        frames = args.crop_frames or args.frames
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

    total = wait + compute
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}; arch {args.arch}; batch {args.batch_size}; clip {frames} frames; "
          f"loader workers {args.loader_workers}")
    print(f"clips/s: {clips / total:.1f}")
    print(f"data loader share of step time: {wait / total:.1%}")
    achieved = flops / args.batch_size * clips / total
    print(f"model GFLOP per clip (fwd+bwd): {flops / args.batch_size / 1e9:.2f}; "
          f"achieved TFLOP/s: {achieved / 1e12:.3f}")
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    if peak:
        print(f"model FLOP utilisation: {achieved / peak:.1%}")


if __name__ == "__main__":
    main()
