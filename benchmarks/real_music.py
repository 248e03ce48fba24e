"""Cold-start quality on real music: game soundtracks from Debian packages.

    python benchmarks/real_music.py --work /tmp/real-music --seeds 0 1 2

Downloads seven Debian packages of game music (`apt-get download`, then unpacks them;
`--more` adds six), keeps the music: every audio file of the -music packages but sound
effects (folders named sounds), and the audio under a folder named music (or Musics) in
the others, one file per content hash. Each package is a source, and the catalogue's
artist. Simulated listeners prefer one or two sources (about 85% of their plays), pick
tracks by a Zipf-like popularity and play each a Zipf-distributed number of times.

Then, for each seed, it runs `luigi --module workflows EvaluateColdStart` on that data
(a fifth of the tracks held out, stratified by source, and everything trained without
their plays) with the repository's luigi.cfg, and prints the evaluation table and how
often each method's 5 nearest warm tracks share the held-out track's source; last, the
semi-cold tables over the seeds: the blend as scoring serves it (the evaluation's), and
the validated search that chose those settings (benchmarks/semicold_search.py). Asserts
nothing; it is not part of the test suite.
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

import semicold_search
from schemas import layout
from schemas.config import EvaluateConfig, MelParams

REPO = Path(__file__).resolve().parent.parent

PACKAGES = ("singularity-music", "hyperrogue-music", "warzone2100-music", "colobot-common-sounds",
            "fillets-ng-data", "extremetuxracer-data", "xmoto-data")
# --more: six more sources, 167 more pieces, so that a fifth held out is about 57 tracks
MORE = ("wesnoth-1.16-music", "ufoai-music", "nexuiz-music", "drascula-music",
        "planetblupi-music-ogg", "asc-music")
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


def prepare(work: Path, packages: tuple[str, ...], n_users: int, seed: int) -> Path:
    """A data root with catalogue.parquet and plays.parquet of the real music."""
    files = music_files(fetch(work, packages), packages)
    ids = [hashlib.sha1(str(path).encode()).hexdigest()[:12] for _, path in files]
    data = work / f"data-{seed}"
    data.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "track_id": ids, "audio_uri": [str(path) for _, path in files],
        "title": [path.stem for _, path in files], "artist": [source for source, _ in files],
        "duration_s": pa.array([None] * len(files), pa.float32())}), data / "catalogue.parquet")
    plays = listeners([source for source, _ in files], n_users, seed)
    plays = plays.set_column(1, "track_id", pa.array([ids[i] for i in plays["track_id"].to_pylist()]))
    pq.write_table(plays, data / "plays.parquet")
    print(f"{len(files)} tracks from {len(packages)} sources, {n_users} listeners, "
          f"{plays.num_rows} play rows -> {data}", flush=True)
    return data


def evaluate(data: Path, seed: int) -> dict:
    """Run EvaluateColdStart on ``data``; the evaluation report it wrote."""
    env = dict(os.environ, COLDSTART_DATA_ROOT=str(data),
               LUIGI_CONFIG_PATH=str(REPO / "luigi.cfg"))
    subprocess.run([sys.executable, "-m", "luigi", "--module", "workflows", "EvaluateColdStart",
                    "--local-scheduler", "--EvaluateColdStart-seed", str(seed)],
                   cwd=REPO, env=env, check=True)
    report = layout.DataRoot(data).outputs("backfill").newest_evaluation()
    if report is None:
        raise FileNotFoundError(f"{data}: EvaluateColdStart wrote no evaluation")
    return json.loads(report.read_text())


def print_tables(reports: list[dict]) -> None:
    methods = [m["method"] for m in reports[0]["methods"]]
    k = reports[0]["k"]
    keys = ("auc", f"map@{k}", f"recall@{reports[0]['recall_k']}", "cosine_distance",
            "same_artist@5")
    print(f"\nMean (min-max) over {len(reports)} seeds; held-out tracks per seed: "
          f"{[r['heldout_tracks'] for r in reports]}")
    print("| method | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name in methods:
        cells = []
        for key in keys:
            values = [m[key] for r in reports for m in r["methods"] if m["method"] == name
                      and m.get(key) is not None]
            cells.append(f"{np.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"
                         if values else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")


def validated_semicold(data: Path, report: dict, seed: int) -> dict | None:
    """The validated semi-cold search on the evaluation's ALS run and audio model."""
    if "semi_cold" not in report:
        return None
    root = layout.DataRoot(data)
    # the chain runs with the repository's luigi.cfg: the default mel settings (beside
    # their directory, the tagger's input has its own)
    mels = layout.params_dir(root.mels, MelParams())
    return semicold_search.run(root.outputs("backfill").newest_als(heldout=True), mels,
                               Path(report["semi_cold"]["model"]), seed)


def print_semicold(reports: list[dict | None], what: str) -> None:
    """A semi-cold table: AUC / mAP@k per number of revealed plays, mean over seeds, and
    per seed how far the blend's AUC is above the better of ALS alone and audio alone."""
    k = EvaluateConfig.k
    buckets = [{b["revealed"]: b for b in r["buckets"]} for r in reports if r]
    if not buckets:
        return
    print(f"\nSemi-cold tracks, {what}, mean AUC / mAP@{k} over {len(buckets)} seeds")
    print("| revealed plays | ALS alone | audio alone | blend | blend - better, per seed |")
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
    parser.add_argument("--more", action="store_true",
                        help=f"add {len(MORE)} more packages (give it a --work of its own)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="make the data roots and stop")
    args = parser.parse_args()
    packages = PACKAGES + MORE if args.more else PACKAGES
    roots = [prepare(args.work.resolve(), packages, args.users, seed) for seed in args.seeds]
    if args.prepare_only:
        return
    reports, searches = [], []
    for seed, data in zip(args.seeds, roots):
        reports.append(evaluate(data, seed))
        searches.append(validated_semicold(data, reports[-1], seed))
        print_tables(reports[-1:])
    print_tables(reports)
    print_semicold([r.get("semi_cold") for r in reports], "as scoring serves them")
    print_semicold(searches, "the validated search (min plays / lambda chosen per test fold)")


if __name__ == "__main__":
    main()
