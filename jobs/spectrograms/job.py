"""Stage 2: catalogue audio -> log-mel spectrogram Parquet shards (Apache Beam).

Reads the catalogue (schemas.CATALOGUE), decodes the middle excerpt of every track
not yet done for the same mel parameters, computes its log-mel spectrogram and writes

    <out>/<params_hash>/<run_id>/mels-*.parquet          schemas.MEL_SHARD
    <out>/<params_hash>/<run_id>/dead_letters-*.parquet  schemas.DEAD_LETTERS

both with the mel parameters in their schema metadata. With --frontend (the default)
the same decoded excerpt also makes the pretrained tagger's input (musicnn's log-mels,
MelParams.frontend), written alike under its own parameters' hash, with its own dead
letters: a track whose tagger input fails alone keeps its spectrogram. The run
directories appear only once the pipeline has succeeded. The job exits non-zero when
the fraction of tracks that failed for an output exceeds --max-bad-fraction; that
output is then kept under <run_id>.rejected-<time> instead, so a rerun only retries
the tracks that failed.

Incremental, for each output apart: a track is skipped when it has that output in an
earlier run with the same parameters, and also when a published (not rejected) run
already sent the same track id and audio URI to that output's dead letters
(--retry-dead-letters tries those again). A track is decoded once, for the outputs
it lacks. An output whose run directory exists already is not written again, so a
run made before the tagger's input existed can be completed under its own run id.
Audio URIs are local paths or anything fsspec opens.

Runs on Beam's local FnApiRunner (the engine behind DirectRunner, pinned so that
Beam does not try to download the Prism runner) with one worker in this process that
hands the tracks to --decoders child processes (one per CPU), each decoding tracks and
computing their log-mels; any other Beam pipeline option
(--runner=DataflowRunner, --runner=FlinkRunner, ...) is passed through. --out must
be a local or mounted filesystem: the run directories are published with atomic renames.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Iterable, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from jobs.spectrograms import failures, pool
from jobs.spectrograms.decode import SystemicError, is_systemic, systemic_message
from jobs.spectrograms.mel import check_environment
from jobs.spectrograms.pipeline import (COUNTERS, DURATION_COLUMN, build, decoder_settings,
                                        numbered, write)
from schemas import cli, layout, storage
from schemas.config import MelParams, SpectrogramOptions

logger = logging.getLogger(__name__)


class MelOptions(PipelineOptions):
    """Options of the spectrogram job; every other flag goes to Beam."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
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
        cli.add_settings(parser, MelParams)
        cli.add_settings(parser, SpectrogramOptions)


def configs(options: PipelineOptions) -> tuple[MelParams, SpectrogramOptions]:
    """The typed settings the job's options describe."""
    values = argparse.Namespace(**options.view_as(MelOptions).get_all_options())
    return cli.settings_from(MelParams, values), cli.settings_from(SpectrogramOptions, values)


def existing_track_ids(params_dir: str | os.PathLike) -> set[str]:
    """Track ids that already have a spectrogram in a finished run under ``params_dir``.

    ``params_dir`` is <out>/<params_hash>; see :func:`schemas.layout.mel_shards`.
    """
    done: set[str] = set()
    for shard in layout.mel_shards(params_dir):
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


def _count_rows(paths: Iterable[str | Path]) -> int:
    """Rows of Parquet files, from their footers."""
    total = 0
    for path in paths:
        with FileSystems.open(str(path)) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


# -- Running --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SpectrogramJob:
    """One run of the job: the catalogue (file, directory or glob), the spectrograms'
    root directory, the run's name (None: the UTC time), the mel parameters, how
    inputs are treated, and the Beam options the pipeline runs with."""
    catalogue: str
    out: str
    params: MelParams = MelParams()
    options: SpectrogramOptions = SpectrogramOptions()
    run_id: str | None = None
    beam: PipelineOptions = dataclasses.field(default_factory=PipelineOptions)


@dataclasses.dataclass(frozen=True)
class OutputSummary:
    """What a run did for one of its outputs (the spectrograms of one set of
    parameters): where they are, the tracks skipped (skipped_done: they had this output
    already; skipped_failed: their audio URI failed for it in a published earlier
    run), and the spectrograms and dead letters written."""
    params: MelParams
    run_dir: Path
    skipped_done: int
    skipped_failed: int
    mels: int
    dead_letters: int

    @property
    def bad_fraction(self) -> float:
        """The share of the catalogue's tracks failing for this output: this run's dead
        letters and the earlier failures not yet due again. Taken over the catalogue,
        so that one bad file among a night's few new tracks does not fail the night."""
        failing = self.dead_letters + self.skipped_failed
        tracks = self.mels + self.skipped_done + failing
        return failing / tracks if tracks else 0.0


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What a run did: the catalogue rows it read, and each output it wrote (the main
    spectrograms first, unless this run id had them already)."""
    catalogue_rows: int
    outputs: tuple[OutputSummary, ...]

    def of(self, params: MelParams) -> OutputSummary:
        """The output of ``params``; KeyError when the run did not write it."""
        for output in self.outputs:
            if output.params == params:
                return output
        raise KeyError(f"the run wrote no spectrograms of {params.to_dict()}")


def outputs_of(params: MelParams, options: SpectrogramOptions) -> tuple[MelParams, ...]:
    """What the job makes of each track: ``params``' spectrograms and, with
    ``options.frontend``, the pretrained tagger's input (once, were they the same)."""
    frontend = params.frontend()
    return (params, frontend) if options.frontend and frontend != params else (params,)


def catalogue_pattern(catalogue: str) -> str:
    """The file pattern of a catalogue given as a file, a directory or a glob."""
    return os.path.join(catalogue, f"*{layout.PARQUET}") if os.path.isdir(catalogue) else catalogue


def catalogue_files(pattern: str) -> list[str]:
    """Parquet files matching ``pattern``; raises JobError when there are none."""
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except Exception as err:
        raise cli.JobError(f"cannot list catalogue {pattern}: {err}") from err
    files = sorted(item.path for item in matched)
    if not files:
        raise cli.JobError(f"no catalogue files match {pattern}")
    return files


CATALOGUE_COLUMNS = ["track_id", "audio_uri"]


def check_catalogue(files: Sequence[str]) -> list[str]:
    """The catalogue columns the job reads: CATALOGUE_COLUMNS, and DURATION_COLUMN when
    every file has it. Raises JobError unless every file is Parquet with the
    CATALOGUE_COLUMNS.

    Reads only the files' footers.
    """
    with_duration = True
    for path in files:
        with FileSystems.open(path) as handle:
            try:
                names = pq.ParquetFile(handle).schema_arrow.names
            except pa.ArrowInvalid as err:
                raise cli.JobError(f"catalogue {path} is not a Parquet file: {err}") from err
        missing = [column for column in CATALOGUE_COLUMNS if column not in names]
        if missing:
            raise cli.JobError(f"catalogue {path} lacks columns {missing} (has {names})")
        with_duration = with_duration and DURATION_COLUMN in names
    return CATALOGUE_COLUMNS + [DURATION_COLUMN] * with_duration


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
            return systemic_message(seen)
        seen = seen.__cause__ or seen.__context__
    found = _SYSTEMIC_TEXT.search(str(err))
    return found.group(1).strip() if found else None


def run(job: SpectrogramJob) -> RunSummary:
    """Run the job and publish its run directories.

    Runs that write the same parameters take turns: each decides what is left to do
    only once the one before it has published, so no track is made twice. (Main
    spectrograms of different settings can share one tagger input.)
    """
    run_id = job.run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    outputs = outputs_of(job.params, job.options)
    with contextlib.ExitStack() as held:
        for lock in sorted({layout.params_lock(job.out, params) for params in outputs}):
            held.enter_context(storage.exclusive(lock))  # in one order: no deadlock
        return _run(job, run_id, outputs)


def _run(job: SpectrogramJob, run_id: str, outputs: tuple[MelParams, ...]) -> RunSummary:
    params, options = job.params, job.options
    targets = {output: layout.run_dir(job.out, output, run_id) for output in outputs}
    left = tuple(output for output, target in targets.items() if not target.exists())
    if not left:
        raise cli.UsageError(f"run directory {' and '.join(map(str, targets.values()))} "
                             f"already exist{'s' if len(targets) == 1 else ''}; pick another "
                             "--run-id")
    for output in outputs:
        if output not in left:  # an output of this run id, made before the others existed
            logger.info("%s exists already: this run writes only %s", targets[output],
                        ", ".join(str(targets[other]) for other in left))
    pattern = catalogue_pattern(job.catalogue)
    files = catalogue_files(pattern)
    columns = check_catalogue(files)
    if not options.isolate_decoding:
        check_environment(params, left)  # seconds, before any worker starts
    else:  # the children check it as they warm up
        # Started now, they import and warm up while the pipeline is built and started.
        pool.start_spares(_workers_here(job.beam) * options.decoder_count, params,
                          **decoder_settings(params, options.decode_timeout_s, options.limits,
                                             options.torch_threads, left))
    try:
        return _run_parts(job, run_id, left, pattern, files, columns)
    finally:
        pool.close_spares()


def _workers_here(beam_options: PipelineOptions) -> int:
    """How many workers the pipeline runs in this process: those of the local runner
    in_memory or multi_threading, none elsewhere."""
    values = beam_options.get_all_options()
    if values.get("runner") not in (None, "FnApiRunner", "DirectRunner", "BundleBasedDirectRunner"):
        return 0
    if values.get("direct_running_mode") == "multi_processing":
        return 0
    return values.get("direct_num_workers") or os.cpu_count() or 1


def _run_parts(job: SpectrogramJob, run_id: str, outputs: tuple[MelParams, ...],
               pattern: str, files: list[str], columns: list[str]) -> RunSummary:
    options = job.options
    targets = {output: layout.run_dir(job.out, output, run_id) for output in outputs}

    # The catalogue is done in parts, each published as a run of its own when it is
    # done (<run_id>.part-<k>-of-<n>; the last one is the run directory itself), so a
    # killed run keeps what it finished and a rerun skips those tracks.
    rows = _count_rows(files)
    parts = max(1, math.ceil(rows / options.tracks_per_part))
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    totals = {output: collections.Counter() for output in outputs}
    catalogue_rows = 0
    for part in range(parts):
        last = part == parts - 1
        # The last part is published under a pending name first: the run directory
        # itself (what Luigi checks) appears only if the bad fraction is within
        # bounds. A rejected run keeps its spectrograms, so a rerun redoes only the
        # tracks that failed.
        destinations = {output: target.with_name(f"{run_id}.pending-{stamp}") if last
                        else target.with_name(f"{run_id}.part-{part + 1}-of-{parts}")
                        for output, target in targets.items()}
        todo = {output: path for output, path in destinations.items() if not path.exists()}
        if not todo:
            logger.info("part %d of %d was finished by an earlier attempt", part + 1, parts)
            continue
        if len(todo) < len(destinations):
            logger.info("part %d of %d: only %s left to write", part + 1, parts,
                        ", ".join(map(str, todo.values())))
        read, counted = _run_part(job, pattern, columns, (part, parts), todo, rows)
        catalogue_rows += read
        for output, counts in counted.items():
            totals[output].update(counts)
    summaries = {}
    for output, target in reversed(targets.items()):  # the main spectrograms published last
        counts = totals[output]
        summary = OutputSummary(
            params=output, run_dir=target, skipped_done=counts["skipped_done"],
            skipped_failed=counts["skipped_failed"], mels=counts["mels"],
            dead_letters=counts["dead_letters"])
        if summary.bad_fraction > options.max_bad_fraction:
            summary = dataclasses.replace(
                summary, run_dir=target.with_name(f"{run_id}.rejected-{stamp}"))
        os.rename(target.with_name(f"{run_id}.pending-{stamp}"), summary.run_dir)
        summaries[output] = summary
        failing = failures.history(target.parent, options.retry_after_days,
                                   recovered=existing_track_ids(target.parent))
        logger.info("%s: %d tracks are failing; see %s", target.parent, failing.num_rows,
                    failures.write(target.parent, failing))
    logger.info("catalogue: %d rows", catalogue_rows)
    for summary in summaries.values():
        logger.info("%s: skipped %d tracks that had them and %d that failed before; wrote %d "
                    "spectrograms and %d dead letters", summary.run_dir, summary.skipped_done,
                    summary.skipped_failed, summary.mels, summary.dead_letters)
    return RunSummary(catalogue_rows=catalogue_rows,
                      outputs=tuple(summaries[output] for output in outputs))


def _run_part(job: SpectrogramJob, pattern: str, columns: list[str], part: tuple[int, int],
              destinations: dict[MelParams, Path],
              expected: int | None = None) -> tuple[int, dict[MelParams, dict[str, int]]]:
    """Run the pipeline on one part of the catalogue for the outputs of
    ``destinations``, and publish each as its destination; returns the catalogue rows
    read, and for each output its counters and the spectrograms and dead letters it
    wrote. ``columns``: what to read of the catalogue. ``expected``, the catalogue's rows,
    is for the progress log."""
    params, options = job.params, job.options
    outputs = tuple(destinations)
    now = datetime.datetime.now(datetime.timezone.utc)
    earlier_mels, earlier_failures = {}, {}
    for output, destination in destinations.items():
        earlier_mels[output] = layout.mel_shards(destination.parent)
        earlier_failures[output] = [] if options.retry_dead_letters else failures.not_due(
            failures.history(destination.parent, options.retry_after_days), now)
        logger.info("params %s (%s), part %d of %d: catalogue %s; skipping the tracks of %d "
                    "earlier spectrogram shards and %d earlier failures not yet due again",
                    output.params_hash(), output.to_dict(), part[0] + 1, part[1],
                    job.catalogue, len(earlier_mels[output]), len(earlier_failures[output]))
    with contextlib.ExitStack() as published:  # each published on success, the last first
        tmp = {output: published.enter_context(storage.atomic_dir(destination))
               for output, destination in destinations.items()}
        try:
            with beam.Pipeline(options=job.beam) as pipeline:
                rows = pipeline | "ReadCatalogue" >> beam.io.ReadFromParquet(
                    pattern, columns=columns)
                done = [_read_parquet_rows(pipeline, numbered("EarlierMels", i),
                                           earlier_mels[output], ["track_id"])
                        | numbered("TrackIds", i) >> beam.Map(lambda row: row["track_id"])
                        for i, output in enumerate(outputs)]
                failed = [pipeline | numbered("EarlierFailures", i) >> beam.Create(
                    earlier_failures[output]) for i, output in enumerate(outputs)]
                built = build(rows, params, options, done, failed, part, expected, outputs)
                for i, (output, written) in enumerate(zip(outputs, built)):
                    write(written, tmp[output], output, options.row_group_mb, options.shard_mb,
                          label=numbered("Write", i))
        except Exception as err:
            systemic = systemic_failure(err)
            if systemic is not None:
                raise SystemicError(systemic) from err
            raise
        counters = _counters(pipeline.result)
        return counters.get("catalogue_rows", 0), {output: {
            "skipped_done": counters.get(numbered("skipped_done", i), 0),
            "skipped_failed": counters.get(numbered("skipped_failed", i), 0),
            "mels": _count_rows(layout.mel_shard_files(tmp[output])),
            "dead_letters": _count_rows(layout.dead_letter_files(tmp[output]))}
            for i, output in enumerate(outputs)}


# -- Command line ---------------------------------------------------------------------

def parse_options(argv: Sequence[str] | None = None) -> SpectrogramJob:
    """The job the command line describes; flags the job does not know go to Beam."""
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
        "--direct_num_workers", type=int, default=None,
        help="Local runner: number of workers (0 = one per CPU). Default: 1 while decoding "
             "is isolated, its --decoders children being the parallelism; one per CPU, at "
             f"least 2, here {max(2, os.cpu_count() or 1)}, with --no-isolate-decoding.")
    runner.add_argument(
        "--direct_running_mode", default=None,
        choices=["in_memory", "multi_threading", "multi_processing"],
        help="Local runner: how workers run. Default: in_memory while decoding is "
             "isolated: the work is in the children, and one worker in this process "
             "starts fastest and hands them tracks with the least overhead; "
             "multi_processing with --no-isolate-decoding.")
    args, beam_args = parser.parse_known_args(argv)
    if not args.catalogue or not args.out:
        parser.error("--catalogue and --out are required")
    if args.direct_running_mode is None:
        args.direct_running_mode = "in_memory" if args.isolate_decoding else "multi_processing"
    if args.direct_num_workers is None:
        args.direct_num_workers = 1 if args.isolate_decoding else max(2, os.cpu_count() or 1)
    options = PipelineOptions(beam_args, **vars(args))
    params, job_options = configs(options)
    return SpectrogramJob(catalogue=args.catalogue, out=args.out, params=params,
                          options=job_options, run_id=args.run_id, beam=options)


def _not_systemic(record: logging.LogRecord) -> bool:
    """False for Beam's log of a worker's broken-environment error: the job reports
    that itself, in one line, where a traceback would only bury it."""
    return not (record.exc_info and systemic_failure(record.exc_info[1]) is not None)


def main(argv: Sequence[str] | None = None) -> int:
    cli.setup_logging()
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    logging.getLogger("apache_beam.runners.common").addFilter(_not_systemic)
    job = parse_options(argv)
    return cli.run_job(lambda: report(job, run_or_stop(job)), logger)


def run_or_stop(job: SpectrogramJob) -> RunSummary:
    try:
        return run(job)
    except SystemicError as err:
        raise cli.JobError("stopped: the environment is broken, not the audio (no track was "
                           f"set aside): {err}") from None


def report(job: SpectrogramJob, summary: RunSummary) -> int:
    """Exit code of a finished run: FAILED, with the most frequent errors, when an
    output is above the bound."""
    max_bad = job.options.max_bad_fraction
    code = cli.OK
    for output in summary.outputs:
        if output.bad_fraction <= max_bad:
            continue
        logger.error("catalogue %s: %d of %d tracks (%.1f%%) failed for %s, more than "
                     "--max-bad-fraction %g; most frequent errors: %s; see %s",
                     job.catalogue, output.dead_letters, output.mels + output.dead_letters,
                     100 * output.bad_fraction, output.run_dir.parent, max_bad,
                     "; ".join(f"{kind} ({count})" for kind, count in
                               frequent_errors(layout.dead_letter_files(output.run_dir))),
                     output.run_dir / f"{layout.DEAD_LETTERS_PREFIX}-*{layout.PARQUET}")
        code = cli.FAILED
    return code
