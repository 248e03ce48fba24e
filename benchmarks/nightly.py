"""What nights cost once the catalogue is done, and what folding in loses against a
full refit.

    python benchmarks/nightly.py --tracks 2000 --users 20000 --nights 7

Synthesises a demo catalogue in a scratch data root and keeps back a share of its
tracks and plays. The backfill runs on the rest; then each of ``--nights`` nights
brings about ``--new-plays`` more plays and ``--new-tracks`` more tracks (fold-in
nights, into the backfill's factor space), and the night after them is the refit
night ([TrainAls] refit_every = nights + 1), its network warm-started from the last
model. For every night it prints the wall time as a ratio to the backfill's and the
held-out AUC of the published factors: 10% of every user's plays of the warm tracks
are never shown, and each is ranked against the tracks that user never played. On a
fold-in night the same plays also get a full ALS refit, whose AUC is printed beside.
The repository's luigi.cfg applies (the demo's settings), with the refit settings laid
over it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def run_night(run: str) -> float:
    """BackfillFactors for ``run`` in a child process, as the scheduler runs it; seconds."""
    started = time.perf_counter()
    task = (["BackfillFactors"] if run == "backfill"
            else ["NightlyFactors", "--date", run])
    subprocess.run([sys.executable, "-m", "luigi", "--module", "workflows", *task,
                    "--local-scheduler"], cwd=REPO, check=True)
    return time.perf_counter() - started


def held_out_auc(users, tracks, heldout, shown) -> float:
    """Mean per-user AUC of the held-out plays against the tracks the user never
    played, over the warm tracks of ``tracks`` (tables with track_id, factors)."""
    from schemas import factor_matrix
    from schemas.metrics import auc

    row = {u: i for i, u in enumerate(users.column("user_id").to_pylist())}
    column = {t: j for j, t in enumerate(tracks.column("track_id").to_pylist())}
    scores = factor_matrix(users) @ factor_matrix(tracks).T
    played: dict[int, set[int]] = {}
    for user, track in zip(shown["user_id"], shown["track_id"]):
        if user in row and track in column:
            played.setdefault(row[user], set()).add(column[track])
    wanted: dict[int, set[int]] = {}
    for user, track in zip(heldout["user_id"], heldout["track_id"]):
        if user in row and track in column:
            wanted.setdefault(row[user], set()).add(column[track])
    aucs = []
    for user, positives in wanted.items():
        negative = np.ones(len(column), bool)
        negative[list(positives | played.get(user, set()))] = False
        if negative.any():
            aucs.append(auc(scores[user, list(positives)], scores[user, negative]))
    return float(np.mean(aucs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=2000, help="catalogue size at the backfill")
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--duration-s", type=float, default=6.0)
    parser.add_argument("--nights", type=int, default=7, help="fold-in nights before the refit")
    parser.add_argument("--new-plays", type=float, default=0.01,
                        help="plays each night brings, as a share of the backfill's")
    parser.add_argument("--new-tracks", type=float, default=0.01,
                        help="tracks each night brings, as a share of the backfill's")
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    import schemas
    from schemas import layout, storage

    work = args.workdir or Path(tempfile.mkdtemp(prefix="nightly-bench-"))
    data, demo = work / "data", work / "demo"
    nights = args.nights + 1  # the fold-in nights, then the refit night
    per_night = max(1, round(args.tracks * args.new_tracks))
    total = args.tracks + nights * per_night
    subprocess.run([sys.executable, "-m", "jobs.demo_catalogue", "--out", str(demo),
                    "--n-tracks", str(total), "--n-users", str(args.users),
                    "--duration-s", str(args.duration_s)], cwd=REPO, check=True)
    files = layout.DemoFiles(demo)
    catalogue, plays = pq.read_table(files.catalogue), pq.read_table(files.plays)
    rng = np.random.default_rng(0)
    # 10% of the plays are never shown (the held-out set); of the rest, what each night
    # adds arrives in order: the rows are shuffled once
    plays = plays.take(rng.permutation(plays.num_rows))
    n_held = plays.num_rows // 10
    heldout, shown_all = plays.slice(0, n_held).to_pydict(), plays.slice(n_held)
    n_new = round(shown_all.num_rows * args.new_plays / (1 + nights * args.new_plays))
    first = shown_all.num_rows - nights * n_new

    cfg = work / "luigi.cfg"
    cfg.write_text((REPO / "luigi.cfg").read_text()
                   + f"\n[TrainAls]\nrefit_every = {nights}\nmax_new_share = 0.5\n")
    os.environ.update(COLDSTART_DATA_ROOT=str(data), LUIGI_CONFIG_PATH=str(cfg))
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # the refits' executors
    runs = ["backfill"] + [(dt.date(2026, 11, 1) + dt.timedelta(days=n)).isoformat()
                           for n in range(nights)]
    rows = []
    for n, run in enumerate(runs):
        listed = catalogue.slice(0, args.tracks + n * per_night)
        shown = shown_all.slice(0, first + n * n_new)
        shown = shown.filter(pc.is_in(shown["track_id"], value_set=listed["track_id"]))
        storage.write_table(listed, data / "catalogue.parquet", schemas.CATALOGUE)
        storage.write_table(shown, data / "plays.parquet", schemas.PLAYS)
        seconds = run_night(run)
        snapshot = data / "published" / run
        manifest = json.loads((snapshot / layout.SNAPSHOT_MANIFEST).read_text())
        users, tracks = (pq.read_table(snapshot / layout.SNAPSHOT_USERS),
                         pq.read_table(snapshot / layout.SNAPSHOT_TRACKS))
        warm = tracks.filter(pc.equal(tracks["source"], "als"))
        shown_pairs = shown.select(["user_id", "track_id"]).to_pydict()
        published = held_out_auc(users, warm, heldout, shown_pairs)
        refit = float("nan")
        if manifest.get("als", {}).get("night") == "fold-in":
            scratch = work / f"refit-{run}"
            subprocess.run([sys.executable, "-m", "jobs.als", "--plays", str(data / "plays.parquet"),
                            "--out", str(scratch), *als_flags()], cwd=REPO, check=True,
                           stdout=subprocess.DEVNULL)
            items = storage.read_table(scratch / layout.ITEM_FACTORS, schemas.ITEM_FACTORS)
            refit = held_out_auc(
                storage.read_table(scratch / layout.USER_FACTORS, schemas.USER_FACTORS),
                items.filter(pc.is_in(items["track_id"], value_set=warm["track_id"])),
                heldout, shown_pairs)
        rows.append((run, manifest.get("als", {}).get("night", "?"), seconds, published, refit))
        print(f"{run}: {seconds:.0f} s, {manifest.get('als')}", flush=True)

    base = rows[0][2]
    print(f"\n{args.tracks} tracks and {first} plays at the backfill; each night "
          f"{per_night} new tracks and {n_new} new plays; {args.users} users")
    print(f"{'run':<12} {'ALS':<8} {'seconds':>8} {'/ backfill':>10} {'AUC':>7} "
          f"{'full refit':>10} {'difference':>10}")
    for run, night, seconds, published, refit in rows:
        print(f"{run:<12} {night:<8} {seconds:>8.0f} {seconds / base:>10.2f} {published:>7.4f} "
              f"{refit:>10.4f} {refit - published:>10.4f}")


def als_flags() -> list[str]:
    """The [TrainAls] settings the workflow gives the ALS job, from the same config."""
    from workflows import tasks
    from workflows.settings import flags

    return [str(word) for word in flags(tasks.TrainAls(), tasks.Als, tasks.SemiCold)]


if __name__ == "__main__":
    main()
