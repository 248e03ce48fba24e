"""Throughput of the spectrogram job against a bare decode + log-mel loop.

    python benchmarks/spectrograms.py /tmp/music --tracks 3000 --repeat 2

Builds a catalogue of --tracks entries from the audio files found under the
directory (files are reused under distinct track ids when there are fewer), then
times, over the same catalogue:

1. a bare loop: decode_excerpt + log_mel for every track in this process, on one
   core, no Beam, no isolation, nothing written;
2. the Beam job (jobs.spectrograms.job.run) as `python -m jobs.spectrograms` runs it
   by default: --direct_num_workers workers, decoding isolated in child processes,
   Parquet shards and dead letters written and published. Its wall time includes
   starting the workers.

Prints, for both, tracks/s per core two ways, and the ratios Beam / bare, end to
end and after start-up (the Beam job timed on 2 tracks per worker is subtracted):

- wall: tracks / wall seconds / cores used. The bare loop uses one core, the Beam
  job min(workers, CPUs). Exact on an idle machine; on a shared one, processes
  of others take cores from the Beam job more than from the one-core loop.
- cpu: tracks / CPU seconds (user + system) of every process involved: this one,
  and for Beam its workers and their decoder processes (all waited for, so
  counted in RUSAGE_CHILDREN). Robust to other load; counts the Beam job's
  start-up (interpreters, imports) in full.

The sides run alternately, --pairs times (bare, Beam start-up, Beam; bare, ...); each
ratio is the median over the pairs of the ratio within each pair, with its range
(benchmarks/paired.py). A ratio that is not a positive finite number stops the run.
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
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
from jobs.spectrograms import job as spectrograms
from jobs.spectrograms.decode import DecodeError, decode_excerpt
from jobs.spectrograms.mel import log_mel
from schemas.config import MelParams

AUDIO_SUFFIXES = {".mp3", ".ogg", ".oga", ".opus", ".flac", ".wav", ".m4a", ".aac"}


def audio_files(root: Path) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise SystemExit(f"no audio files under {root}")
    return files


def write_catalogue(files: list[Path], n_tracks: int, path: Path) -> list[str]:
    uris = [str(files[i % len(files)]) for i in range(n_tracks)]
    rows = [{"track_id": f"bench{i:06d}", "audio_uri": uri} for i, uri in enumerate(uris)]
    pq.write_table(pa.Table.from_pylist(rows, schema=schemas.CATALOGUE), path)
    return uris


@dataclass
class Timing:
    wall_s: float
    cpu_s: float


class Stopwatch:
    """Wall time, and CPU time of this process and of its waited-for descendants."""

    def __enter__(self) -> Stopwatch:
        self._wall, self._cpu = time.perf_counter(), self._cpu_now()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timing = Timing(time.perf_counter() - self._wall, self._cpu_now() - self._cpu)

    @staticmethod
    def _cpu_now() -> float:
        return sum(usage.ru_utime + usage.ru_stime for usage in (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN)))


def bare_loop(uris: list[str], params: MelParams) -> tuple[Timing, int]:
    """Decode and log-mel every URI in this process; the time taken and how many failed."""
    import torch

    torch.set_num_threads(1)
    log_mel(decode_excerpt(uris[0], params), params)  # build the mel filterbank once
    failed = 0
    with Stopwatch() as watch:
        for uri in uris:
            try:
                log_mel(decode_excerpt(uri, params, min_duration_s=1.0), params)
            except DecodeError:
                failed += 1
    return watch.timing, failed


def beam_job(catalogue: Path, out: Path, run_id: str,
             job_args: list[str]) -> tuple[Timing, spectrograms.RunSummary]:
    """Run the job with its command-line defaults plus ``job_args``."""
    options = spectrograms.parse_options(
        ["--catalogue", str(catalogue), "--out", str(out), "--run-id", run_id, *job_args])
    with Stopwatch() as watch:
        summary = spectrograms.run(options)
    return watch.timing, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio_dir", type=Path, help="Directory searched for audio files.")
    parser.add_argument("--tracks", type=int, default=2000,
                        help="Catalogue size. Default: %(default)s.")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="--direct_num_workers of the Beam job. Default: one per CPU, "
                             "%(default)s.")
    parser.add_argument("--excerpt-s", type=float, default=MelParams().excerpt_s,
                        help="Excerpt length, seconds. Default: %(default)s.")
    parser.add_argument("--pairs", type=int, default=3,
                        help="Alternating runs of each side. Default: %(default)s.")
    args, job_args = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING)

    params = MelParams(excerpt_s=args.excerpt_s)
    files = audio_files(args.audio_dir)
    cores = min(args.workers, os.cpu_count() or 1)
    job_args = ["--excerpt-s", str(args.excerpt_s), "--max-bad-fraction", "1",
                "--direct_num_workers", str(args.workers), *job_args]
    n_startup = 2 * args.workers  # enough for every worker to start
    with tempfile.TemporaryDirectory(prefix="bench-mels-") as scratch:
        scratch = Path(scratch)
        uris = write_catalogue(files, args.tracks, scratch / "catalogue.parquet")
        write_catalogue(files, n_startup, scratch / "startup.parquet")
        for path in files:  # same page cache for both
            path.read_bytes()
        print(f"{len(uris)} tracks from {len(files)} files under {args.audio_dir}; excerpt "
              f"{args.excerpt_s:g} s; {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}; Beam job: {' '.join(job_args)}", flush=True)
        bare, beam, startup = [], [], []
        for attempt in range(args.pairs):
            timing, failed = bare_loop(uris, params)
            bare.append(timing)
            print(f"  bare loop        : {timing.wall_s:6.2f} s wall, {timing.cpu_s:6.2f} s CPU, "
                  f"{failed} failed", flush=True)
            for runs, catalogue in ((startup, "startup.parquet"), (beam, "catalogue.parquet")):
                timing, summary = beam_job(scratch / catalogue, scratch / "mels",
                                           f"bench{attempt}", job_args)
                runs.append(timing)
                print(f"  beam, {summary.mels + summary.dead_letters:5d} tracks: "
                      f"{timing.wall_s:6.2f} s wall, {timing.cpu_s:6.2f} s CPU, "
                      f"{summary.dead_letters} dead letters", flush=True)
                shutil.rmtree(scratch / "mels")  # the next run redoes every track

    n = len(uris)
    # tracks/s per core of each side in each pair; Beam's wall rate over its cores
    bare_wall = [n / t.wall_s for t in bare]
    bare_cpu = [n / t.cpu_s for t in bare]
    beam_wall = [n / t.wall_s / cores for t in beam]
    beam_cpu = [n / t.cpu_s for t in beam]
    after_wall = [(n - n_startup) / (b.wall_s - s.wall_s) / cores for b, s in zip(beam, startup)]
    after_cpu = [(n - n_startup) / (b.cpu_s - s.cpu_s) for b, s in zip(beam, startup)]
    print(f"start-up of the Beam job ({n_startup} tracks), median: "
          f"{np.median([t.wall_s for t in startup]):.1f} s wall, "
          f"{np.median([t.cpu_s for t in startup]):.1f} s CPU")
    print(f"tracks/s per core, median: bare {np.median(bare_wall):.1f} wall, "
          f"{np.median(bare_cpu):.1f} CPU; Beam ({cores} cores) {np.median(beam_wall):.1f} wall, "
          f"{np.median(beam_cpu):.1f} CPU")
    print("Beam / bare per core, median of the pairs (range):")
    for label, beam_side, bare_side in (
            ("end to end, wall", beam_wall, bare_wall), ("end to end, CPU", beam_cpu, bare_cpu),
            ("after start-up, wall", after_wall, bare_wall),
            ("after start-up, CPU", after_cpu, bare_cpu)):
        print(f"  {label:22} {ratios(label, [b / a for b, a in zip(beam_side, bare_side)])}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
