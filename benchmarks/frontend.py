"""What the pretrained front end costs: the musicnn taggers' clips per second per core,
and what a night spends on them.

    python benchmarks/frontend.py --tracks 40 --excerpt-s 30

Times every tagger (model/musicnn.py) on 3-second patches in one thread, as the head's
fitting, scoring and tagging run them, then what the pipeline does per track: a
30-second excerpt is 10 patches through both taggers, pooled (model/frontend.py
hear). Then the same tracks as shards, first heard and then read back from what was
kept beside them (frontend.heard_shard): a later night pays for new shards only. Last,
the share of a night: the front end's seconds per track against those of the rest of
a night's per-track work, from `benchmarks/nightly.py`'s stage figures when given
(--night-seconds-per-track), else only the front end's. Asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import schemas  # noqa: E402
from model import frontend, musicnn  # noqa: E402
from paired import checked  # noqa: E402
from schemas import mels as mel_values  # noqa: E402
from schemas.config import MelParams  # noqa: E402


def best_of(repeats: int, work) -> float:
    """The fastest of ``repeats`` timings of ``work()``, in seconds: the least disturbed
    by whatever else the machine does."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return checked("seconds", min(times))


def shard(path: Path, n: int, frames: int, seed: int) -> Path:
    params = MelParams().frontend()
    values = np.random.default_rng(seed).uniform(0, 3, (n, musicnn.N_MELS, frames))
    table = pa.table({"track_id": [f"t{i}" for i in range(n)], "n_mels": [musicnn.N_MELS] * n,
                      "n_frames": [frames] * n, "dtype": [params.dtype] * n,
                      "mel": mel_values.encode(list(values.astype(np.float32)), params.dtype)})
    meta = schemas.with_metadata(schemas.MEL_SHARD, params.to_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(schemas.conform(table, schemas.MEL_SHARD).replace_schema_metadata(
        meta.metadata), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=40)
    parser.add_argument("--excerpt-s", type=float, default=MelParams.excerpt_s)
    parser.add_argument("--batch", type=int, default=32, help="patches per call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--night-seconds-per-track", type=float,
                        help="a night's other per-track seconds (benchmarks/nightly.py), for "
                             "the front end's share")
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = MelParams(excerpt_s=args.excerpt_s).frontend()
    frames = 1 + params.excerpt_samples // params.hop_length
    patches = torch.rand(args.batch, musicnn.PATCH_FRAMES, musicnn.N_MELS) * 3
    print(f"one thread, {args.batch} patches of {musicnn.PATCH_FRAMES} frames per call")
    for name, net in frontend.taggers("cpu").items():
        with torch.inference_mode():
            net(patches[:2])
            seconds = best_of(args.repeats, lambda: net(patches))
        print(f"{name}: {args.batch / seconds:.1f} clips (3 s) per second per core")

    mel = torch.rand(args.tracks, musicnn.N_MELS, frames) * 3
    per_track = best_of(args.repeats, lambda: (frontend._MEMO.clear(), frontend.hear(mel))) \
        / args.tracks
    print(f"a track of {args.excerpt_s:g} s ({frames // musicnn.PATCH_FRAMES} patches, "
          f"{len(musicnn.TAGGERS)} taggers, pooled): {per_track:.3f} s per core, "
          f"{1 / per_track:.2f} tracks per second per core")

    with tempfile.TemporaryDirectory() as tmp:
        path = shard(Path(tmp) / "run" / "mels-00000-of-00001.parquet", args.tracks, frames, 0)
        frontend._MEMO.clear()
        start = time.perf_counter()
        frontend.heard_shard(path)
        first = time.perf_counter() - start
        again = best_of(args.repeats, lambda: frontend.heard_shard(path))
        print(f"a shard of {args.tracks} tracks: heard in {first:.2f} s, read back from what "
              f"was kept in {again:.3f} s ({first / again:.0f}x)")
    if args.night_seconds_per_track:
        share = per_track / (per_track + args.night_seconds_per_track)
        print(f"share of a night's per-track work (new tracks): {share:.0%}")


if __name__ == "__main__":
    main()
