"""Stage 2: catalogue audio -> log-mel spectrogram Parquet shards (Apache Beam).

Reads the catalogue (schemas.CATALOGUE), decodes the middle excerpt of every track
not yet done for the same mel parameters, computes its log-mel spectrogram and writes

    <out>/<params_hash>/<run_id>/mels-*.parquet          schemas.MEL_SHARD
    <out>/<params_hash>/<run_id>/dead_letters-*.parquet  schemas.DEAD_LETTERS

both with the mel parameters in their schema metadata. The run directory appears
only once the pipeline has succeeded. The job exits non-zero when the fraction of
tracks that failed exceeds --max-bad-fraction; its outputs are then kept under
<run_id>.rejected-<time> instead, so a rerun only retries the tracks that failed.

Incremental: a track is skipped when a spectrogram for it exists in an earlier run
with the same parameters, and also when a published (not rejected) run already
sent the same track id and audio URI to the dead letters (--retry-dead-letters
tries those again). Audio URIs are local paths or anything fsspec opens.

Runs on Beam's local FnApiRunner (the engine behind DirectRunner, pinned so that
Beam does not try to download the Prism runner) with one worker per CPU, each
decoding in its own child process; any other Beam pipeline option
(--runner=DataflowRunner, --runner=FlinkRunner, ...) is passed through. --out must
be a local or mounted filesystem: the run directory is published with an atomic rename.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filebasedsink import FileBasedSink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

import schemas
from jobs import storage
from jobs.mel import (MELS_PREFIX, PAD_MODES, DecodeError, IsolatedDecoder, MelParams,
                      SystemicError, check_environment, decode_excerpt, is_systemic, log_mel,
                      mel_shards)

logger = logging.getLogger(__name__)

DEAD_LETTERS = "dead_letters"
DEAD_LETTERS_PREFIX = "dead_letters"
SUFFIX = ".parquet"
# Runs set aside under <run_id>.<state>-<time>: rejected (too many failures) or
# pending (the job stopped between finishing and deciding).
_SET_ASIDE = re.compile(r"\.(pending|rejected)-\d{8}T\d{6}$")
# Beam counters of the job, read back after the run.
COUNTERS = "spectrograms"


class MelOptions(PipelineOptions):
    """Options of the spectrogram job; every other flag goes to Beam."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        defaults = MelParams()
        parser.add_argument(
            "--catalogue",
            help="Catalogue Parquet file, directory or glob (schemas.CATALOGUE: track_id, "
                 "audio_uri, ...). Required.")
        parser.add_argument(
            "--out",
            help="Root directory of the spectrograms; the run is written to "
                 "<out>/<params_hash>/<run_id>/. Local or mounted filesystem. Required.")
        parser.add_argument(
            "--run-id", dest="run_id", default=None,
            help="Name of this run's directory; must not exist yet. "
                 "Default: the UTC time, e.g. 20240131T120000Z.")
        parser.add_argument(
            "--excerpt-s", dest="excerpt_s", type=float, default=defaults.excerpt_s,
            help="Seconds of audio taken from the middle of each track; 0 keeps whole "
                 "tracks. Default: %(default)s.")
        parser.add_argument(
            "--sample-rate", dest="sample_rate", type=int, default=defaults.sample_rate,
            help="Sample rate (Hz) audio is resampled to. Default: %(default)s.")
        parser.add_argument(
            "--n-fft", dest="n_fft", type=int, default=defaults.n_fft,
            help="STFT window length in samples. Default: %(default)s.")
        parser.add_argument(
            "--hop-length", dest="hop_length", type=int, default=defaults.hop_length,
            help="STFT hop in samples (one spectrogram frame per hop). Default: %(default)s.")
        parser.add_argument(
            "--n-mels", dest="n_mels", type=int, default=defaults.n_mels,
            help="Number of mel bands. Default: %(default)s.")
        parser.add_argument(
            "--log-offset", dest="log_offset", type=float, default=defaults.log_offset,
            help="Spectrograms are log(mel power + offset). Default: %(default)s.")
        parser.add_argument(
            "--pad", default=defaults.pad, choices=PAD_MODES,
            help="What happens to tracks shorter than the excerpt: zeros appends silence, "
                 "wrap loops the audio, none keeps them short (fewer frames), reject sends "
                 "them to the dead letters. Default: %(default)s.")
        parser.add_argument(
            "--min-duration-s", dest="min_duration_s", type=float, default=1.0,
            help="Tracks with less audio than this are dead letters ('too short'). "
                 "Default: %(default)s.")
        parser.add_argument(
            "--max-duration-s", dest="max_duration_s", type=float, default=3 * 3600.0,
            help="Tracks longer than this many seconds are dead letters ('too long'), "
                 "whether the container says so or decoding finds it; 0 for no limit. "
                 "Default: %(default)s.")
        parser.add_argument(
            "--max-file-mb", dest="max_file_mb", type=float, default=1024.0,
            help="Audio files larger than this many MiB are dead letters ('too large'); "
                 "0 for no limit. Default: %(default)s.")
        parser.add_argument(
            "--decode-timeout-s", dest="decode_timeout_s", type=float, default=120.0,
            help="A track whose decoding takes longer is a dead letter. Default: %(default)s.")
        parser.add_argument(
            "--no-isolate-decoding", dest="isolate_decoding", action="store_false",
            default=True,
            help="Decode in the worker process itself instead of a child process. Faster "
                 "to start, but a crash in FFmpeg then kills the worker and the run.")
        parser.add_argument(
            "--torch-threads", dest="torch_threads", type=int, default=1,
            help="Threads torch may use for the mel transform in each worker; 0 leaves "
                 "torch's default (one per core). Default: %(default)s.")
        parser.add_argument(
            "--max-bad-fraction", dest="max_bad_fraction", type=float, default=0.05,
            help="Fail (exit 1) when more than this fraction of the tracks processed "
                 "become dead letters; outputs are kept. Default: %(default)s.")
        parser.add_argument(
            "--retry-dead-letters", dest="retry_dead_letters", action="store_true",
            default=False,
            help="Also retry tracks that a published earlier run sent to the dead letters "
                 "with the same audio URI (by default they are skipped; tracks of rejected "
                 "runs are always retried).")
        parser.add_argument(
            "--row-group-mb", dest="row_group_mb", type=float, default=32.0,
            help="Approximate size of a Parquet row group of spectrograms, in MiB "
                 "(readers load one row group at a time). Default: %(default)s.")


def mel_params(options: PipelineOptions) -> MelParams:
    """The MelParams the options describe."""
    mel_options = options.view_as(MelOptions)
    return MelParams(**{field.name: getattr(mel_options, field.name)
                        for field in dataclasses.fields(MelParams)})


def mel_schema(params: MelParams) -> pa.Schema:
    return schemas.with_metadata(schemas.MEL_SHARD, params.to_dict())


def dead_letter_schema(params: MelParams) -> pa.Schema:
    return schemas.with_metadata(schemas.DEAD_LETTERS, params.to_dict())


# -- Output layout ------------------------------------------------------------------

def params_dir(out: str | os.PathLike, params: MelParams) -> Path:
    """Directory holding every run made with ``params``: <out>/<params_hash>."""
    return Path(out) / params.params_hash()


def run_dir(out: str | os.PathLike, params: MelParams, run_id: str) -> Path:
    """Directory of one finished run: <out>/<params_hash>/<run_id>."""
    if not run_id or run_id.startswith(".") or re.search(r"[/\\]", run_id):
        raise ValueError(f"run id {run_id!r} must be non-empty, without slashes, "
                         "and not start with '.'")
    return params_dir(out, params) / run_id


def dead_letter_files(run_dir: str | os.PathLike) -> list[Path]:
    return sorted(Path(run_dir).glob(f"{DEAD_LETTERS_PREFIX}-*{SUFFIX}"))


def final_dead_letter_files(params_dir: str | os.PathLike) -> list[Path]:
    """Dead letters of the published runs under ``params_dir``: failures taken as final.

    Runs set aside as rejected or pending, and runs still being written, are left out.
    """
    runs = [path for path in sorted(Path(params_dir).glob("[!.]*"))
            if path.is_dir() and not _SET_ASIDE.search(path.name)]
    return [path for run in runs for path in dead_letter_files(run)]


def existing_track_ids(params_dir: str | os.PathLike) -> set[str]:
    """Track ids that already have a spectrogram in a finished run under ``params_dir``.

    ``params_dir`` is <out>/<params_hash>; see :func:`jobs.mel.mel_shards`.
    """
    done: set[str] = set()
    for shard in mel_shards(params_dir):
        done.update(pq.read_table(shard, columns=["track_id"]).column(0).to_pylist())
    return done


def error_kind(error: str, audio_uri: str | None) -> str:
    """A dead letter's error without its URI and figures: what groups like errors."""
    if audio_uri and error.startswith(f"{audio_uri}: "):
        error = error[len(audio_uri) + 2:]
    return re.sub(r"\d+(\.\d+)?", "N", error.split(": ", 1)[0])


def frequent_errors(paths: Iterable[Path], top: int = 3) -> list[tuple[str, int]]:
    """The ``top`` most frequent error kinds of the dead-letter files, with counts."""
    kinds = collections.Counter()
    for path in paths:
        table = pq.read_table(path, columns=["audio_uri", "error"]).to_pydict()
        kinds.update(map(error_kind, table["error"], table["audio_uri"]))
    return kinds.most_common(top)


def _count_rows(paths: Iterable[Path]) -> int:
    return sum(pq.ParquetFile(path).metadata.num_rows for path in paths)


# -- Pipeline graph -------------------------------------------------------------------

def _dead_letter(row: dict, stage: str, error: object) -> dict:
    return {"track_id": row.get("track_id"), "audio_uri": row.get("audio_uri"),
            "stage": stage, "error": str(error)}


class PickOnePerTrack(beam.DoFn):
    """(track_id, {"rows", "done", "failed"}) -> the catalogue row to process, if any.

    rows: the catalogue rows with this track id; done: not empty when the track
    already has a spectrogram; failed: audio URIs that a published earlier run sent
    to the dead letters for it. A done track, or one whose chosen URI failed before
    (unless ``retry_dead_letters``), is skipped and counted. Duplicated track ids
    keep the row with the smallest audio_uri (rows without a URI last); the others,
    and rows without a track id or audio URI, go to the dead letters (stage
    "catalogue").
    """

    def __init__(self, retry_dead_letters: bool = False) -> None:
        self.retry_dead_letters = retry_dead_letters
        self.catalogue_rows = Metrics.counter(COUNTERS, "catalogue_rows")
        self.skipped_done = Metrics.counter(COUNTERS, "skipped_done")
        self.skipped_failed = Metrics.counter(COUNTERS, "skipped_failed")

    def process(self, keyed: tuple[str | None, dict[str, Iterable]]) -> Iterator:
        track_id, joined = keyed
        rows = sorted(joined["rows"], key=lambda row: (not row.get("audio_uri"),
                                                       row.get("audio_uri") or ""))
        if not rows:  # known from earlier runs, gone from the catalogue
            return
        self.catalogue_rows.inc(len(rows))
        failed = set() if self.retry_dead_letters else set(joined["failed"])
        if not track_id:
            for row in rows:
                if row.get("audio_uri") in failed:
                    self.skipped_failed.inc()
                    continue
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTERS, _dead_letter(row, "catalogue", "missing track_id"))
            return
        if any(True for _ in joined["done"]):
            self.skipped_done.inc()
            return
        first, *duplicates = rows
        if first.get("audio_uri") in failed:
            self.skipped_failed.inc()
            return
        for row in duplicates:
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, _dead_letter(
                row, "catalogue", f"duplicate track_id; kept {first.get('audio_uri')}"))
        if not first.get("audio_uri"):
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTERS, _dead_letter(first, "catalogue", "missing audio_uri"))
            return
        yield first


class DecodeAudio(beam.DoFn):
    """Catalogue row -> (row, samples: (n,) float32 mono); failures -> dead letters.

    With ``isolate`` decoding runs in a child process (:class:`IsolatedDecoder`),
    so that a crash in FFmpeg costs one track, not the worker. ``decode`` is the
    function that decodes (decode_excerpt's signature); tests replace it.
    """

    def __init__(self, params: MelParams, *, isolate: bool = True, timeout_s: float = 120.0,
                 min_duration_s: float = 0.0, max_bytes: int | None = None,
                 max_duration_s: float | None = None,
                 decode: Callable[..., np.ndarray] = decode_excerpt) -> None:
        self.params = params
        self.isolate = isolate
        self.timeout_s = timeout_s
        self.limits = {"min_duration_s": min_duration_s, "max_bytes": max_bytes,
                       "max_duration_s": max_duration_s}
        self.decode = decode
        self._decode = None

    def setup(self) -> None:
        if self.isolate:
            self._decode = IsolatedDecoder(self.params, timeout_s=self.timeout_s,
                                           decode=self.decode, **self.limits)
        else:
            self._decode = functools.partial(self.decode, params=self.params, **self.limits)

    def process(self, row: dict) -> Iterator:
        try:
            samples = self._decode(row["audio_uri"])
        except Exception as err:  # one bad file must never fail the bundle...
            if is_systemic(err):  # ...but a broken environment must stop the job
                raise
            message = err if isinstance(err, DecodeError) else f"{type(err).__name__}: {err}"
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, _dead_letter(row, "decode", message))
            return
        yield row, samples

    def teardown(self) -> None:
        if isinstance(self._decode, IsolatedDecoder):
            self._decode.close()


class ComputeLogMel(beam.DoFn):
    """(row, samples) -> schemas.MEL_SHARD row, mel flattened; failures -> dead letters."""

    def __init__(self, params: MelParams, *, torch_threads: int = 1) -> None:
        self.params = params
        self.torch_threads = torch_threads

    def setup(self) -> None:
        if self.torch_threads > 0:
            import torch

            # Workers are the parallelism; several OpenMP pools sharing the cores
            # spin against each other and make each transform many times slower.
            torch.set_num_threads(self.torch_threads)

    def process(self, element: tuple[dict, np.ndarray]) -> Iterator:
        row, samples = element
        try:
            mel = log_mel(samples, self.params)
            if not np.isfinite(mel).all():
                raise ValueError("spectrogram has non-finite values")
        except Exception as err:
            if is_systemic(err):
                raise
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTERS, _dead_letter(row, "mel", f"{type(err).__name__}: {err}"))
            return
        yield {"track_id": row["track_id"], "n_mels": mel.shape[0], "n_frames": mel.shape[1],
               "mel": mel.reshape(-1)}


@dataclasses.dataclass(frozen=True)
class MelOutputs:
    mels: beam.PCollection          # schemas.MEL_SHARD rows, "mel" a flat float32 ndarray
    dead_letters: beam.PCollection  # schemas.DEAD_LETTERS rows


def build(rows: beam.PCollection, options: PipelineOptions,
          done: beam.PCollection | None = None,
          failed: beam.PCollection | None = None) -> MelOutputs:
    """Spectrograms of catalogue ``rows`` (dicts with track_id and audio_uri).

    done: track ids that already have spectrograms; they are skipped. failed:
    dead-letter rows (dicts with track_id and audio_uri) of earlier published runs;
    tracks whose audio_uri is among them are skipped unless --retry-dead-letters.
    Grouping by track id joins the three (nothing is held in memory whole),
    removes duplicates and spreads the tracks over the workers.
    """
    mel_options = options.view_as(MelOptions)
    params = mel_params(options)
    if done is None:
        done = rows.pipeline | "NoEarlierSpectrograms" >> beam.Create([])
    if failed is None:
        failed = rows.pipeline | "NoEarlierFailures" >> beam.Create([])
    max_bytes = (int(mel_options.max_file_mb * 2**20)
                 if mel_options.max_file_mb and mel_options.max_file_mb > 0 else None)
    max_duration_s = (mel_options.max_duration_s
                      if mel_options.max_duration_s and mel_options.max_duration_s > 0 else None)
    tracks = (
        {"rows": rows | "KeyRows" >> beam.Map(lambda row: (row.get("track_id"), row)),
         "done": done | "KeyDone" >> beam.Map(lambda track_id: (track_id, True)),
         "failed": failed | "KeyFailed" >> beam.Map(
             lambda row: (row.get("track_id"), row.get("audio_uri")))}
        | "JoinByTrack" >> beam.CoGroupByKey()
        | "PickOnePerTrack" >> beam.ParDo(
            PickOnePerTrack(mel_options.retry_dead_letters)).with_outputs(
            DEAD_LETTERS, main="tracks"))
    decoded = tracks.tracks | "Decode" >> beam.ParDo(DecodeAudio(
        params, isolate=mel_options.isolate_decoding,
        timeout_s=mel_options.decode_timeout_s, min_duration_s=mel_options.min_duration_s,
        max_bytes=max_bytes, max_duration_s=max_duration_s)).with_outputs(
            DEAD_LETTERS, main="samples")
    mels = decoded.samples | "LogMel" >> beam.ParDo(
        ComputeLogMel(params, torch_threads=mel_options.torch_threads)).with_outputs(
        DEAD_LETTERS, main="mels")
    dead_letters = ((tracks[DEAD_LETTERS], decoded[DEAD_LETTERS], mels[DEAD_LETTERS])
                    | "CollectDeadLetters" >> beam.Flatten())
    return MelOutputs(mels=mels.mels, dead_letters=dead_letters)


def mel_table(rows: Sequence[dict], schema: pa.Schema = schemas.MEL_SHARD) -> pa.Table:
    """A batch of MEL_SHARD rows (``mel`` as flat float32 arrays) as one Arrow table.

    Builds the list column from one concatenated buffer: converting arrays one by
    one through pa.array is several times slower.
    """
    lengths = np.array([len(row["mel"]) for row in rows], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = (np.concatenate([row["mel"] for row in rows]).astype(np.float32, copy=False)
              if rows else np.zeros(0, np.float32))
    mel = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    return pa.Table.from_arrays([
        pa.array([row["track_id"] for row in rows], pa.string()),
        pa.array([row["n_mels"] for row in rows], pa.int32()),
        pa.array([row["n_frames"] for row in rows], pa.int32()),
        mel.cast(schema.field("mel").type),
    ], schema=schema)


class ParquetTableSink(FileBasedSink):
    """Writes pyarrow Tables to Parquet files, each table one row group.

    Dictionary encoding is used for string columns only: tried on float32
    spectrogram values it is abandoned page after page, and costs more than
    writing them. Values are stored uncompressed, like Beam's own Parquet sink.
    """

    def __init__(self, file_path_prefix: str, schema: pa.Schema,
                 file_name_suffix: str = SUFFIX) -> None:
        super().__init__(file_path_prefix, coder=None, file_name_suffix=file_name_suffix,
                         mime_type="application/x-parquet",
                         compression_type=CompressionTypes.UNCOMPRESSED)
        self.schema = schema

    def open(self, temp_path: str):
        handle = super().open(temp_path)
        strings = [field.name for field in self.schema if pa.types.is_string(field.type)]
        return handle, pq.ParquetWriter(handle, self.schema, compression="none",
                                        use_dictionary=strings)

    def write_record(self, file_and_writer, table: pa.Table) -> None:
        file_and_writer[1].write_table(table, row_group_size=max(1, table.num_rows))

    def close(self, file_and_writer) -> None:
        handle, writer = file_and_writer
        writer.close()
        super().close(handle)


def write(outputs: MelOutputs, directory: str | os.PathLike, options: PipelineOptions) -> None:
    """Write ``outputs`` as mels-*.parquet and dead_letters-*.parquet in ``directory``.

    Spectrograms are batched into row groups holding about --row-group-mb of
    spectrogram values each (the last of a worker's batches may be smaller); an
    empty output still yields a readable Parquet file with the schema.
    """
    params = mel_params(options)
    row_group_bytes = int(options.view_as(MelOptions).row_group_mb * 2**20)
    schema = mel_schema(params)
    (outputs.mels
     | "BatchMels" >> beam.BatchElements(
         min_batch_size=row_group_bytes, max_batch_size=row_group_bytes,
         element_size_fn=lambda row: row["mel"].nbytes, record_metrics=False)
     | "ToArrow" >> beam.Map(mel_table, schema)
     | "WriteMels" >> beam.io.Write(
         ParquetTableSink(os.path.join(directory, MELS_PREFIX), schema)))
    (outputs.dead_letters
     | "WriteDeadLetters" >> beam.io.WriteToParquet(
         os.path.join(directory, DEAD_LETTERS_PREFIX), dead_letter_schema(params),
         file_name_suffix=SUFFIX))


# -- Running --------------------------------------------------------------------------

class JobError(Exception):
    """Bad input or configuration, reported without a traceback by main."""


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What a run did. skipped_done: tracks that already had spectrograms;
    skipped_failed: tracks whose audio URI failed in a published earlier run."""
    run_dir: Path
    catalogue_rows: int
    skipped_done: int
    skipped_failed: int
    mels: int
    dead_letters: int

    @property
    def bad_fraction(self) -> float:
        attempted = self.mels + self.dead_letters
        return self.dead_letters / attempted if attempted else 0.0


def catalogue_pattern(catalogue: str) -> str:
    """The file pattern of a catalogue given as a file, a directory or a glob."""
    return os.path.join(catalogue, f"*{SUFFIX}") if os.path.isdir(catalogue) else catalogue


def catalogue_files(pattern: str) -> list[str]:
    """Parquet files matching ``pattern``; raises JobError when there are none."""
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except Exception as err:
        raise JobError(f"cannot list catalogue {pattern}: {err}") from err
    files = sorted(item.path for item in matched)
    if not files:
        raise JobError(f"no catalogue files match {pattern}")
    return files


CATALOGUE_COLUMNS = ["track_id", "audio_uri"]


def check_catalogue(files: Sequence[str]) -> None:
    """Raise JobError unless every file is Parquet with the CATALOGUE_COLUMNS.

    Reads only the files' footers.
    """
    for path in files:
        with FileSystems.open(path) as handle:
            try:
                names = pq.ParquetFile(handle).schema_arrow.names
            except pa.ArrowInvalid as err:
                raise JobError(f"catalogue {path} is not a Parquet file: {err}") from err
        missing = [column for column in CATALOGUE_COLUMNS if column not in names]
        if missing:
            raise JobError(f"catalogue {path} lacks columns {missing} (has {names})")


def _read_parquet_rows(pipeline: beam.Pipeline, label: str, paths: Sequence[Path],
                       columns: list[str]) -> beam.PCollection:
    """Rows (dicts of ``columns``) of the Parquet files ``paths``, which may be none."""
    return (pipeline
            | f"List{label}" >> beam.Create([str(path) for path in paths])
            | f"Read{label}" >> beam.io.ReadAllFromParquet(columns=columns))


def _counters(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    """The job's COUNTERS, committed values where the runner has them."""
    counters = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(COUNTERS))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + (value or 0)
    return counters


# How a worker's SystemicError reads once the runner has turned it into text.
_SYSTEMIC_TEXT = re.compile(rf"{SystemicError.__name__}: (.+)")


def systemic_failure(err: BaseException) -> str | None:
    """What broke the environment, if that is why the pipeline failed, else None.

    Runners hand a worker's exception back wrapped, often as the text of its
    traceback, so both the exception chain and that text are searched.
    """
    seen = err
    while seen is not None:
        if is_systemic(seen):
            return (str(seen) if isinstance(seen, SystemicError)
                    else f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    found = _SYSTEMIC_TEXT.search(str(err))
    return found.group(1).strip() if found else None


def run(options: PipelineOptions) -> RunSummary:
    """Run the job the options describe and publish its run directory."""
    mel_options = options.view_as(MelOptions)
    if not mel_options.catalogue or not mel_options.out:
        raise JobError("--catalogue and --out are required")
    params = mel_params(options)
    run_id = mel_options.run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = run_dir(mel_options.out, params, run_id)
    if target.exists():
        raise JobError(f"run directory {target} already exists; pick another --run-id")

    pattern = catalogue_pattern(mel_options.catalogue)
    check_catalogue(catalogue_files(pattern))
    check_environment(params)  # seconds, before any worker starts
    earlier_mels = mel_shards(target.parent)
    earlier_failures = [] if mel_options.retry_dead_letters else final_dead_letter_files(
        target.parent)
    logger.info("params %s (%s): catalogue %s; skipping the tracks of %d earlier spectrogram "
                "shards and %d dead-letter files", params.params_hash(), params.to_dict(),
                mel_options.catalogue, len(earlier_mels), len(earlier_failures))

    # Published under a pending name first: the run directory itself (what Luigi
    # checks) appears only if the bad fraction is within bounds. A rejected run keeps
    # its spectrograms, so a rerun redoes only the tracks that failed.
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    pending = target.with_name(f"{run_id}.pending-{stamp}")
    with storage.atomic_dir(pending) as tmp:
        try:
            with beam.Pipeline(options=options) as pipeline:
                rows = pipeline | "ReadCatalogue" >> beam.io.ReadFromParquet(
                    pattern, columns=CATALOGUE_COLUMNS)
                done = (_read_parquet_rows(pipeline, "EarlierMels", earlier_mels, ["track_id"])
                        | "TrackIds" >> beam.Map(lambda row: row["track_id"]))
                failed = _read_parquet_rows(pipeline, "EarlierFailures", earlier_failures,
                                            CATALOGUE_COLUMNS)
                write(build(rows, options, done, failed), tmp, options)
        except Exception as err:
            systemic = systemic_failure(err)
            if systemic is not None:
                raise SystemicError(systemic) from err
            raise
        counters = _counters(pipeline.result)
        n_mels = _count_rows(tmp.glob(f"{MELS_PREFIX}-*{SUFFIX}"))
        n_dead = _count_rows(dead_letter_files(tmp))
    summary = RunSummary(
        run_dir=target, catalogue_rows=counters.get("catalogue_rows", 0),
        skipped_done=counters.get("skipped_done", 0),
        skipped_failed=counters.get("skipped_failed", 0), mels=n_mels, dead_letters=n_dead)
    if summary.bad_fraction > mel_options.max_bad_fraction:
        summary = dataclasses.replace(
            summary, run_dir=target.with_name(f"{run_id}.rejected-{stamp}"))
    os.rename(pending, summary.run_dir)
    logger.info("catalogue: %d rows; skipped %d tracks with spectrograms and %d that failed "
                "before; wrote %d spectrograms and %d dead letters to %s",
                summary.catalogue_rows, summary.skipped_done, summary.skipped_failed,
                summary.mels, summary.dead_letters, summary.run_dir)
    return summary


# -- Command line ---------------------------------------------------------------------

def parse_options(argv: Sequence[str] | None = None) -> PipelineOptions:
    """Options from the command line; unknown flags are left to Beam."""
    parser = argparse.ArgumentParser(
        prog="python -m jobs.spectrograms", allow_abbrev=False, description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any other flag is a Beam pipeline option, passed through to Beam "
               "(for example --runner=DataflowRunner --project=... --region=...).")
    MelOptions._add_argparse_args(parser)
    runner = parser.add_argument_group("runner")
    runner.add_argument(
        "--runner", default="FnApiRunner",
        help="Beam runner. Default: %(default)s, the local engine of DirectRunner "
             "(DirectRunner itself first tries to download the Prism runner).")
    runner.add_argument(
        "--direct_num_workers", type=int, default=max(2, os.cpu_count() or 1),
        help="Local runner: number of workers, each with its own decoder process "
             "(0 = one per CPU). Default: one per CPU, at least 2, here %(default)s.")
    runner.add_argument(
        "--direct_running_mode", default=None,
        choices=["in_memory", "multi_threading", "multi_processing"],
        help="Local runner: how workers run. Default: multi_threading while decoding is "
             "isolated, since each worker's decoding then runs in its own process and the "
             "mel transform releases the GIL (this saves starting a Beam interpreter per "
             "worker); multi_processing with --no-isolate-decoding.")
    args, beam_args = parser.parse_known_args(argv)
    if not args.catalogue or not args.out:
        parser.error("--catalogue and --out are required")
    if args.direct_running_mode is None:
        args.direct_running_mode = (
            "multi_threading" if args.isolate_decoding else "multi_processing")
    return PipelineOptions(beam_args, **vars(args))


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    options = parse_options(argv)
    try:
        summary = run(options)
    except JobError as err:
        logger.error("%s", err)
        return 2
    except SystemicError as err:
        logger.error("stopped: the environment is broken, not the audio (no track was set "
                     "aside): %s", err)
        return 1
    max_bad = options.view_as(MelOptions).max_bad_fraction
    if summary.bad_fraction > max_bad:
        logger.error("catalogue %s: %d of %d tracks (%.1f%%) failed, more than "
                     "--max-bad-fraction %g; most frequent errors: %s; see %s",
                     options.view_as(MelOptions).catalogue,
                     summary.dead_letters, summary.mels + summary.dead_letters,
                     100 * summary.bad_fraction, max_bad,
                     "; ".join(f"{kind} ({count})" for kind, count in
                               frequent_errors(dead_letter_files(summary.run_dir))),
                     summary.run_dir / f"{DEAD_LETTERS_PREFIX}-*{SUFFIX}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
