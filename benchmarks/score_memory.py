"""Scoring's memory as the cold catalogue grows: peak resident memory at two sizes.

    python benchmarks/score_memory.py [--tracks 2000 20000] [--frames 130]
    python benchmarks/score_memory.py --shards DIR --full-size      # throughput, on a GPU if any

For each size it writes that many synthetic spectrograms with the spectrogram job's own
writer (row groups and shards as a real run has them), then, in a fresh process,
predicts factors for all of them with model.predictor.Predictor (what jobs/score.py
runs) and a network of the demo's size with a taste classifier (--network-only:
without), and prints the seconds, tracks/s and the process's peak resident memory,
then the ratio of the peaks. Scoring streams one row group at a time, so the peak
should not grow with the catalogue. With --shards it scores the shards
benchmarks/train.py --write-only wrote, on CUDA (bf16) when present, and prints
tracks/s. --full-size uses the seeds' network (Dieleman 2014). Asserts nothing.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peak import peak_mib  # benchmarks/peak.py, beside this script
from train import write_shards  # benchmarks/train.py, beside this script


def one(shards_dir: Path, tracks: int, full_size: bool = False, peak: bool = True,
        with_taste: bool = True) -> None:
    """In this (fresh) process: score every track; print seconds and peak memory."""
    import numpy as np
    import torch

    import pyarrow.parquet as pq

    import schemas
    from model import taste
    from model.net import NetConfig, Network, build_net
    from model.predictor import FactorSpace, Predictor
    from schemas import layout

    torch.set_num_threads(1)
    config = NetConfig() if full_size else NetConfig(channels=(64, 64, 128, 128), dense=256,
                                                     dropout=0.3)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    members = [Network(build_net(config).to(device), 1.0, False)]
    shards = layout.mel_shards(shards_dir)
    ids = [f"t{i:07d}" for i in range(tracks)]
    if with_taste:  # as training leaves it: a classifier of a few hundred tracks' statistics
        fitted, features = taste.features_of(shards, ids[:200], torch.device(device))
        factors = np.random.default_rng(0).normal(size=(len(fitted), config.n_factors))
        members.append(taste.Taste(taste.fit(features, factors, c=0.1, seed=0)))
    predictor = Predictor(tuple(members), schemas.params_of(pq.read_schema(shards[0])), None,
                          device=torch.device(device))
    started = time.perf_counter()
    ids, factors = predictor.predict_tracks(shards, ids, FactorSpace(None, "none"))
    seconds = time.perf_counter() - started
    assert len(ids) == tracks and factors.shape == (tracks, config.n_factors)
    peak = peak_mib()
    what = "network and taste classifier" if with_taste else "network alone"
    print(f"{tracks:>8} tracks in {len(shards)} shards on {device}, {what}: {seconds:7.1f} s, "
          f"{tracks / seconds:7.0f} tracks/s, peak memory {peak:7.0f} MiB", flush=True)
    if peak:  # for the parent process
        print(f"PEAK {peak}")


def count_tracks(shards_dir: Path) -> int:
    import pyarrow.parquet as pq

    from schemas import layout
    return sum(pq.ParquetFile(s).metadata.num_rows for s in layout.mel_shards(shards_dir))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--frames", type=int, default=130, help="frames per spectrogram (130: 3 s)")
    parser.add_argument("--shards", type=Path, help="score these shards (from train.py --write-only)")
    parser.add_argument("--full-size", action="store_true", help="the seeds' network size")
    parser.add_argument("--network-only", action="store_true",
                        help="score without the taste classifier that training adds")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one or args.shards:
        shards_dir, tracks = (Path(args.one[0]), int(args.one[1])) if args.one else \
            (args.shards, count_tracks(args.shards))
        one(shards_dir, tracks, args.full_size, peak=bool(args.one),
            with_taste=not args.network_only)
        return 0
    peaks = []
    for tracks in args.tracks:
        with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
            write_shards(Path(tmp) / "run", tracks, args.frames)
            done = subprocess.run([sys.executable, __file__, "--one", tmp, str(tracks)]
                                  + ["--network-only"] * args.network_only,
                                  capture_output=True, text=True, check=True)
            print(done.stdout.splitlines()[0], flush=True)
            peaks.append(float(done.stdout.split("PEAK ")[1]))
    print(f"peak memory, largest / smallest catalogue: {peaks[-1] / peaks[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
