"""What a night costs once the catalogue is done: the first night against a night that
brings a small share of new tracks, stage by stage.

    python benchmarks/nightly.py --tracks 400 --new-fraction 0.01

Synthesises a demo catalogue in a scratch data root, runs NightlyFactors on all but the
newest tracks (the first night, which decodes everything), then on the whole catalogue
the next night, and prints each stage's seconds (luigi's processing time of each task)
for both nights. The repository's luigi.cfg applies (the demo's settings).
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def run_night(date: dt.date) -> dict[str, float]:
    """NightlyFactors for ``date`` in this process; seconds per task family."""
    import luigi

    import workflows

    seconds: dict[str, float] = collections.defaultdict(float)

    @luigi.Task.event_handler(luigi.Event.PROCESSING_TIME)
    def took(task, processing_time):
        seconds[task.task_family] += processing_time

    ok = luigi.build([workflows.NightlyFactors(date=date)], local_scheduler=True,
                     detailed_summary=False)
    if not ok:
        raise SystemExit(f"the night of {date} failed")
    return dict(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=400, help="catalogue size after night 2")
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--duration-s", type=float, default=12.0)
    parser.add_argument("--new-fraction", type=float, default=0.01,
                        help="share of the catalogue that is new on the second night")
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()

    import pyarrow.parquet as pq

    import schemas
    from schemas import layout, storage

    work = args.workdir or Path(tempfile.mkdtemp(prefix="nightly-bench-"))
    data, demo = work / "data", work / "demo"
    subprocess.run([sys.executable, "-m", "jobs.demo_catalogue", "--out", str(demo),
                    "--n-tracks", str(args.tracks), "--n-users", str(args.users),
                    "--duration-s", str(args.duration_s)], cwd=REPO, check=True)
    files = layout.DemoFiles(demo)
    catalogue = pq.read_table(files.catalogue)
    new = max(1, round(args.tracks * args.new_fraction))
    os.environ["COLDSTART_DATA_ROOT"] = str(data)
    os.chdir(REPO)
    storage.write_table(pq.read_table(files.plays), data / "plays.parquet", schemas.PLAYS)

    nights = {}
    for night, shown in ((dt.date(2026, 11, 1), args.tracks - new),
                         (dt.date(2026, 11, 2), args.tracks)):
        storage.write_table(catalogue.slice(0, shown), data / "catalogue.parquet",
                            schemas.CATALOGUE)
        nights[night] = run_night(night)

    first, second = nights.values()
    print(f"\n{args.tracks - new} tracks on the first night, {new} new on the second "
          f"({100 * new / args.tracks:.1f}%)")
    print(f"{'stage':<16} {'night 1 s':>10} {'night 2 s':>10} {'ratio':>6}")
    for stage in sorted(set(first) | set(second), key=lambda s: -first.get(s, 0)):
        a, b = first.get(stage, 0.0), second.get(stage, 0.0)
        print(f"{stage:<16} {a:>10.1f} {b:>10.1f} {b / a if a else float('nan'):>6.2f}")
    total_a, total_b = sum(first.values()), sum(second.values())
    print(f"{'all':<16} {total_a:>10.1f} {total_b:>10.1f} {total_b / total_a:>6.2f}")


if __name__ == "__main__":
    main()
