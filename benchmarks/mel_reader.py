"""The training reader's throughput per core, by shard format; float16's precision.

    python benchmarks/mel_reader.py [--tracks 600] [--pairs 3] [--real DIR]

Writes the same 30-second excerpts (128 x 1292 frames) as mel shards in each format:
``list-f32``, the float32 list column shards had before MelParams.dtype; ``f32`` and
``f16``, byte columns as the spectrogram job writes them (its own Parquet sink:
row groups of --row-group-mb, no codec); and ``f16-lz4`` and ``f16-zstd``, the f16
shards with those codecs. Each is then read through the training reader
(model.data.ShardStream: batches of 64, 256-frame crops as training takes them, and
whole excerpts) on one thread, with the files in the page cache, formats taking turns
pair after pair. Prints, per format, the size on disk, clips/s and GB/s of stored
values per CPU second (the process's CPU time, all threads), and its ratio to
list-f32 (median and range over the pairs).

The excerpts are synthetic unless --real names a directory of real mel shards (any
format; a params directory or a run), whose excerpts are used, repeated to --tracks;
codec sizes mean something only then. With --real it also prints what float16 loses
against float32 on those values. Asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import paired  # benchmarks/paired.py, beside this script
from jobs.spectrograms.pipeline import ParquetTableSink, mel_table
from model.data import ShardStream, mel_array, plan_pieces, read_mels
from schemas import factors_column, layout
from schemas.config import MelParams, SpectrogramOptions

FORMATS = ("list-f32", "f32", "f16", "f16-lz4", "f16-zstd")


def source(real: Path | None, tracks: int, frames: int) -> np.ndarray:
    """(tracks, 128, frames) float32: real excerpts repeated, or normal noise."""
    if real is None:
        return np.random.default_rng(0).normal(size=(tracks, 128, frames)).astype(np.float32)
    excerpts = mel_array(read_mels(layout.mel_shards(real) or sorted(real.glob("mels-*.parquet"))))
    return excerpts[np.arange(tracks) % len(excerpts)]


def write(path: Path, values: np.ndarray, form: str, row_group_mb: float) -> None:
    """``values`` as one shard of format ``form``, in row groups of about row_group_mb."""
    dtype = "float32" if form.endswith("f32") else "float16"
    per_group = max(1, int(row_group_mb * 2**20 // (values[0].size * np.dtype(dtype).itemsize)))
    rows = [{"track_id": f"t{i:07d}", "n_mels": v.shape[0], "n_frames": v.shape[1],
             "dtype": dtype, "mel": v.astype(dtype).ravel()} for i, v in enumerate(values)]
    tables = [mel_table(rows[i:i + per_group]) for i in range(0, len(rows), per_group)]
    if form == "list-f32":
        tables = [t.drop_columns(["dtype", "mel"]).append_column(
            "mel", factors_column(values[i * per_group:i * per_group + t.num_rows]
                                  .reshape(t.num_rows, -1))) for i, t in enumerate(tables)]
        pq.write_table(pa.concat_tables(tables), path, row_group_size=per_group,
                       compression="none", use_dictionary=["track_id"])
    elif form in ("f32", "f16"):  # the job's own writer
        sink = ParquetTableSink(str(path.with_suffix("")), tables[0].schema)
        handle = sink.open(str(path))
        for table in tables:
            sink.write_record(handle, table)
        sink.close(handle)
    else:
        pq.write_table(pa.concat_tables(tables), path, row_group_size=per_group,
                       compression=form.split("-")[1], use_dictionary=["track_id", "dtype"])


def read(path: Path, tracks: int, crop: int | None) -> tuple[int, float]:
    """Stream every excerpt of ``path`` as training does; (clips, CPU seconds)."""
    index = {f"t{i:07d}": i for i in range(tracks)}
    stream = ShardStream(plan_pieces([path], 1), index, np.zeros((tracks, 32), np.float32),
                         validation=False, val_fraction=0.0, crop_frames=crop, batch_size=64)
    clips, started = 0, time.process_time()
    for mel, _, _ in stream:
        clips += len(mel)
    return clips, time.process_time() - started


def precision(values: np.ndarray) -> None:
    error = np.abs(values.astype(np.float16).astype(np.float32) - values)
    print(f"float16 against float32 on {len(values)} real excerpts: values {values.min():.2f} "
          f"to {values.max():.2f} (std {values.std():.2f}); absolute error max {error.max():.4f}, "
          f"mean {error.mean():.5f}, mean / std {error.mean() / values.std():.1e}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=600)
    parser.add_argument("--frames", type=int, default=1292, help="frames per excerpt (1292 = 30 s)")
    parser.add_argument("--crop-frames", type=int, default=256)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--row-group-mb", type=float, default=SpectrogramOptions.row_group_mb)
    parser.add_argument("--real", type=Path, help="a directory of real mel shards")
    parser.add_argument("--work", type=Path, help="where to write the shards (default: a temporary directory)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    values = source(args.real, args.tracks, args.frames)
    if args.real is not None:
        precision(values)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        paths = {form: Path(tmp) / f"{form}.parquet" for form in FORMATS}
        for form, path in paths.items():
            write(path, values, form, args.row_group_mb)
            path.read_bytes()  # into the page cache
        del values
        shape = f"{args.tracks} excerpts of 128 x {args.frames}"
        print(f"{shape}; row groups of {args.row_group_mb} MiB; one thread; "
              f"MelParams default dtype {MelParams.dtype}")
        for crop in (args.crop_frames, None):
            rates: dict[str, list[float]] = {form: [] for form in FORMATS}
            for pair in range(args.pairs):
                for form in FORMATS if pair % 2 == 0 else FORMATS[::-1]:
                    clips, seconds = read(paths[form], args.tracks, crop)
                    rates[form].append(paired.checked(f"{form} clips per CPU second", clips / seconds))
            print(f"\nreading {'crops of %d frames' % crop if crop else 'whole excerpts'}:")
            print(f"{'format':10s} {'MiB':>7s} {'clips/s/core':>13s} {'GB/s/core':>10s}  vs list-f32")
            for form in FORMATS:
                size = os.path.getsize(paths[form])
                rate = float(np.median(rates[form]))
                stored = size / args.tracks * rate / 1e9
                vs = paired.ratios(f"{form} / list-f32", [a / b for a, b in
                                                          zip(rates[form], rates["list-f32"])])
                print(f"{form:10s} {size / 2**20:7.0f} {rate:13.0f} {stored:10.2f}  {vs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(paired.run(main))
