"""Throughput of the spectrogram job against a bare decode + log-mel loop, end to end.

    python benchmarks/spectrograms.py /tmp/real-music/data-0/catalogue.parquet --tracks 500
    python benchmarks/spectrograms.py /tmp/music --tracks 3000 --pairs 3

The first argument is a catalogue (Parquet with audio_uri, such as the one
benchmarks/real_music.py writes) or a directory searched for audio files. A catalogue of
--tracks entries is built from those files (reused under distinct track ids when there
are fewer). Both sides then run as whole processes, each a fresh interpreter that pays
its own imports, over the same catalogue:

1. the bare loop: this script with --bare-loop, decode_excerpt + log_mel for every
   track, one core, no Beam, no isolation, nothing written;
2. the job as a user runs it: `python -m jobs.spectrograms` with its defaults but
   --decoders (child processes that decode and compute the log-mels; default one per
   CPU), Parquet shards and dead letters written and published, without the pretrained
   tagger's input (--no-frontend);
3. and 4. the same two making the tagger's input as well (the job's default): the
   decoded excerpt resampled to 16 kHz and its log-mels, written by the job as a second
   output.

Printed, for each, tracks/s per core two ways, and ratios of them, end to end and after
start-up (each side's run on 2 tracks per decoder subtracted): job / bare, without and
with the tagger's input on both sides (what the job adds to the work it does), the job
with it against today's bare loop, and what the tagger's input costs each (with /
without, so 0.90 is 10% slower):

- wall: tracks / wall seconds / cores used. The bare loop uses one core, the job
  min(decoders, CPUs). Exact on an idle machine; on a shared one, processes of others
  take cores from the job more than from the one-core loop.
- cpu: tracks / CPU seconds (user + system) of the process and of everything it waited
  for (the job's decoder processes). Robust to other load.

The sides run alternately, --pairs times (bare start-up, bare, job start-up, job, and
the same two with the tagger's input; ...);
each ratio is the median over the pairs of the ratio within each pair, with its range
(benchmarks/paired.py). A ratio that is not a positive finite number stops the run.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from paired import ratios, run  # benchmarks/paired.py, beside this script
from schemas import layout
from schemas.config import MelParams

# The sides: the bare loop and the job, each without and with the pretrained tagger's input.
TAGGER = "tagger"
SIDES = ("bare", "job", f"bare+{TAGGER}", f"job+{TAGGER}")
AUDIO_SUFFIXES = {".mp3", ".ogg", ".oga", ".opus", ".flac", ".wav", ".m4a", ".aac"}
REPO = Path(__file__).resolve().parents[1]


def audio_files(source: Path) -> list[str]:
    """The audio URIs of a catalogue file, or the audio files under a directory."""
    if source.is_file():
        uris = pq.read_table(source, columns=["audio_uri"]).column(0).drop_null().to_pylist()
    else:
        uris = sorted(str(p) for p in source.rglob("*")
                      if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not uris:
        raise SystemExit(f"no audio in {source}")
    return uris


def write_catalogue(uris: list[str], n_tracks: int, path: Path) -> None:
    rows = [{"track_id": f"bench{i:06d}", "audio_uri": uris[i % len(uris)]}
            for i in range(n_tracks)]
    pq.write_table(pa.Table.from_pylist(rows, schema=schemas.CATALOGUE), path)


def bare_loop(catalogue: Path, params: MelParams, tagger: bool = False) -> None:
    """Decode and log-mel every track of ``catalogue`` in this process, one core, and
    with ``tagger`` make its tagger input too; print how many failed."""
    import torch

    from jobs.spectrograms.decode import DecodeError, decode_excerpt
    from jobs.spectrograms.mel import log_mel, resample

    torch.set_num_threads(1)
    frontend = params.frontend()
    failed = 0
    for uri in pq.read_table(catalogue, columns=["audio_uri"]).column(0).to_pylist():
        try:
            samples = decode_excerpt(uri, params, min_duration_s=1.0)
        except DecodeError:
            failed += 1
            continue
        log_mel(samples, params)
        if tagger:
            log_mel(resample(samples, params.sample_rate, frontend.sample_rate), frontend)
    print(failed)


@dataclass
class Timing:
    wall_s: float
    cpu_s: float


def timed(command: list[str]) -> tuple[Timing, str]:
    """Run ``command`` in the repository; its wall time, the CPU time of it and of what it
    waited for, and its standard output. A failure stops the benchmark."""
    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    wall, cpu_before = time.perf_counter(), cpu()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    timing = Timing(time.perf_counter() - wall, cpu() - cpu_before)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return timing, done.stdout


def rows(paths) -> int:
    return sum(pq.ParquetFile(path).metadata.num_rows for path in paths)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", type=Path,
                        help="A catalogue Parquet file, or a directory searched for audio files.")
    parser.add_argument("--tracks", type=int, default=2000,
                        help="Catalogue size. Default: %(default)s.")
    parser.add_argument("--decoders", type=int, default=os.cpu_count() or 1,
                        help="--decoders of the job. Default: one per CPU, %(default)s.")
    parser.add_argument("--excerpt-s", type=float, default=MelParams().excerpt_s,
                        help="Excerpt length, seconds. Default: %(default)s.")
    parser.add_argument("--pairs", type=int, default=3,
                        help="Alternating runs of each side. Default: %(default)s.")
    parser.add_argument("--bare-loop", action="store_true",
                        help="Run the bare loop over the catalogue AUDIO and exit (the "
                             "benchmark runs itself so).")
    parser.add_argument("--tagger", action="store_true",
                        help="With --bare-loop: make the tagger's input too.")
    args, job_args = parser.parse_known_args(argv)
    params = MelParams(excerpt_s=args.excerpt_s)
    if args.bare_loop:
        bare_loop(args.audio, params, args.tagger)
        return 0

    uris = audio_files(args.audio)
    cores = min(args.decoders, os.cpu_count() or 1)
    job_args = ["--excerpt-s", str(args.excerpt_s), "--max-bad-fraction", "1",
                "--decoders", str(args.decoders), *job_args]
    n_startup = 2 * args.decoders  # enough for every decoder to start
    with tempfile.TemporaryDirectory(prefix="bench-mels-") as scratch:
        scratch = Path(scratch)
        for n, name in ((args.tracks, "catalogue"), (n_startup, "startup")):
            write_catalogue(uris, n, scratch / f"{name}.parquet")
        for uri in set(uris):  # same page cache for both
            Path(uri).read_bytes()
        print(f"{args.tracks} tracks from {len(set(uris))} files of {args.audio}; excerpt "
              f"{args.excerpt_s:g} s; {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}; job: {' '.join(job_args)}", flush=True)
        times: dict[str, list[Timing]] = {side: [] for name in SIDES
                                          for side in (f"{name} start-up", name)}
        for attempt in range(args.pairs):
            for side in times:
                catalogue = scratch / ("startup.parquet" if "start-up" in side
                                       else "catalogue.parquet")
                if side.startswith("bare"):
                    timing, out = timed([sys.executable, __file__, str(catalogue),
                                         "--bare-loop", "--excerpt-s", str(args.excerpt_s),
                                         *(["--tagger"] if TAGGER in side else [])])
                    failed = int(out.split()[-1])
                else:
                    run_id = f"{'startup' if 'start-up' in side else 'run'}{attempt}"
                    frontend = "--frontend" if TAGGER in side else "--no-frontend"
                    timing, _ = timed([sys.executable, "-m", "jobs.spectrograms",
                                       "--catalogue", str(catalogue), "--out",
                                       str(scratch / "mels"), "--run-id", run_id, *job_args,
                                       frontend])
                    run_dir = layout.run_dir(scratch / "mels", params, run_id)
                    failed = rows(layout.dead_letter_files(run_dir))
                    if TAGGER in side:
                        tagger = layout.run_dir(scratch / "mels", params.frontend(), run_id)
                        if rows(layout.mel_shard_files(tagger)) + rows(
                                layout.dead_letter_files(tagger)) != len(pq.read_table(catalogue)):
                            raise SystemExit(f"{tagger}: not every track has a tagger input "
                                             "or a dead letter")
                    shutil.rmtree(scratch / "mels")  # the next run redoes every track
                times[side].append(timing)
                print(f"  {side:13}: {timing.wall_s:6.2f} s wall, {timing.cpu_s:6.2f} s CPU, "
                      f"{failed} failed", flush=True)

    n = args.tracks

    def end_to_end(side: str, attribute: str, per_core: int) -> list[float]:
        """tracks/s per core of ``side`` in each pair; the job's wall rate over its cores."""
        return [n / getattr(t, attribute) / per_core for t in times[side]]

    def after(side: str, attribute: str, per_core: int) -> list[float]:
        return [(n - n_startup) / (getattr(t, attribute) - getattr(s, attribute)) / per_core
                for t, s in zip(times[side], times[f"{side} start-up"])]

    def rates(side: str) -> dict[str, list[float]]:
        per_core = 1 if side.startswith("bare") else cores
        return {"end to end, wall": end_to_end(side, "wall_s", per_core),
                "end to end, CPU": end_to_end(side, "cpu_s", 1),
                "after start-up, wall": after(side, "wall_s", per_core),
                "after start-up, CPU": after(side, "cpu_s", 1)}

    sides = {side: rates(side) for side in SIDES}
    for side in sides:
        startup = times[f"{side} start-up"]
        print(f"start-up of {side} ({n_startup} tracks), median: "
              f"{np.median([t.wall_s for t in startup]):.1f} s wall, "
              f"{np.median([t.cpu_s for t in startup]):.1f} s CPU")
    print("tracks/s per core, median: " + "; ".join(
        f"{side}{'' if side.startswith('bare') else f' ({cores} cores)'} "
        f"{np.median(sides[side]['end to end, wall']):.1f} wall, "
        f"{np.median(sides[side]['end to end, CPU']):.1f} CPU" for side in sides))
    bare_tagger, job_tagger = (f"{side}+{TAGGER}" for side in ("bare", "job"))
    for title, numerator, denominator in (
            ("job / bare", "job", "bare"),
            (f"{job_tagger} / {bare_tagger}", job_tagger, bare_tagger),
            (f"{job_tagger} / bare", job_tagger, "bare"),
            (f"what the tagger's input costs the job: {job_tagger} / job", job_tagger, "job"),
            (f"what it costs the bare loop: {bare_tagger} / bare", bare_tagger, "bare")):
        print(f"{title} per core, median of the pairs (range):")
        for label in sides["bare"]:
            pairs = zip(sides[numerator][label], sides[denominator][label])
            print(f"  {label:22} {ratios(f'{title}, {label}', [a / b for a, b in pairs])}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
