"""Convert finished spectrograms to another dtype, without decoding any audio again.

    python -m jobs.spectrograms.migrate --mels data/mels [--dtype float16]

Every parameter directory under --mels whose spectrograms are stored in another
dtype (float32: every directory written before MelParams.dtype existed) is copied to
the directory of the same parameters with --dtype. Each published run becomes a run
of the same name there, its shards converted one row group at a time; its dead
letters and the table of failing tracks come along with the new parameters, so the
next run of the spectrogram job finds every track done and retries no failure early.
Runs already there are left alone, so it can be run again. The source directories
are not touched: remove them once nothing reads them.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from jobs.spectrograms.pipeline import mel_schema, parquet_writer
from schemas import cli, layout, mels, storage
from schemas.config import MEL_DTYPES, MelParams

logger = logging.getLogger(__name__)


def convert_shard(source: Path, target: Path, params: MelParams) -> int:
    """``source`` as a shard of ``params`` (row groups kept); the rows written."""
    reader = pq.ParquetFile(source)
    schema = mel_schema(params)
    rows = 0
    with parquet_writer(target, schema) as writer:
        for group in range(reader.metadata.num_row_groups):
            table = mels.conform(reader.read_row_group(group))
            values = list(mels.values(table)) if table.num_rows else []
            converted = mels.with_values(table, values, params.dtype)
            writer.write_table(converted.cast(schema), row_group_size=max(1, table.num_rows))
            rows += table.num_rows
    return rows


def with_params(source: Path, target: Path, schema: pa.Schema, params: MelParams) -> None:
    """A copy of the table ``source`` carrying ``params``."""
    storage.write_table(pq.read_table(source), target, schema, params.to_dict())


def migrate_dir(source: Path, mels_root: Path, dtype: str) -> Path | None:
    """Copy one parameter directory's published runs in ``dtype``; the new directory,
    or None when ``source`` holds spectrograms of ``dtype`` already or none at all."""
    shards = layout.mel_shards(source)
    if not shards:
        return None
    params = MelParams.from_dict(schemas.params_of(pq.read_schema(shards[0])))
    if params.dtype == dtype or params.params_hash() != source.name:
        return None
    wanted = MelParams.from_dict({**params.to_dict(), "dtype": dtype})
    target = layout.params_dir(mels_root, wanted)
    with storage.exclusive(layout.params_lock(mels_root, wanted)):
        runs: dict[Path, list[Path]] = {}
        for shard in shards:
            runs.setdefault(shard.parent, []).append(shard)
        for run, run_shards in runs.items():
            if (target / run.name).exists():
                logger.info("%s: already there, left alone", target / run.name)
                continue
            with storage.atomic_dir(target / run.name) as tmp:
                rows = sum(convert_shard(shard, tmp / shard.name, wanted) for shard in run_shards)
                for dead in layout.dead_letter_files(run):
                    with_params(dead, tmp / dead.name, schemas.DEAD_LETTERS, wanted)
            logger.info("%s: %d spectrograms as %s in %s", run, rows, dtype, target / run.name)
        history = layout.dead_letter_history(source)
        if history.exists() and not layout.dead_letter_history(target).exists():
            with_params(history, layout.dead_letter_history(target),
                        schemas.DEAD_LETTER_HISTORY, wanted)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mels", type=Path, required=True,
                        help="the spectrograms' root directory (the job's --out)")
    parser.add_argument("--dtype", choices=MEL_DTYPES, default=MelParams.dtype,
                        help="the dtype to convert to. Default: %(default)s.")
    args = parser.parse_args(argv)
    cli.setup_logging()

    def body() -> int:
        if not args.mels.is_dir():
            raise cli.JobError(f"--mels {args.mels}: no such directory")
        done = [target for source in sorted(args.mels.glob("[!.]*")) if source.is_dir()
                for target in [migrate_dir(source, args.mels, args.dtype)] if target]
        logger.info("%d parameter directories converted to %s", len(done), args.dtype)
        return cli.OK
    return cli.run_job(body, logger)


if __name__ == "__main__":
    raise SystemExit(main())
