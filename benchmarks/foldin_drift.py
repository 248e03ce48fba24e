"""How far a fold-in drifts from a full refit as new plays pile up since the refit:
what [TrainAls] max_new_share bounds.

    python benchmarks/foldin_drift.py --users 5000 --tracks 1000 --shares 0.02 0.05 0.1 0.2 0.4

Synthetic plays from a latent taste model (users and tracks with random tastes,
power-law popularity): 10% of every user's pairs are held out, the refit learns the
others but a share that arrives later (new pairs of known and new users and tracks),
and each share is then both folded into the refit's space and refitted in full. It
prints the held-out AUC of each (a held-out pair ranked against the tracks the user
never played) and their difference, with the refit's own AUC on its plays.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def synthetic_plays(users: int, tracks: int, per_user: int, seed: int):
    """(user, track, plays) arrays of distinct pairs from a latent taste model."""
    rng = np.random.default_rng(seed)
    taste, style = rng.normal(size=(users, 8)), rng.normal(size=(tracks, 8))
    popularity = rng.pareto(1.5, tracks) + 1
    rows = []
    for u in range(users):
        weight = np.exp(style @ taste[u] / 2) * popularity
        picked = rng.choice(tracks, min(tracks, rng.poisson(per_user) + 1), replace=False,
                            p=weight / weight.sum())
        rows += [(u, t, int(rng.geometric(0.3))) for t in picked]
    return np.array(rows).T


def factors_auc(factors_dir: Path, shown, heldout) -> float:
    """benchmarks/nightly.py's held-out AUC of the ALS factors under ``factors_dir``;
    ``shown`` and ``heldout`` are (user, track) index arrays."""
    import schemas
    from nightly import held_out_auc  # benchmarks/nightly.py, beside this script
    from schemas import storage

    def pairs(users, tracks) -> dict:
        return {"user_id": [f"u{u}" for u in users], "track_id": [f"t{t}" for t in tracks]}

    return held_out_auc(storage.read_table(factors_dir / "user_factors", schemas.USER_FACTORS),
                        storage.read_table(factors_dir / "item_factors", schemas.ITEM_FACTORS),
                        pairs(*heldout), pairs(*shown))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--tracks", type=int, default=1000)
    parser.add_argument("--plays-per-user", type=int, default=30)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2, 0.4],
                        help="shares of the plays that arrive after the refit")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.sql import SparkSession

    from jobs.als import job as als
    from schemas.config import AlsParams

    user, track, count = synthetic_plays(args.users, args.tracks, args.plays_per_user, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    order = rng.permutation(len(user))
    n_held = len(order) // 10
    heldout = (user[order[:n_held]], track[order[:n_held]])
    rest = order[n_held:]  # the plays in the order they arrive
    work = Path(tempfile.mkdtemp(prefix="foldin-drift-"))
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # executors need this Python's pyarrow
    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.shuffle.partitions", "4").getOrCreate())
    spark.sparkContext.setLogLevel("WARN")
    params = AlsParams()

    def write(rows: np.ndarray, name: str) -> str:
        path = work / f"{name}.parquet"
        pq.write_table(pa.table({"user_id": [f"u{u}" for u in user[rows]],
                                 "track_id": [f"t{t}" for t in track[rows]],
                                 "plays": count[rows].astype(np.int64)}), path)
        return str(path)

    print(f"{args.users} users, {args.tracks} tracks, {len(rest)} plays learned from, "
          f"{n_held} held out; rank {params.rank}")
    print(f"{'new share':>9} {'fold-in AUC':>11} {'refit AUC':>9} {'refit - fold-in':>15} "
          f"{'base AUC':>8}")
    for share in args.shares:
        n_base = int(len(rest) * (1 - share))
        base = work / f"base-{share}"
        als.run(spark, write(rest[:n_base], f"base-{share}"), base, params)
        tonight = write(rest, f"all-{share}")
        als.run(spark, tonight, work / f"fold-{share}", params, base=base, max_new_share=1.0)
        als.run(spark, tonight, work / f"refit-{share}", params)
        shown = (user[rest], track[rest])
        folded = factors_auc(work / f"fold-{share}", shown, heldout)
        refit = factors_auc(work / f"refit-{share}", shown, heldout)
        before = factors_auc(base, (user[rest[:n_base]], track[rest[:n_base]]), heldout)
        print(f"{share:>9.2f} {folded:>11.4f} {refit:>9.4f} {refit - folded:>15.4f} "
              f"{before:>8.4f}", flush=True)
    spark.stop()


if __name__ == "__main__":
    main()
