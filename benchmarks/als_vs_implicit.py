"""Seconds per ALS iteration: Spark (jobs/als/job.py's settings and alternatives) vs implicit (CPU).

    python benchmarks/als_vs_implicit.py                       # hetrec + 10M generated
    python benchmarks/als_vs_implicit.py --dataset hetrec --rank 40
    python benchmarks/als_vs_implicit.py --dataset generated --nnz 10000000 \\
        --variants java-blas,native-blas --settings cores,memory-only

Both libraries get the same confidences (c = 1 + alpha*log(1 + r/eps)) and rank.
A fit's time is fixed overhead (reading, partitioning, blocking) plus per-iteration
work, so per-iteration time is the slope of the least-squares line through fits of
several lengths (--iterations), printed with its intercept (the fixed part) and the
line's RMS residual. Spark runs in local[*] sessions in child processes, one per
JVM-level variant (BLAS implementation, serializer); within a session each setting
(block count, storage level, input caching) is timed in turn. implicit and Spark
run alternately, --pairs times; each ratio Spark / implicit is the median over the
pairs of the ratio within each pair, with its range (benchmarks/paired.py). A slope
that is not a positive finite number stops the run.

Reads the hetrec data from ../shared/data relative to the repository root. Needs
implicit (pip install -e ".[test]"). Prints a table; writes nothing but scratch.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from paired import ratios, run, slope  # benchmarks/paired.py, beside this script

REPO = Path(__file__).resolve().parents[1]
HETREC = REPO / ".." / "shared" / "data" / "lastfm-hetrec2011" / "user_artists.dat"
sys.path.insert(0, str(REPO))

# Spark settings timed within one session: (blocks, intermediate storage, cache input).
# blocks None = one per core (the job's default); 10 is Spark's own default.
SETTINGS = {
    "spark-defaults": (10, "MEMORY_AND_DISK", False),
    "cores": (None, "MEMORY_AND_DISK", False),
    "2x-cores": ("2x", "MEMORY_AND_DISK", False),
    "memory-only": (None, "MEMORY_ONLY", False),
    "serialized": (None, "MEMORY_AND_DISK_SER", False),
    "cached-input": (None, "MEMORY_AND_DISK", True),
}
# JVM-level variants, one child process each: extra Spark conf and environment.
NO_NATIVE = ("-Ddev.ludovic.netlib.blas.nativeLib=none.so "
             "-Ddev.ludovic.netlib.lapack.nativeLib=none.so")
VARIANTS = {
    "java-blas": ({"spark.driver.extraJavaOptions": NO_NATIVE}, {}),
    "native-blas": ({}, {"OPENBLAS_NUM_THREADS": "1"}),
    "native-blas+kryo": ({"spark.serializer": "org.apache.spark.serializer.KryoSerializer"},
                         {"OPENBLAS_NUM_THREADS": "1"}),
}


def hetrec_plays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, tracks, plays) of hetrec2011-lastfm-2k as dense indices."""
    table = pacsv.read_csv(HETREC, parse_options=pacsv.ParseOptions(delimiter="\t"))
    _, users = np.unique(table.column("userID").to_numpy(), return_inverse=True)
    _, tracks = np.unique(table.column("artistID").to_numpy(), return_inverse=True)
    return users.astype(np.int32), tracks.astype(np.int32), table.column("weight").to_numpy()


def generated_plays(nnz: int, n_users: int, n_tracks: int, seed: int = 0):
    """``nnz`` distinct (user, track) pairs with power-law user activity and track
    popularity (Zipf exponents 0.8 and 1.0), and Zipf-distributed play counts."""
    rng = np.random.default_rng(seed)
    user_p = 1.0 / np.arange(1, n_users + 1) ** 0.8
    track_p = 1.0 / np.arange(1, n_tracks + 1) ** 1.0
    keys = np.zeros(0, dtype=np.int64)
    while len(keys) < nnz:
        n = int((nnz - len(keys)) * 1.3) + 1000
        drawn = (rng.choice(n_users, n, p=user_p / user_p.sum()).astype(np.int64) * n_tracks
                 + rng.choice(n_tracks, n, p=track_p / track_p.sum()))
        keys = np.unique(np.concatenate([keys, drawn]))
    keys = rng.permutation(keys)[:nnz]
    plays = np.minimum(rng.zipf(1.8, nnz), 10_000)
    return ((keys // n_tracks).astype(np.int32), (keys % n_tracks).astype(np.int32),
            plays.astype(np.float64))


def time_per_iteration(fit, counts: list[int], name: str) -> tuple[float, float, float]:
    """(seconds per iteration, fixed seconds, RMS residual) of ``fit(iterations)``
    timed once at each of ``counts`` iterations."""
    return slope(counts, [_timed(fit, n) for n in counts], name)


def _timed(fit, iterations: int) -> float:
    start = time.perf_counter()
    fit(iterations)
    return time.perf_counter() - start


def implicit_times(users, tracks, strength, args) -> dict:
    """implicit's CPU solvers on the same confidences, all cores, BLAS single-threaded."""
    import implicit.cpu.als
    import scipy.sparse
    import threadpoolctl
    confidence = (1 + args.alpha * strength).astype(np.float32)
    matrix = scipy.sparse.csr_matrix((confidence, (users, tracks)))
    results = {}
    with threadpoolctl.threadpool_limits(1, "blas"):
        for name, use_cg in (("implicit-cg", True), ("implicit-cholesky", False)):
            def fit(iterations):
                implicit.cpu.als.AlternatingLeastSquares(
                    factors=args.rank, regularization=args.reg, alpha=1.0, use_cg=use_cg,
                    iterations=iterations, random_state=0).fit(matrix, show_progress=False)
            fit(1)  # warm up threads and caches
            results[name] = time_per_iteration(fit, args.iterations, name)
    return results


def spark_times(ratings_dir: str, variant: str, settings: list[str], args) -> dict:
    """Spark ALS per setting, in a session of this process with ``variant``'s conf."""
    from pyspark import StorageLevel
    from pyspark.sql import SparkSession
    from jobs.als import job as als
    builder = (SparkSession.builder.master(args.master).appName("als-benchmark")
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
               .config("spark.driver.memory", args.driver_memory))
    for key, value in VARIANTS[variant][0].items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    cores = spark.sparkContext.defaultParallelism
    jvm = spark.sparkContext._jvm
    blas = jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getSimpleName()
    results = {"blas": blas}
    with tempfile.TemporaryDirectory(prefix="als-bench-checkpoints-") as checkpoints:
        spark.sparkContext.setCheckpointDir(checkpoints)
        ratings = spark.read.parquet(ratings_dir)
        for name in settings:
            blocks, storage, cache = SETTINGS[name]
            blocks = cores if blocks is None else 2 * cores if blocks == "2x" else blocks
            data = ratings.persist(StorageLevel.MEMORY_AND_DISK) if cache else ratings
            if cache:
                data.count()

            def fit(iterations):
                params = als.AlsParams(rank=args.rank, reg=args.reg, alpha=args.alpha,
                                       iterations=iterations, blocks=blocks)
                tuning = als.AlsTuning(intermediate_storage=storage, cache_ratings=False)
                model = als.fit(data, params, tuning)
                for factors in (model.userFactors, model.itemFactors):
                    factors.unpersist()

            fit(1)  # JIT warm-up
            results[name] = time_per_iteration(fit, args.iterations, f"spark {variant} {name}")
            data.unpersist()
    spark.stop()
    return results


def run_variant(variant: str, ratings_dir: str, args) -> dict:
    """Spark timings of one JVM-level variant, in a child process."""
    env = {**os.environ, **VARIANTS[variant][1]}
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    command = [sys.executable, __file__, "spark", "--ratings", ratings_dir, "--variants", variant,
               "--settings", ",".join(args.settings), "--rank", str(args.rank),
               "--reg", str(args.reg), "--alpha", str(args.alpha),
               "--iterations", ",".join(map(str, args.iterations)), "--master", args.master,
               "--driver-memory", args.driver_memory]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def progress(number: int, pair: tuple[dict, dict], args) -> None:
    """One pair's seconds per iteration as soon as it is done, so that a long run that
    is stopped still says something."""
    implicit, spark = pair
    sides = [f"{name} {fit[0]:.2f}" for name, fit in implicit.items()]
    sides += [f"{variant} {name} {spark[variant][name][0]:.2f}"
              for variant in spark for name in args.settings]
    print(f"pair {number} of {args.pairs}, s/it: " + "; ".join(sides), flush=True)


def report(dataset: str, nnz: int, pairs: list[tuple[dict, dict]], args) -> None:
    """Medians over the pairs: seconds per iteration, fixed seconds and residual of each
    side, and the ratios Spark / implicit paired within each pair."""
    print(f"\n{dataset}: {nnz:,} non-zeros, rank {args.rank}, seconds per iteration (slope "
          f"over {','.join(map(str, args.iterations))} iterations; median of {len(pairs)} pairs)")

    def line(label: str, fits: list[tuple[float, float, float]]) -> str:
        per_it, fixed, residual = (np.median([f[i] for f in fits]) for i in range(3))
        return f"  {label:54s} {per_it:8.3f} s/it   fixed {fixed:6.1f} s   residual {residual:5.2f} s"

    solvers = list(pairs[0][0])
    for name in solvers:
        print(line(name, [implicit[name] for implicit, _ in pairs]))
    for variant in pairs[0][1]:
        for name in args.settings:
            label = f"spark {variant} ({pairs[0][1][variant]['blas']}) {name}"
            print(line(label, [spark[variant][name] for _, spark in pairs]))
            for solver in solvers:
                paired = [spark[variant][name][0] / implicit[solver][0] for implicit, spark in pairs]
                print(f"    Spark / {solver}: {ratios(f'{label} / {solver}', paired)}")
    sys.stdout.flush()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", nargs="?", default="main", choices=("main", "spark"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--ratings", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", action="append", choices=("hetrec", "generated"),
                        help="dataset(s) to time (default: both)")
    parser.add_argument("--nnz", type=int, default=10_000_000,
                        help="non-zeros of the generated matrix (default %(default)s)")
    parser.add_argument("--users", type=int, default=400_000,
                        help="users of the generated matrix (default %(default)s)")
    parser.add_argument("--tracks", type=int, default=100_000,
                        help="tracks of the generated matrix (default %(default)s)")
    parser.add_argument("--rank", type=int, default=32, help="factors (default %(default)s)")
    parser.add_argument("--reg", type=float, default=0.1, help="regularisation (default %(default)s)")
    parser.add_argument("--alpha", type=float, default=10.0,
                        help="confidence scale (default %(default)s)")
    parser.add_argument("--iterations", type=lambda s: [int(n) for n in s.split(",")],
                        default=[2, 4, 6, 8],
                        help="fit lengths whose times give the slope (default 2,4,6,8)")
    parser.add_argument("--pairs", type=int, default=3,
                        help="alternating runs of implicit and Spark (default %(default)s)")
    parser.add_argument("--settings", type=lambda s: s.split(","), default=list(SETTINGS),
                        help=f"Spark settings to time, of {','.join(SETTINGS)} (default: all)")
    parser.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS),
                        help=f"JVM-level variants, of {','.join(VARIANTS)} (default: all)")
    parser.add_argument("--master", default="local[*]", help="Spark master (default %(default)s)")
    parser.add_argument("--driver-memory", default="12g",
                        help="Spark driver memory (default %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "spark":
        print(json.dumps(spark_times(args.ratings, args.variants[0], args.settings, args)))
        return 0
    datasets = args.dataset or ["hetrec", "generated"]
    for dataset in datasets:
        if dataset == "hetrec" and not HETREC.exists():
            print(f"skipping hetrec: {HETREC} not found")
            continue
        users, tracks, plays = (hetrec_plays() if dataset == "hetrec" else
                                generated_plays(args.nnz, args.users, args.tracks))
        strength = np.log1p(plays).astype(np.float32)  # eps = 1
        with tempfile.TemporaryDirectory(prefix="als-bench-") as scratch:
            table = pa.table({"user_index": users, "track_index": tracks, "strength": strength})
            for part, rows in enumerate(np.array_split(np.arange(len(users)), 8)):
                pq.write_table(table.take(rows), f"{scratch}/part-{part}.parquet")
            pairs = []
            for number in range(1, args.pairs + 1):
                pairs.append((implicit_times(users, tracks, strength, args),
                              {variant: run_variant(variant, scratch, args)
                               for variant in args.variants}))
                progress(number, pairs[-1], args)
        report(dataset, len(users), pairs, args)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
