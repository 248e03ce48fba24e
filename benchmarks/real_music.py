"""Cold-start quality on real music nobody tuned for: game soundtracks from Debian packages,
reported leave-packages-out.

    python benchmarks/real_music.py --work /tmp/real-music --seeds 0 1 2

Downloads thirteen Debian packages of game music (`apt-get download`, then unpacks them),
keeps the music: every audio file of the -music packages but sound effects (folders
named sounds), and the audio under a folder named music (or Musics) in the others, one
file per content hash. Each package is a source, and the catalogue's artist. The
packages are split once into two halves (HALVES) of about 140 tracks each, and each
half is a catalogue of its own: simulated listeners prefer one or two of its sources
(about 85% of their plays), pick tracks by a Zipf-like popularity and play each a
Zipf-distributed number of times.

For each half and seed, it runs `luigi --module workflows EvaluateColdStart` on that
catalogue (a fifth of the tracks held out, stratified by source, and everything trained
without their plays) with the repository's luigi.cfg and the --models given, and prints
the evaluation table. Then, leave-packages-out: every method's figures on each half
(mean over seeds; AUC, its share of the gap from random to the source oracle, and how
often its 5 nearest warm tracks share the held-out track's source); and, both ways, the
method chosen on one half (the best mean share of the gap there) with its figures on
that half (in-sample) and on the other (held out). Rows with the artist withheld are
the audio-only figures; a method that reads no catalogue column has one row, which is
both. Last, the semi-cold tables over every run. Asserts nothing; it is not part of the
test suite.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas import layout
from schemas.config import EvaluateConfig, MelParams

REPO = Path(__file__).resolve().parent.parent

# The benchmark's thirteen packages (286 pieces), in two halves of 135 and 151 pieces:
# settings are chosen on one, reported on the other. Other catalogues stay out of it,
# to check that its figures hold.
HALVES = {"A": ("ufoai-music", "fillets-ng-data", "hyperrogue-music", "singularity-music",
                "planetblupi-music-ogg", "xmoto-data", "asc-music"),
          "B": ("wesnoth-1.16-music", "drascula-music", "warzone2100-music",
                "colobot-common-sounds", "nexuiz-music", "extremetuxracer-data")}
# What is compared by default: the pretrained taggers with each head, and the network
# trained from scratch, each with the taste classifier and alone.
MODELS = ("musicnn:ridge", "musicnn:clusters", "dieleman2014:wpe")
ORACLE = "artist oracle"  # the row's name starts so; here the artist is the source
AUDIO = (".ogg", ".opus", ".mp3", ".flac", ".wav")


def fetch(work: Path, packages: tuple[str, ...]) -> Path:
    """Download and unpack the packages under ``work`` (kept between runs); the audio in
    a game's pk3 archives (zip files) is unpacked beside them."""
    debs, unpacked = work / "debs", work / "unpacked"
    debs.mkdir(parents=True, exist_ok=True)
    unpacked.mkdir(exist_ok=True)  # dpkg-deb -x creates only the last folder
    for package in packages:
        if not list(debs.glob(f"{package}_*.deb")):
            subprocess.run(["apt-get", "download", package], cwd=debs, check=True)
        target = unpacked / package
        if not target.exists():
            deb, = debs.glob(f"{package}_*.deb")
            staging = Path(str(target) + ".tmp")
            subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], check=True)
            for archive in staging.rglob("*.pk3"):
                with zipfile.ZipFile(archive) as pk3:
                    pk3.extractall(archive.with_suffix(""), [
                        name for name in pk3.namelist() if name.lower().endswith(AUDIO)])
            os.rename(staging, target)
    return unpacked


def is_music(package: str, path: Path) -> bool:
    folders = [part.lower() for part in path.parent.parts]
    if package.endswith("-music"):
        return "sounds" not in folders
    return any(folder in ("music", "musics") for folder in folders)


def music_files(unpacked: Path, packages: tuple[str, ...]) -> list[tuple[str, Path]]:
    """(source, file) of every distinct piece of music, the first of identical files."""
    seen, found = set(), []
    for package in packages:
        for path in sorted((unpacked / package).rglob("*")):
            if path.suffix.lower() not in AUDIO or not path.is_file() \
                    or not is_music(package, path.relative_to(unpacked / package)):
                continue
            digest = hashlib.sha1(path.read_bytes()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                found.append((package, path))
    return found


def listeners(sources: list[str], n_users: int, seed: int, preference: float = 0.85,
              mean_tracks: float = 15.0) -> pa.Table:
    """Play counts of simulated listeners (schemas.PLAYS columns, track ids as indices)."""
    rng = np.random.default_rng(seed)
    names = sorted(set(sources))
    source = np.array([names.index(s) for s in sources])
    n = len(sources)
    popularity = rng.permutation(1.0 / np.arange(1, n + 1))
    rows = []
    for user in range(n_users):
        liked = rng.choice(len(names), size=rng.integers(1, 3), replace=False)
        mine = np.isin(source, liked)
        weights = popularity * np.where(mine, preference / popularity[mine].sum(),
                                        (1 - preference) / popularity[~mine].sum())
        count = int(np.clip(rng.geometric(1 / mean_tracks), 3, n // 2))
        keys = np.log(weights) + rng.gumbel(size=n)  # Gumbel top-k: draws without replacement
        for track in np.argsort(-keys)[:count]:
            rows.append((f"user{user:05d}", int(track), int(min(rng.zipf(2.2), 500))))
    users, tracks, plays = zip(*rows)
    return pa.table({"user_id": list(users), "track_id": list(tracks),
                     "plays": pa.array(plays, pa.int64())})


def prepare(work: Path, half: str, n_users: int, seed: int) -> Path:
    """A data root with catalogue.parquet and plays.parquet of one half's music."""
    packages = HALVES[half]
    files = music_files(fetch(work, packages), packages)
    ids = [hashlib.sha1(str(path).encode()).hexdigest()[:12] for _, path in files]
    data = work / f"data-{half}-{seed}"
    data.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "track_id": ids, "audio_uri": [str(path) for _, path in files],
        "title": [path.stem for _, path in files], "artist": [source for source, _ in files],
        "duration_s": pa.array([None] * len(files), pa.float32())}), data / "catalogue.parquet")
    plays = listeners([source for source, _ in files], n_users, seed)
    plays = plays.set_column(1, "track_id", pa.array([ids[i] for i in plays["track_id"].to_pylist()]))
    pq.write_table(plays, data / "plays.parquet")
    print(f"half {half}: {len(files)} tracks from {len(packages)} sources, {n_users} listeners, "
          f"{plays.num_rows} play rows -> {data}", flush=True)
    return data


def evaluate(data: Path, seed: int, models: tuple[str, ...]) -> dict:
    """Run EvaluateColdStart on ``data``; the evaluation report it wrote."""
    env = dict(os.environ, COLDSTART_DATA_ROOT=str(data),
               LUIGI_CONFIG_PATH=str(REPO / "luigi.cfg"))
    # the default excerpt of real tracks, not the demo's (its tracks last 12 s)
    subprocess.run([sys.executable, "-m", "luigi", "--module", "workflows", "EvaluateColdStart",
                    "--local-scheduler", "--EvaluateColdStart-seed", str(seed),
                    "--EvaluateColdStart-models", json.dumps(list(models)),
                    "--MelSpectrograms-excerpt-s", str(MelParams().excerpt_s)],
                   cwd=REPO, env=env, check=True)
    report = layout.DataRoot(data).outputs("backfill").newest_evaluation()
    if report is None:
        raise FileNotFoundError(f"{data}: EvaluateColdStart wrote no evaluation")
    return json.loads(report.read_text())


def figures(report: dict) -> dict[str, dict[str, float]]:
    """Per method of one evaluation: AUC, share of the gap from random to the source
    oracle, and same source @5."""
    auc = {m["method"]: m["auc"] for m in report["methods"]}
    oracle = next(value for name, value in auc.items() if name.startswith(ORACLE))
    n = report["neighbours"]
    return {m["method"]: {"auc": m["auc"], "gap": (m["auc"] - auc["random"]) / (oracle - auc["random"]),
                          "same": m.get(f"same_artist@{n}")}
            for m in report["methods"]}


def mean_figures(reports: list[dict]) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Per method: (mean, min, max) of each figure over the reports."""
    per = [figures(r) for r in reports]
    out = {}
    for name in per[0]:
        out[name] = {}
        for key in ("auc", "gap", "same"):
            values = [p[name][key] for p in per if name in p and p[name][key] is not None
                      and np.isfinite(p[name][key])]
            out[name][key] = (float(np.mean(values)), min(values), max(values)) if values else None
    return out


def cell(value: tuple[float, float, float] | None, percent: bool = False) -> str:
    if value is None:
        return "-"
    scale, unit = (100, "%") if percent else (1, "")
    mean, low, high = (v * scale for v in value)
    return f"{mean:.{0 if percent else 3}f}{unit} ({low:.{0 if percent else 3}f}-{high:.{0 if percent else 3}f})"


def print_evaluation(report: dict, title: str) -> None:
    k = report["k"]
    keys = ("auc", f"map@{k}", f"recall@{report['recall_k']}", "cosine_distance",
            f"same_artist@{report['neighbours']}")
    print(f"\n{title}: {report['heldout_tracks']} held-out tracks")
    print("| method | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for m in report["methods"]:
        print(f"| {m['method']} | " + " | ".join(
            "-" if m.get(key) is None else f"{m[key]:.3f}" for key in keys) + " |")


def choosable(name: str) -> bool:
    """A method a setting may pick: not a reference (random, oracle, upper bound)."""
    return not (name == "random" or name.startswith(ORACLE) or name.startswith("upper bound"))


def print_leave_packages_out(by_half: dict[str, list[dict]]) -> None:
    means = {half: mean_figures(reports) for half, reports in by_half.items()}
    halves = list(means)
    seeds = len(next(iter(by_half.values())))
    print(f"\nEvery method on each half, mean (min-max) over {seeds} seeds: AUC, share of the "
          "random -> source-oracle gap, 5 nearest warm tracks of the same source")
    print("| method | " + " | ".join(f"{h}: AUC | {h}: gap | {h}: same source @5"
                                    for h in halves) + " |")
    print("|---|" + "---|---|---|" * len(halves))
    for name in means[halves[0]]:
        cells = []
        for half in halves:
            f = means[half].get(name, {})
            cells += [cell(f.get("auc")), cell(f.get("gap"), True), cell(f.get("same"))]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nLeave-packages-out: the method with the best mean gap share on one half, "
          "reported on the other")
    print("| chosen on | method | in-sample AUC | in-sample gap | in-sample same @5 | "
          "held-out AUC | held-out gap | held-out same @5 |")
    print("|---|---|---|---|---|---|---|---|")
    for tune, test in ((halves[0], halves[1]), (halves[1], halves[0])):
        options = {name: f for name, f in means[tune].items()
                   if choosable(name) and f["gap"] is not None and name in means[test]}
        best = max(options, key=lambda name: options[name]["gap"][0])
        mine, theirs = means[tune][best], means[test][best]
        print(f"| {tune} | {best} | {cell(mine['auc'])} | {cell(mine['gap'], True)} | "
              f"{cell(mine['same'])} | {cell(theirs['auc'])} | {cell(theirs['gap'], True)} | "
              f"{cell(theirs['same'])} |")


def print_semicold(reports: list[dict | None], what: str) -> None:
    """A semi-cold table: AUC / mAP@k per number of revealed plays, mean over runs, and
    per run how far the blend's AUC is above the better of ALS alone and audio alone."""
    k = EvaluateConfig.k
    buckets = [{b["revealed"]: b for b in r["buckets"]} for r in reports if r]
    if not buckets:
        return
    print(f"\nSemi-cold tracks, {what}, mean AUC / mAP@{k} over {len(buckets)} runs")
    print("| revealed plays | ALS alone | audio alone | blend | blend - better, per run |")
    print("|---|---|---|---|---|")
    for revealed in sorted(set.intersection(*(set(b) for b in buckets))):
        rows = [b[revealed] for b in buckets]
        cells = [" / ".join(f"{np.mean([row[way][key] for row in rows]):.3f}"
                            for key in ("auc", f"map@{k}")) for way in ("als", "audio", "blend")]
        gains = " ".join(f"{row['blend']['auc'] - max(row['als']['auc'], row['audio']['auc']):+.4f}"
                         for row in rows)
        print(f"| {revealed} | " + " | ".join(cells) + f" | {gains} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True,
                        help="where packages, data roots and runs go (kept between runs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--users", type=int, default=1500)
    parser.add_argument("--models", nargs="+", default=list(MODELS),
                        help="the models compared, as the workflow's specs (musicnn:ridge, "
                             "dieleman2014:wpe, dieleman2014:wpe:meta, ...)")
    parser.add_argument("--halves", nargs="+", default=list(HALVES), choices=list(HALVES))
    parser.add_argument("--prepare-only", action="store_true",
                        help="make the data roots and stop")
    args = parser.parse_args()
    roots = {(half, seed): prepare(args.work.resolve(), half, args.users, seed)
             for half in args.halves for seed in args.seeds}
    if args.prepare_only:
        return
    by_half: dict[str, list[dict]] = {half: [] for half in args.halves}
    for (half, seed), data in roots.items():
        by_half[half].append(evaluate(data, seed, tuple(args.models)))
        print_evaluation(by_half[half][-1], f"half {half}, seed {seed}")
    if len(by_half) == 2:
        print_leave_packages_out(by_half)
    print_semicold([r.get("semi_cold") for reports in by_half.values() for r in reports],
                   "as scoring serves them")


if __name__ == "__main__":
    main()
