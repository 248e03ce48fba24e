"""The query command on a service-sized snapshot: wall time and peak memory per query.

    python benchmarks/query.py [--users 1000000] [--tracks 50000] [--cold 1000]
                               [--plays 3000000] [--repeats 3] [--work DIR]

Publishes a synthetic snapshot (random factors of rank 32, a catalogue, plays, the
audience of the cold tracks and the similar-track index, each made by the stage that
makes it) and then runs ``python -m jobs.query`` as a user would, each query in a fresh
process: --help, similar tracks (from the index), a new release's audience (from the
published table), a warm track's audience (computed: every user scored) and a user's
recommendations (leaving out the user's plays, found in the plays file as written, in
random order, and in the same plays sorted by user, whose row groups' statistics let
the lookup skip all but one). Prints each query's median wall time
(the interpreter's start and imports included) and the process's peak resident memory
(VmHWM). Asserts nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from peak import peak_mib  # benchmarks/peak.py, beside this script
from schemas import factors_column, storage

RANK = 32


def make_snapshot(root: Path, users: int, tracks: int, cold: int, plays: int) -> Path:
    """Publish a synthetic snapshot under root/published; returns that folder."""
    # the stages that make it, imported here: a query's process (--one) must not pay for
    # their imports (Beam), or its figures would not be the query's
    from jobs.audience import audience
    from jobs.index import build
    from jobs.publish import publish

    rng = np.random.default_rng(0)
    user_ids = np.array([f"user{i:08d}" for i in range(users)], dtype=object)
    track_ids = [f"track{i:07d}" for i in range(tracks)]
    storage.write_table(pa.table({"user_id": user_ids, "factors": factors_column(
        rng.normal(size=(users, RANK)).astype(np.float32))}), root / "users.parquet",
        schemas.USER_FACTORS)
    warm = tracks - cold
    storage.write_table(pa.table({
        "track_id": track_ids,
        "factors": factors_column(rng.normal(size=(tracks, RANK)).astype(np.float32)),
        "source": ["als"] * warm + ["audio"] * cold,
        "model_version": [None] * warm + ["v1"] * cold,
        "listeners": [10] * warm + [0] * cold, "plays": [20] * warm + [0] * cold}),
        root / "tracks.parquet", schemas.TRACK_FACTORS)
    pq.write_table(pa.table({"track_id": track_ids, "audio_uri": [f"/audio/{t}.ogg" for t in track_ids],
                             "title": [f"Song {i}" for i in range(tracks)],
                             "artist": [f"Band {i % 997}" for i in range(tracks)],
                             "duration_s": pa.array(np.full(tracks, 180.0), pa.float32())}),
                   root / "catalogue.parquet")
    pq.write_table(pa.table({
        "user_id": user_ids[rng.integers(0, users, plays)],
        "track_id": pa.array(np.array(track_ids, dtype=object)[rng.integers(0, warm, plays)]),
        "plays": pa.array(rng.integers(1, 20, plays), pa.int64())}), root / "plays.parquet")
    # the same plays sorted by user, as a lookup of one user's plays would have them
    pq.write_table(pq.read_table(root / "plays.parquet").sort_by("user_id"),
                   root / "plays_by_user.parquet", row_group_size=65_536)
    audience(root / "users.parquet", root / "tracks.parquet", root / "audience.parquet")
    build(root / "tracks.parquet", root / "index")
    publish("bench", root / "users.parquet", root / "tracks.parquet", root / "published",
            catalogue=root / "catalogue.parquet", plays=root / "plays.parquet",
            audience=root / "audience.parquet", index=root / "index")
    return root / "published"


def one(argv: list[str]) -> None:
    """Run one query in this process, its answer discarded; print the peak memory."""
    from jobs.query import main as query
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            code = query(argv)
        except SystemExit as exit_:  # --help
            code = exit_.code
    print(code, peak_mib())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--tracks", type=int, default=50_000)
    parser.add_argument("--cold", type=int, default=1_000)
    parser.add_argument("--plays", type=int, default=3_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, help="where to build the snapshot (default: a "
                                                  "temporary folder); one built there "
                                                  "before is queried again")
    parser.add_argument("--one", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        one(args.one)
        return
    with contextlib.ExitStack() as stack:
        root = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        started = time.perf_counter()
        published = root / "published"
        if not published.exists():
            make_snapshot(root, args.users, args.tracks, args.cold, args.plays)
        print(f"snapshot of {args.users:,} users and {args.tracks:,} tracks ({args.cold:,} cold), "
              f"{args.plays:,} plays, made in {time.perf_counter() - started:.0f} s", flush=True)
        warm, new = "track0000007", f"track{args.tracks - 1:07d}"
        queries = {"--help": ["--help"],
                   "similar": ["similar", "--track", new],
                   "audience of a new release": ["audience", "--track", new],
                   "audience of a warm track": ["audience", "--track", warm],
                   "recommend": ["recommend", "--user", "user00000042"],
                   "recommend, --plays random": ["recommend", "--user", "user00000042",
                                                 "--plays", str(root / "plays.parquet")],
                   "recommend, --plays by user": ["recommend", "--user", "user00000042",
                                                  "--plays", str(root / "plays_by_user.parquet")]}
        for name, argv in queries.items():
            seconds, peaks = [], []
            for _ in range(args.repeats):
                begun = time.perf_counter()
                result = subprocess.run([sys.executable, __file__, "--one", "--published",
                                         str(published), *argv], check=True,
                                        stdout=subprocess.PIPE, text=True)
                seconds.append(time.perf_counter() - begun)
                code, peak = result.stdout.split()[-2:]
                peaks.append(float(peak))
            print(f"{name:<26} {statistics.median(seconds):5.2f} s (range {min(seconds):.2f}-"
                  f"{max(seconds):.2f}), peak memory {max(peaks):5.0f} MiB, exit {code}",
                  flush=True)


if __name__ == "__main__":
    main()
