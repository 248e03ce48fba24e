"""The Beam graph of the spectrogram job: catalogue rows -> log-mel rows and dead letters.

A job makes one or more outputs of every track (the main spectrograms and the
pretrained tagger's input), each with its own parameters, earlier runs and dead
letters, all from one decoding of the track. Every step is labelled; a track's failure
becomes a dead letter (track id, URI, stage, error) of the outputs it fails, while a
broken environment (see decode.is_systemic) fails the graph. Build it with
:func:`build`, write it with :func:`write`; jobs.spectrograms.job runs it.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import io
import itertools
import logging
import multiprocessing.connection
import os
import time
import zlib
from typing import Callable, Iterable, Iterator, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filebasedsink import FileBasedSink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

import schemas
from jobs.spectrograms.decode import DecodeError, is_systemic
from jobs.spectrograms.mel import prepare, spectrograms
from jobs.spectrograms.pool import IsolatedDecoder, take_decoder
from schemas import cli, layout, mels
from schemas.config import MelParams, SpectrogramOptions

logger = logging.getLogger(__name__)

# The tags of the graph's outputs: the spectrograms and the dead letters of each output
# (see numbered).
MELS = "mels"
DEAD_LETTERS = "dead_letters"
# Beam counters of the job, read back after the run.
COUNTERS = "spectrograms"


def numbered(name: str, output: int) -> str:
    """``name`` (a tag, counter or label) for output ``output`` of a job's outputs: the
    name itself for the first (the main spectrograms), name_<output> for the others."""
    return name if output == 0 else f"{name}_{output}"


def mel_schema(params: MelParams) -> pa.Schema:
    return schemas.with_metadata(schemas.MEL_SHARD, params.to_dict())


def dead_letter_schema(params: MelParams) -> pa.Schema:
    return schemas.with_metadata(schemas.DEAD_LETTERS, params.to_dict())


def _dead_letter(row: dict, stage: str, error: object) -> dict:
    return {"track_id": row.get("track_id"), "audio_uri": row.get("audio_uri"),
            "stage": stage, "error": str(error)}


class PickOnePerTrack(beam.DoFn):
    """(track_id, {"rows", "done", "failed", ...}) -> (catalogue row, outputs wanted), if any.

    rows: the catalogue rows with this track id. For each of the ``outputs`` outputs
    i, numbered("done", i): not empty when the track already has that output;
    numbered("failed", i): audio URIs that a published earlier run sent to that
    output's dead letters for it. An output is not wanted when the track has it, or
    when the chosen URI failed for it before (unless ``retry_dead_letters``); each
    skip is counted for its output, and a track no output wants is not decoded.
    Duplicated track ids keep the row with the smallest audio_uri (rows without a URI
    last); the others, and rows without a track id or audio URI, go to the dead
    letters (stage "catalogue") of every output that wants the track.
    """

    def __init__(self, outputs: int = 1, retry_dead_letters: bool = False) -> None:
        self.outputs = outputs
        self.retry_dead_letters = retry_dead_letters
        self.catalogue_rows = Metrics.counter(COUNTERS, "catalogue_rows")
        self.skipped_done = [Metrics.counter(COUNTERS, numbered("skipped_done", i))
                             for i in range(outputs)]
        self.skipped_failed = [Metrics.counter(COUNTERS, numbered("skipped_failed", i))
                               for i in range(outputs)]

    def process(self, keyed: tuple[str | None, dict[str, Iterable]]) -> Iterator:
        track_id, joined = keyed
        rows = sorted(joined["rows"], key=lambda row: (not row.get("audio_uri"),
                                                       row.get("audio_uri") or ""))
        if not rows:  # known from earlier runs, gone from the catalogue
            return
        self.catalogue_rows.inc(len(rows))
        failed = [set() if self.retry_dead_letters else set(joined[numbered("failed", i)])
                  for i in range(self.outputs)]
        if not track_id:
            for row, i in itertools.product(rows, range(self.outputs)):
                if row.get("audio_uri") in failed[i]:
                    self.skipped_failed[i].inc()
                    continue
                yield beam.pvalue.TaggedOutput(numbered(DEAD_LETTERS, i), _dead_letter(
                    row, "catalogue", "missing track_id"))
            return
        first, *duplicates = rows
        wanted = []
        for i in range(self.outputs):
            if any(True for _ in joined[numbered("done", i)]):
                self.skipped_done[i].inc()
            elif first.get("audio_uri") in failed[i]:
                self.skipped_failed[i].inc()
            else:
                wanted.append(i)
        for i in wanted:
            for row in duplicates:
                yield beam.pvalue.TaggedOutput(numbered(DEAD_LETTERS, i), _dead_letter(
                    row, "catalogue", f"duplicate track_id; kept {first.get('audio_uri')}"))
            if not first.get("audio_uri"):
                yield beam.pvalue.TaggedOutput(numbered(DEAD_LETTERS, i), _dead_letter(
                    first, "catalogue", "missing audio_uri"))
        if wanted and first.get("audio_uri"):
            yield first, tuple(wanted)


# The catalogue's column of each track's length, where the job reads it (it does when every
# catalogue file has it): a file falling short of it is truncated.
DURATION_COLUMN = "duration_s"


class ComputeSpectrograms(beam.DoFn):
    """(catalogue row, outputs wanted) -> for each output wanted, a schemas.MEL_SHARD row
    (mel flattened in the output's dtype), or a dead letter (stage "decode" or "mel").

    One decoding per track, with ``params``, makes every output it wants of
    ``outputs`` (default: ``params`` alone; a plain catalogue row wants all): a
    decoding that fails is a dead letter of each, an output that fails alone (its
    values are not finite, say) a dead letter of that output. Output i's rows and dead
    letters are tagged numbered(MELS, i) and numbered(DEAD_LETTERS, i); the first
    output's rows are the main output.

    A track's work is ``spectrograms`` (mel.spectrograms's signature; tests replace it).
    With ``isolate`` it runs in ``decoders`` child processes (:class:`IsolatedDecoder`),
    so that a crash in FFmpeg costs one track, not the worker. Each child keeps
    QUEUED tracks queued so that it never waits for this process; rows come out in the
    order the tracks came in, whichever child finishes first, so that a rerun writes the
    same shards (and trains the same network). Without ``isolate``, tracks are done
    here, one at a time.
    """

    # Tracks queued per child: one being done, one waiting.
    QUEUED = 2
    # Tracks finished or queued, per child, that may wait on an earlier, slower track
    # before this process stops sending more: bounds what is held in memory.
    HELD = 8

    instances = itertools.count(1)  # in this process: names each worker's progress log

    def __init__(self, params: MelParams, outputs: Sequence[MelParams] = (), *,
                 isolate: bool = True, decoders: int = 1,
                 timeout_s: float = SpectrogramOptions.decode_timeout_s,
                 torch_threads: int = SpectrogramOptions.torch_threads,
                 spectrograms: Callable[..., tuple] = spectrograms,
                 expected: int | None = None, **limits) -> None:
        self.params = params
        self.outputs = tuple(outputs) or (params,)
        self.expected = expected  # tracks of the whole job, for the progress log
        self.isolate = isolate
        self.decoders = decoders
        self.timeout_s = timeout_s
        self.torch_threads = torch_threads
        self.limits = limits  # decode_excerpt's per-track limits (SpectrogramOptions.limits)
        self.spectrograms = spectrograms

    def setup(self) -> None:
        # each worker (a process, or a thread of one) logs its own share; the job's tracks
        # are spread over all workers
        worker = f"{os.getpid()}.{next(ComputeSpectrograms.instances)}"
        self.progress = cli.Progress(logger, f"spectrograms, worker {worker} (the job has "
                                     f"{self.expected or 'an unknown number of'} tracks)")
        self._children: list[IsolatedDecoder] = []
        if self.isolate:
            self._children = [
                take_decoder(self.params, **decoder_settings(
                    self.params, self.timeout_s, self.limits, self.torch_threads,
                    self.outputs, self.spectrograms))
                for _ in range(self.decoders)]
        else:
            prepare(self.params, self.torch_threads, self.outputs)

    def start_bundle(self) -> None:
        # [row, outputs wanted, their results once known]: queued on each child, and all
        # of them in the order sent
        self._rows = {child: collections.deque() for child in self._children}
        self._sent: collections.deque[list] = collections.deque()

    def process(self, element: dict | tuple[dict, tuple[int, ...]]) -> Iterator:
        row, wanted = element if isinstance(element, tuple) else (
            element, tuple(range(len(self.outputs))))
        outputs = tuple(self.outputs[i] for i in wanted)
        self.progress.add()
        if not self.isolate:
            yield from self._result(row, wanted, lambda: self.spectrograms(
                row["audio_uri"], self.params, outputs, row.get(DURATION_COLUMN), **self.limits))
            return
        while (sum(child.queued for child in self._children) >= self.QUEUED * len(self._children)
               or len(self._sent) >= self.HELD * len(self._children)):
            yield from self._finished()
        child = min(self._children, key=lambda child: child.queued)
        child.send(row["audio_uri"], outputs, row.get(DURATION_COLUMN))
        entry = [row, wanted, None]
        self._rows[child].append(entry)
        self._sent.append(entry)

    def finish_bundle(self) -> Iterator:
        while self._sent:
            for output in self._finished():
                if isinstance(output, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(
                        output.tag, GlobalWindows.windowed_value(output.value))
                else:
                    yield GlobalWindows.windowed_value(output)

    def _finished(self) -> Iterator:
        """Takes the results of the children that have one, once one has or the oldest
        deadline has passed (its track then times out); yields the outputs of the tracks
        sent first whose results are in."""
        busy = [child for child in self._children if child.queued]
        if busy:
            wait_s = max(0.0, min(child.deadline for child in busy) - time.monotonic())
            ready = multiprocessing.connection.wait([child.connection for child in busy], wait_s)
            for child in busy:
                if child.connection in ready or child.deadline <= time.monotonic():
                    entry = self._rows[child].popleft()
                    entry[2] = list(self._result(entry[0], entry[1], child.receive))
        while self._sent and self._sent[0][2] is not None:
            yield from self._sent.popleft()[2]

    def _result(self, row: dict, wanted: tuple[int, ...],
                compute: Callable[[], tuple]) -> Iterator:
        try:
            results = compute()
        except Exception as err:  # one bad file must never fail the bundle...
            if is_systemic(err):  # ...but a broken environment must stop the job
                raise
            results = [err] * len(wanted)  # the decoding failed: every output with it
        for i, result in zip(wanted, results):
            if isinstance(result, Exception):
                stage, error = ((result.stage, result) if isinstance(result, DecodeError) else
                                (DecodeError.stage, f"{type(result).__name__}: {result}"))
                yield beam.pvalue.TaggedOutput(numbered(DEAD_LETTERS, i),
                                               _dead_letter(row, stage, error))
                continue
            mel = {"track_id": row["track_id"], "n_mels": result.shape[0],
                   "n_frames": result.shape[1], "dtype": self.outputs[i].dtype,
                   "mel": result.reshape(-1)}
            yield mel if i == 0 else beam.pvalue.TaggedOutput(numbered(MELS, i), mel)

    def teardown(self) -> None:
        for child in self._children:
            child.close()


def decoder_settings(params: MelParams, timeout_s: float, limits: dict, torch_threads: int,
                     outputs: Sequence[MelParams] = (),
                     spectrograms: Callable[..., tuple] = spectrograms) -> dict:
    """IsolatedDecoder's keyword arguments for the job's children: each computes
    ``spectrograms`` per track, after mel.prepare for ``outputs``."""
    return {"timeout_s": timeout_s, "decode": spectrograms,
            "warm_up": functools.partial(prepare, params, torch_threads, tuple(outputs)),
            **limits}


@dataclasses.dataclass(frozen=True)
class MelOutputs:
    """One output of the graph."""
    mels: beam.PCollection          # schemas.MEL_SHARD rows, "mel" a flat ndarray of "dtype"
    dead_letters: beam.PCollection  # schemas.DEAD_LETTERS rows


def in_part(row: dict, part: int, parts: int) -> bool:
    """Whether the catalogue ``row`` belongs to ``part`` of ``parts``: by a stable hash
    of its track id, so a track's duplicates share its part."""
    return zlib.crc32((row.get("track_id") or "").encode()) % parts == part


def build(rows: beam.PCollection, params: MelParams,
          options: SpectrogramOptions = SpectrogramOptions(),
          done: Sequence[beam.PCollection] = (), failed: Sequence[beam.PCollection] = (),
          part: tuple[int, int] = (0, 1), expected: int | None = None,
          outputs: Sequence[MelParams] = ()) -> tuple[MelOutputs, ...]:
    """Spectrograms of catalogue ``rows`` (dicts with track_id and audio_uri), one
    MelOutputs for each of ``outputs`` (default: ``params`` alone), all made from one
    decoding of each track with ``params``; an output's excerpt and padding must be
    those of ``params``.

    done[i]: track ids that already have output i; they are not made again. failed[i]:
    dead-letter rows (dicts with track_id and audio_uri) of earlier published runs of
    output i; tracks whose audio_uri is among them are skipped for it unless
    ``options.retry_dead_letters``. Missing ones are empty. Grouping by track id joins
    them all (nothing is held in memory whole), removes duplicates and spreads the
    tracks over the workers. ``part`` (index, count) keeps only the rows of that part
    of the catalogue; ``expected``, the number of catalogue rows, is for the progress log.
    """
    outputs = tuple(outputs) or (params,)
    for output in outputs:
        if (output.excerpt_s, output.pad) != (params.excerpt_s, params.pad):
            raise ValueError(f"an output's excerpt and padding must be the decoding's: "
                             f"{output.to_dict()} against {params.to_dict()}")
    if part[1] > 1:
        rows = rows | "ThisPart" >> beam.Filter(in_part, *part)
    joined = {"rows": rows | "KeyRows" >> beam.Map(lambda row: (row.get("track_id"), row))}
    for i in range(len(outputs)):
        done_i = done[i] if i < len(done) else (
            rows.pipeline | numbered("NoEarlierSpectrograms", i) >> beam.Create([]))
        failed_i = failed[i] if i < len(failed) else (
            rows.pipeline | numbered("NoEarlierFailures", i) >> beam.Create([]))
        joined[numbered("done", i)] = done_i | numbered("KeyDone", i) >> beam.Map(
            lambda track_id: (track_id, True))
        joined[numbered("failed", i)] = failed_i | numbered("KeyFailed", i) >> beam.Map(
            lambda row: (row.get("track_id"), row.get("audio_uri")))
    dead_tags = [numbered(DEAD_LETTERS, i) for i in range(len(outputs))]
    tracks = (joined
              | "JoinByTrack" >> beam.CoGroupByKey()
              | "PickOnePerTrack" >> beam.ParDo(PickOnePerTrack(
                  len(outputs), options.retry_dead_letters)).with_outputs(
                  *dead_tags, main="tracks"))
    computed = tracks.tracks | "Spectrograms" >> beam.ParDo(ComputeSpectrograms(
        params, outputs, isolate=options.isolate_decoding, decoders=options.decoder_count,
        timeout_s=options.decode_timeout_s, torch_threads=options.torch_threads,
        expected=expected, **options.limits)).with_outputs(
        *[numbered(MELS, i) for i in range(1, len(outputs))], *dead_tags, main=MELS)
    return tuple(
        MelOutputs(mels=computed[numbered(MELS, i)], dead_letters=(
            (tracks[tag], computed[tag]) | numbered("CollectDeadLetters", i) >> beam.Flatten()))
        for i, tag in enumerate(dead_tags))


def mel_table(rows: Sequence[dict], schema: pa.Schema = schemas.MEL_SHARD) -> pa.Table:
    """A batch of MEL_SHARD rows (``mel`` as flat arrays of their ``dtype``) as one table."""
    return pa.Table.from_arrays([
        pa.array([row["track_id"] for row in rows], pa.string()),
        pa.array([row["n_mels"] for row in rows], pa.int32()),
        pa.array([row["n_frames"] for row in rows], pa.int32()),
        pa.array([row["dtype"] for row in rows], pa.string()),
        mels.encode([row["mel"] for row in rows], rows[0]["dtype"] if rows else "float32"),
    ], schema=schema)


class CountingFile(io.RawIOBase):
    """A file pyarrow can write to that counts the bytes it passes on to ``handle``
    (the sink's ``byte_counter``, which Beam's shard bound reads)."""

    def __init__(self, handle) -> None:
        super().__init__()
        self.handle, self.bytes_written = handle, 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.bytes_written += len(data)
        self.handle.write(data)
        return len(data)


def parquet_writer(where, schema: pa.Schema) -> pq.ParquetWriter:
    """A writer of spectrogram shards: dictionary encoding for the string columns only,
    and no codec (see ParquetTableSink)."""
    strings = [field.name for field in schema if pa.types.is_string(field.type)]
    return pq.ParquetWriter(where, schema, compression="none", use_dictionary=strings)


class ParquetTableSink(FileBasedSink):
    """Writes pyarrow Tables to Parquet files, each table one row group; a file is
    closed and another begun once ``max_bytes`` are written to it (Beam's own shard
    bound, checked after each table).

    Dictionary encoding is used for string columns only. Spectrograms are stored
    uncompressed: on real music's float16 log-mel values zstd saves 14% of the bytes
    and lz4 2%, while reading them back takes 3x and 1.5x as long
    (benchmarks/mel_reader.py).
    """

    def __init__(self, file_path_prefix: str, schema: pa.Schema,
                 file_name_suffix: str = layout.PARQUET, max_bytes: int | None = None) -> None:
        super().__init__(file_path_prefix, coder=None, file_name_suffix=file_name_suffix,
                         mime_type="application/x-parquet",
                         compression_type=CompressionTypes.UNCOMPRESSED,
                         max_bytes_per_shard=max_bytes)
        self.schema = schema

    def open(self, temp_path: str):
        # what FileBasedSink.open does, with a byte counter pyarrow accepts as a file
        handle = FileSystems.create(temp_path, self.mime_type, self.compression_type)
        self.byte_counter = CountingFile(handle)
        return handle, parquet_writer(self.byte_counter, self.schema)

    def write_record(self, file_and_writer, table: pa.Table) -> None:
        file_and_writer[1].write_table(table, row_group_size=max(1, table.num_rows))

    def close(self, file_and_writer) -> None:
        handle, writer = file_and_writer
        writer.close()
        super().close(handle)


class WriteShards(beam.PTransform):
    """(spectrogram rows, dead letters) of one output -> mels-*.parquet and
    dead_letters-*.parquet in ``directory``, both with ``params`` in their metadata.

    Spectrograms are batched into row groups holding about ``row_group_mb`` MiB of
    spectrogram values each (the last of a worker's batches may be smaller), in shards
    of about ``shard_mb`` MiB at most; an empty output still yields a readable Parquet
    file with the schema.
    """

    def __init__(self, directory: str | os.PathLike, params: MelParams,
                 row_group_mb: float = SpectrogramOptions.row_group_mb,
                 shard_mb: float = SpectrogramOptions.shard_mb) -> None:
        super().__init__()
        self.directory, self.params = directory, params
        self.row_group_mb, self.shard_mb = row_group_mb, shard_mb

    def expand(self, outputs: tuple[beam.PCollection, beam.PCollection]) -> None:
        mel_rows, dead_letters = outputs
        row_group_bytes = int(self.row_group_mb * 2**20)
        schema = mel_schema(self.params)
        (mel_rows
         | "BatchMels" >> beam.BatchElements(
             min_batch_size=row_group_bytes, max_batch_size=row_group_bytes,
             element_size_fn=lambda row: row["mel"].nbytes, record_metrics=False)
         | "ToArrow" >> beam.Map(mel_table, schema)
         | "WriteMels" >> beam.io.Write(
             ParquetTableSink(os.path.join(self.directory, layout.MELS_PREFIX), schema,
                              max_bytes=int(self.shard_mb * 2**20))))
        (dead_letters
         | "WriteDeadLetters" >> beam.io.WriteToParquet(
             os.path.join(self.directory, layout.DEAD_LETTERS_PREFIX),
             dead_letter_schema(self.params), file_name_suffix=layout.PARQUET))


def write(outputs: MelOutputs, directory: str | os.PathLike, params: MelParams,
          row_group_mb: float = SpectrogramOptions.row_group_mb,
          shard_mb: float = SpectrogramOptions.shard_mb, label: str = "Write") -> None:
    """Write one output of :func:`build` to ``directory`` (see :class:`WriteShards`);
    ``label`` names the step, one per output of a graph."""
    (outputs.mels, outputs.dead_letters) | label >> WriteShards(directory, params,
                                                                row_group_mb, shard_mb)
