"""Each stage's cost as its input grows: time and peak memory at three sizes, the
growth exponent, and the cost per unit that a sizing is made from.

    python benchmarks/scale.py [--stages spectrograms als score audience index]
                               [--scale 1.0] [--work DIR]

Each stage runs as users run it, its own command in a fresh child process, on
synthetic inputs at three sizes ten times apart (``--scale`` multiplies them all):

    spectrograms  python -m jobs.spectrograms   20, 200, 2,000 tracks (demo audio,
                                                 30-second excerpts, tagger input too)
    als           spark-submit jobs/als/job.py   30k, 300k, 3M plays (users = plays / 20,
                                                 tracks = plays / 100, rank 32, 15 iterations)
    score         benchmarks/score_memory.py     100, 1,000, 10,000 cold tracks of 30-second
                                                 spectrograms (the demo's network and a
                                                 taste classifier; its time is the scoring
                                                 alone, without writing the shards)
    audience      benchmarks/audience.py         10k, 100k, 1M users x 1,000 new releases
    index         python -m jobs.index           5k, 50k, 500k tracks

and prints, per size, the wall seconds and the peak resident memory of the stage's
largest process (Spark's JVM, a decoder child, ...), then the exponent b of
time ~ size^b and memory ~ size^b fitted over the three sizes, and the seconds per
unit between the two largest sizes (what more input costs, start-up aside), from
which the README's sizing table is made. On this machine's two cores everything runs
in about 20 minutes. Asserts nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from spectrograms import audio_files, write_catalogue  # benchmarks/spectrograms.py, beside

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {"spectrograms": (20, 200, 2_000), "als": (30_000, 300_000, 3_000_000),
         "score": (100, 1_000, 10_000), "audience": (10_000, 100_000, 1_000_000),
         "index": (5_000, 50_000, 500_000)}
UNITS = {"spectrograms": "track", "als": "play", "score": "cold track",
         "audience": "user (x 1,000 new releases)", "index": "track"}


def measured(command: list[str], cwd: Path) -> tuple[float, float, str]:
    """(wall seconds, peak MiB of the largest process, stdout) of ``command``, run by a
    fresh child of this script so that the peak is the command's own."""
    result = subprocess.run([sys.executable, __file__, "--measure", *command], cwd=cwd,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    *output, last = result.stdout.strip().splitlines()
    seconds, peak = map(float, last.split())
    return seconds, peak, "\n".join(output)


def measure(command: list[str]) -> None:
    """In a fresh process: run ``command``, print its output, then seconds and the
    largest peak among its processes (those it and they waited for)."""
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(done.returncode)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(done.stdout.strip())
    print(f"{seconds:.3f} {peak:.1f}")


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def spectrograms(work: Path, tracks: int) -> tuple[float, float]:
    demo = work / "demo-audio"
    if not demo.exists():
        subprocess.run(python("-m", "jobs.demo_catalogue", "--out", str(demo), "--n-tracks", "12",
                              "--n-users", "20"), check=True, capture_output=True, cwd=REPO)
    catalogue = work / f"catalogue-{tracks}.parquet"
    write_catalogue(audio_files(demo / "catalogue.parquet"), tracks, catalogue)
    seconds, peak, _ = measured(python("-m", "jobs.spectrograms", "--catalogue", str(catalogue),
                                       "--out", str(work / f"mels-{tracks}"), "--run-id", "r"),
                                REPO)
    return seconds, peak


def als(work: Path, plays: int) -> tuple[float, float]:
    from schemas import storage
    import schemas
    rng = np.random.default_rng(0)
    users, tracks = max(100, plays // 20), max(50, plays // 100)
    popularity = 1.0 / np.arange(1, tracks + 1) ** 0.8  # a long tail, as real plays have
    pairs = np.unique(np.stack([rng.integers(0, users, plays),
                                rng.choice(tracks, plays, p=popularity / popularity.sum())]),
                      axis=1)
    path = work / f"plays-{plays}.parquet"
    storage.write_table(pa.table({
        "user_id": pa.array(np.char.add("u", pairs[0].astype(str))),
        "track_id": pa.array(np.char.add("t", pairs[1].astype(str))),
        "plays": pa.array(rng.integers(1, 30, pairs.shape[1]), pa.int64())}),
        path, schemas.PLAYS)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # spark-submit, as the job is run by hand: the JVM is the process measured, the
    # Python driver its child
    submit = str(Path(sys.executable).parent / "spark-submit")
    seconds, peak, _ = measured([submit, "--master", "local[2]", "--conf", "spark.ui.enabled=false",
                                 str(REPO / "jobs" / "als" / "job.py"), "--plays", str(path),
                                 "--out", str(work / f"als-{plays}")], REPO)
    return seconds, peak


def from_benchmark(script: str, pattern: str, *args: str) -> list[tuple[float, float]]:
    """(seconds, peak MiB) per size, as another benchmark of this folder prints them."""
    result = subprocess.run(python(str(REPO / "benchmarks" / script), *args), cwd=REPO,
                            capture_output=True, text=True, check=True)
    return [(float(s), float(m)) for s, m in re.findall(pattern, result.stdout)]


def index(work: Path, tracks: int) -> tuple[float, float]:
    from schemas import factors_column, storage
    import schemas
    rng = np.random.default_rng(0)
    path = work / f"tracks-{tracks}.parquet"
    storage.write_table(pa.table({
        "track_id": [f"t{i}" for i in range(tracks)],
        "factors": factors_column(rng.normal(size=(tracks, 32)).astype(np.float32)),
        "source": ["als"] * tracks, "model_version": [None] * tracks,
        "listeners": [1] * tracks, "plays": [1] * tracks}), path, schemas.TRACK_FACTORS)
    seconds, peak, _ = measured(python("-m", "jobs.index", "--track-factors", str(path),
                                       "--out", str(work / f"index-{tracks}")), REPO)
    return seconds, peak


def exponent(sizes, values) -> float:
    return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every size (0.1 for a quick look)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--measure", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure)
        return
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        for stage in args.stages:
            sizes = [max(2, int(round(n * args.scale))) for n in SIZES[stage]]
            if stage == "score":
                found = from_benchmark("score_memory.py",
                                       r":\s+([\d.]+) s,\s+[\d.]+ tracks/s, peak memory\s+([\d.]+) MiB",
                                       "--frames", "1293", "--tracks", *map(str, sizes))
            elif stage == "audience":
                found = from_benchmark("audience.py",
                                       r"rank \d+:\s+([\d.]+) s \(.*?peak memory\s+([\d.]+) MiB",
                                       "--tracks", "1000", "--users", *map(str, sizes))
            else:
                run = {"spectrograms": spectrograms, "als": als, "index": index}[stage]
                found = [run(work, n) for n in sizes]
            seconds, peaks = [f[0] for f in found], [f[1] for f in found]
            print(f"{stage} (per {UNITS[stage]}):", flush=True)
            for n, s, m in zip(sizes, seconds, peaks):
                print(f"  {n:>10,}  {s:8.1f} s  {m:7.0f} MiB")
            # between the two largest sizes: the cost of more input, without the start-up
            marginal = (seconds[-1] - seconds[-2]) / (sizes[-1] - sizes[-2])
            print(f"  growth exponent: time {exponent(sizes, seconds):.2f}, memory "
                  f"{exponent(sizes, peaks):.2f}; {1e3 * marginal:.4g} ms per {UNITS[stage]} "
                  f"between the two largest sizes", flush=True)


if __name__ == "__main__":
    main()
