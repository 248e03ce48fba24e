"""The audience job at scale: time and peak memory as users grow.

    python benchmarks/audience.py [--users 100000 1000000] [--tracks 10000] [--rank 32] \
        [--workers 2]

For each user count it writes random user factors and a combined table of --tracks
cold tracks, then runs jobs/audience.py's audience() with the default batches in a
fresh process (so the peak memory is the job's own: reading its inputs, scoring,
writing) and prints seconds and peak resident memory, and the ratios of each size's to
the first's. The job streams the users, so its peak should not grow with them.
With --workers N above 1, the job runs on N local Beam worker processes, the users cut
into N ranges (the peak is then the largest worker's).
Asserts nothing.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

import schemas
from jobs.audience import audience
from peak import children_peak_mib, peak_mib  # benchmarks/peak.py, beside this script
from schemas import factors_column, storage


def write_inputs(root: Path, users: int, tracks: int, rank: int) -> None:
    rng = np.random.default_rng(0)
    storage.write_table(pa.table({"user_id": [f"u{i}" for i in range(users)],
                                  "factors": factors_column(rng.normal(size=(users, rank)))}),
                        root / "users.parquet", schemas.USER_FACTORS)
    storage.write_table(pa.table({"track_id": [f"t{i}" for i in range(tracks)],
                                  "factors": factors_column(rng.normal(size=(tracks, rank))),
                                  "source": ["audio"] * tracks, "model_version": ["v"] * tracks,
                                  "listeners": [0] * tracks, "plays": [0] * tracks}),
                        root / "tracks.parquet", schemas.TRACK_FACTORS)


def one(root: Path, users: int, workers: int) -> None:
    """Run the job on the inputs under ``root``; print its time and peak memory."""
    started = time.perf_counter()
    spread = {} if workers == 1 else {
        "users_per_part": -(-users // workers),
        "beam_args": [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]}
    audience(root / "users.parquet", root / "tracks.parquet", root / "audience.parquet", **spread)
    seconds = time.perf_counter() - started
    print(f"{seconds:.2f} {max(peak_mib(), children_peak_mib()):.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--tracks", type=int, default=10_000)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one, args.users[0], args.workers)
        return
    first = None
    for users in args.users:
        with tempfile.TemporaryDirectory() as tmp:
            write_inputs(Path(tmp), users, args.tracks, args.rank)
            result = subprocess.run([sys.executable, __file__, "--one", tmp, "--users", str(users),
                                     "--workers", str(args.workers)], check=True,
                                    stdout=subprocess.PIPE, text=True)
        seconds, peak = map(float, result.stdout.split()[-2:])
        first = first or (seconds, peak)
        print(f"{users:>8} users x {args.tracks} cold tracks, rank {args.rank}: "
              f"{seconds:6.1f} s ({seconds / first[0]:5.2f}x), "
              f"peak memory {peak:6.0f} MiB ({peak / first[1]:4.2f}x)", flush=True)


if __name__ == "__main__":
    main()
