"""Every catalogue track's most probable tags, from the pretrained musicnn taggers.

    python -m jobs.tags --frontend-mels DATA/mels/<tagger-input hash> \\
        --catalogue catalogue.parquet --out tags.parquet [--top-tags 5]

Both taggers (model/musicnn.py: MTT_musicnn, trained on MagnaTagATune's tags, and
MSD_musicnn, on the Million Song Dataset's last.fm tags) hear each track's tagger input,
the spectrogram job's second shard set (every finished run under --frontend-mels). A
tag's probability for a track is its mean over the track's 3-second patches; the
track's tags are the --top-tags most probable over both taggers, a tag both know
counted once at the higher probability. What the taggers heard is kept beside each
shard (model/frontend.py), so tagging again, or after the pretrained head was fitted,
only reads it.

Writes one row per catalogue track that has a tagger input (schemas.TRACK_TAGS), shard
by shard, so memory is bounded by a shard, not by the catalogue. A track without one
(its audio failed, or the spectrograms have not reached it yet) gets no row, and how
many there are is logged: the published track table shows null tags for it, "not
heard", not an empty list, which would claim the taggers heard nothing they know.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from model import frontend, musicnn
from model.tf_checkpoint import WeightsError
from schemas import cli, layout, storage
from schemas.config import TagsConfig

logger = logging.getLogger(__name__)


def shard_tags(shard: Path, wanted: set[str],
               top: int) -> tuple[list[str], list[list[tuple[str, float]]]]:
    """The ``wanted`` tracks of one tagger-input shard, each once, and their ``top``
    (tag, probability), most probable first. A shard that is not a tagger input fails
    naming it."""
    try:
        ids, probabilities = frontend.heard_tags(shard)
    except (OSError, ValueError, pa.ArrowException) as err:
        raise cli.JobError(f"{shard}: not a readable tagger input: {err}") from None
    first: dict[str, int] = {}
    for row, track in enumerate(ids):
        if track in wanted:
            first.setdefault(track, row)
    rows = list(first.values())
    return list(first), frontend.ranked_tags({name: p[rows] for name, p in probabilities.items()},
                                             top)


def tag_tracks(frontend_mels: Path, catalogue: Path, out: Path,
               top: int = TagsConfig.top_tags) -> int:
    """Write the ``top`` tags of every catalogue track with a tagger input under
    ``frontend_mels`` to ``out`` (schemas.TRACK_TAGS), each track from the first shard
    holding it; returns how many were tagged."""
    if not Path(catalogue).exists():
        raise cli.JobError(f"{catalogue}: no such catalogue")
    wanted = set(storage.read_table(catalogue, schemas.CATALOGUE).column("track_id").to_pylist())
    total = len(wanted)
    shards = layout.mel_shards(frontend_mels)
    if wanted and not shards:
        raise cli.JobError(f"{frontend_mels}: no tagger-input shards (mels-*.parquet of a "
                           "finished spectrogram run); run the spectrogram job first")
    version = frontend.version()  # loads the taggers: a weights problem is not a shard's
    schema = schemas.with_metadata(schemas.TRACK_TAGS, {
        "taggers": list(musicnn.TAGGERS), "taggers_version": version, "top_tags": top})
    progress = cli.Progress(logger, "tagger-input shards", len(shards))
    with storage.atomic_file(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for shard in shards:
            if not wanted:
                break
            ids, ranked = shard_tags(shard, wanted, top)
            wanted -= set(ids)
            writer.write_table(pa.table({
                "track_id": ids,
                "tags": pa.array([[tag for tag, _ in tags] for tags in ranked], schemas.TAGS),
                "probabilities": pa.array([[p for _, p in tags] for tags in ranked],
                                          pa.list_(pa.float32())),
                "taggers_version": [version] * len(ids)}, schema=schema))
            progress.add()
    if wanted:
        logger.warning("%d of %d catalogue tracks have no tagger input under %s, so no tags",
                       len(wanted), total, frontend_mels)
    return total - len(wanted)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.tags", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frontend-mels", required=True, type=Path,
                        help="the taggers' input: the spectrogram job's directory of tagger-input "
                             "runs (DATA/mels/<hash>), every finished run under it")
    parser.add_argument("--catalogue", required=True, type=Path,
                        help="the tracks to tag (schemas.CATALOGUE)")
    parser.add_argument("--out", required=True, type=Path,
                        help="Parquet file to write (schemas.TRACK_TAGS)")
    cli.add_settings(parser, TagsConfig)
    args = parser.parse_args(argv)
    if args.top_tags < 1:
        parser.error("--top-tags must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    args = parse_args(argv)

    def body() -> None:
        count = tag_tracks(args.frontend_mels, args.catalogue, args.out, args.top_tags)
        logger.info("tagged %d tracks -> %s", count, args.out)
    return cli.run_job(body, logger, OSError, ValueError, WeightsError)


if __name__ == "__main__":
    sys.exit(main())
