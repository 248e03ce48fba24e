"""The Beam graph of the spectrogram job: catalogue rows -> log-mel rows and dead letters.

Every step is labelled; a track's failure becomes a dead letter (track id, URI,
stage, error), while a broken environment (see decode.is_systemic) fails the graph.
Build it with :func:`build`, write it with :func:`write`; jobs.spectrograms.job runs it.
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
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filebasedsink import FileBasedSink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

import schemas
from jobs.spectrograms.decode import DecodeError, is_systemic
from jobs.spectrograms.mel import prepare, spectrogram
from jobs.spectrograms.pool import IsolatedDecoder, take_decoder
from schemas import cli, layout, mels
from schemas.config import MelParams, SpectrogramOptions

logger = logging.getLogger(__name__)

# The tag of the dead-letter outputs.
DEAD_LETTERS = "dead_letters"
# Beam counters of the job, read back after the run.
COUNTERS = "spectrograms"


def mel_schema(params: MelParams) -> pa.Schema:
    return schemas.with_metadata(schemas.MEL_SHARD, params.to_dict())


def dead_letter_schema(params: MelParams) -> pa.Schema:
    return schemas.with_metadata(schemas.DEAD_LETTERS, params.to_dict())


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


class ComputeSpectrograms(beam.DoFn):
    """Catalogue row -> schemas.MEL_SHARD row, mel flattened in the parameters' dtype;
    failures -> dead letters (stage "decode" or "mel").

    A track's work is ``spectrogram`` (mel.spectrogram's signature; tests replace it).
    With ``isolate`` it runs in ``decoders`` child processes (:class:`IsolatedDecoder`),
    so that a crash in FFmpeg costs one track, not the worker. Each child keeps
    QUEUED tracks queued so that it never waits for this process; rows come out as the
    children finish them, the last ones at the end of the bundle. Without ``isolate``,
    tracks are done here, one at a time.
    """

    # Tracks queued per child: one being done, one waiting.
    QUEUED = 2

    instances = itertools.count(1)  # in this process: names each worker's progress log

    def __init__(self, params: MelParams, *, isolate: bool = True, decoders: int = 1,
                 timeout_s: float = SpectrogramOptions.decode_timeout_s,
                 torch_threads: int = SpectrogramOptions.torch_threads,
                 min_duration_s: float = 0.0, max_bytes: int | None = None,
                 max_duration_s: float | None = None,
                 spectrogram: Callable[..., np.ndarray] = spectrogram,
                 expected: int | None = None) -> None:
        self.params = params
        self.expected = expected  # tracks of the whole job, for the progress log
        self.isolate = isolate
        self.decoders = decoders
        self.timeout_s = timeout_s
        self.torch_threads = torch_threads
        self.limits = {"min_duration_s": min_duration_s, "max_bytes": max_bytes,
                       "max_duration_s": max_duration_s}
        self.spectrogram = spectrogram

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
                    self.spectrogram))
                for _ in range(self.decoders)]
        else:
            prepare(self.params, self.torch_threads)
            self._compute = functools.partial(self.spectrogram, params=self.params,
                                              **self.limits)

    def start_bundle(self) -> None:
        self._rows = {child: collections.deque() for child in self._children}  # queued rows

    def process(self, row: dict) -> Iterator:
        self.progress.add()
        if not self.isolate:
            yield from self._result(row, functools.partial(self._compute, row["audio_uri"]))
            return
        while sum(child.queued for child in self._children) >= self.QUEUED * len(self._children):
            yield from self._finished()
        child = min(self._children, key=lambda child: child.queued)
        child.send(row["audio_uri"])
        self._rows[child].append(row)

    def finish_bundle(self) -> Iterator:
        while any(child.queued for child in self._children):
            for output in self._finished():
                if isinstance(output, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(
                        output.tag, GlobalWindows.windowed_value(output.value))
                else:
                    yield GlobalWindows.windowed_value(output)

    def _finished(self) -> Iterator:
        """The outputs of the children that have a result, once one has or the oldest
        deadline has passed (its track then times out)."""
        busy = [child for child in self._children if child.queued]
        wait_s = max(0.0, min(child.deadline for child in busy) - time.monotonic())
        ready = multiprocessing.connection.wait([child.connection for child in busy], wait_s)
        for child in busy:
            if child.connection in ready or child.deadline <= time.monotonic():
                yield from self._result(self._rows[child].popleft(), child.receive)

    def _result(self, row: dict, compute: Callable[[], np.ndarray]) -> Iterator:
        try:
            mel = compute()
        except Exception as err:  # one bad file must never fail the bundle...
            if is_systemic(err):  # ...but a broken environment must stop the job
                raise
            if isinstance(err, DecodeError):
                yield beam.pvalue.TaggedOutput(DEAD_LETTERS, _dead_letter(row, err.stage, err))
            else:
                yield beam.pvalue.TaggedOutput(DEAD_LETTERS, _dead_letter(
                    row, DecodeError.stage, f"{type(err).__name__}: {err}"))
            return
        yield {"track_id": row["track_id"], "n_mels": mel.shape[0], "n_frames": mel.shape[1],
               "dtype": self.params.dtype, "mel": mel.reshape(-1)}

    def teardown(self) -> None:
        for child in self._children:
            child.close()


def decoder_settings(params: MelParams, timeout_s: float, limits: dict, torch_threads: int,
                     spectrogram: Callable[..., np.ndarray] = spectrogram) -> dict:
    """IsolatedDecoder's keyword arguments for the job's children: each computes
    ``spectrogram`` per track, after mel.prepare."""
    return {"timeout_s": timeout_s, "decode": spectrogram,
            "warm_up": functools.partial(prepare, params, torch_threads), **limits}


@dataclasses.dataclass(frozen=True)
class MelOutputs:
    mels: beam.PCollection          # schemas.MEL_SHARD rows, "mel" a flat ndarray of "dtype"
    dead_letters: beam.PCollection  # schemas.DEAD_LETTERS rows


def in_part(row: dict, part: int, parts: int) -> bool:
    """Whether the catalogue ``row`` belongs to ``part`` of ``parts``: by a stable hash
    of its track id, so a track's duplicates share its part."""
    return zlib.crc32((row.get("track_id") or "").encode()) % parts == part


def build(rows: beam.PCollection, params: MelParams,
          options: SpectrogramOptions = SpectrogramOptions(),
          done: beam.PCollection | None = None,
          failed: beam.PCollection | None = None, part: tuple[int, int] = (0, 1),
          expected: int | None = None) -> MelOutputs:
    """Spectrograms of catalogue ``rows`` (dicts with track_id and audio_uri).

    done: track ids that already have spectrograms; they are skipped. failed:
    dead-letter rows (dicts with track_id and audio_uri) of earlier published runs;
    tracks whose audio_uri is among them are skipped unless
    ``options.retry_dead_letters``. Grouping by track id joins the three (nothing is
    held in memory whole), removes duplicates and spreads the tracks over the workers.
    ``part`` (index, count) keeps only the rows of that part of the catalogue;
    ``expected``, the number of catalogue rows, is for the progress log.
    """
    if part[1] > 1:
        rows = rows | "ThisPart" >> beam.Filter(in_part, *part)
    if done is None:
        done = rows.pipeline | "NoEarlierSpectrograms" >> beam.Create([])
    if failed is None:
        failed = rows.pipeline | "NoEarlierFailures" >> beam.Create([])
    tracks = (
        {"rows": rows | "KeyRows" >> beam.Map(lambda row: (row.get("track_id"), row)),
         "done": done | "KeyDone" >> beam.Map(lambda track_id: (track_id, True)),
         "failed": failed | "KeyFailed" >> beam.Map(
             lambda row: (row.get("track_id"), row.get("audio_uri")))}
        | "JoinByTrack" >> beam.CoGroupByKey()
        | "PickOnePerTrack" >> beam.ParDo(
            PickOnePerTrack(options.retry_dead_letters)).with_outputs(
            DEAD_LETTERS, main="tracks"))
    computed = tracks.tracks | "Spectrograms" >> beam.ParDo(ComputeSpectrograms(
        params, isolate=options.isolate_decoding, decoders=options.decoder_count,
        timeout_s=options.decode_timeout_s, torch_threads=options.torch_threads,
        expected=expected, **options.limits)).with_outputs(DEAD_LETTERS, main="mels")
    dead_letters = ((tracks[DEAD_LETTERS], computed[DEAD_LETTERS])
                    | "CollectDeadLetters" >> beam.Flatten())
    return MelOutputs(mels=computed.mels, dead_letters=dead_letters)


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


def write(outputs: MelOutputs, directory: str | os.PathLike, params: MelParams,
          row_group_mb: float = SpectrogramOptions.row_group_mb,
          shard_mb: float = SpectrogramOptions.shard_mb) -> None:
    """Write ``outputs`` as mels-*.parquet and dead_letters-*.parquet in ``directory``.

    Spectrograms are batched into row groups holding about ``row_group_mb`` MiB of
    spectrogram values each (the last of a worker's batches may be smaller), in shards
    of about ``shard_mb`` MiB at most; an empty output still yields a readable Parquet
    file with the schema.
    """
    row_group_bytes = int(row_group_mb * 2**20)
    schema = mel_schema(params)
    (outputs.mels
     | "BatchMels" >> beam.BatchElements(
         min_batch_size=row_group_bytes, max_batch_size=row_group_bytes,
         element_size_fn=lambda row: row["mel"].nbytes, record_metrics=False)
     | "ToArrow" >> beam.Map(mel_table, schema)
     | "WriteMels" >> beam.io.Write(
         ParquetTableSink(os.path.join(directory, layout.MELS_PREFIX), schema,
                          max_bytes=int(shard_mb * 2**20))))
    (outputs.dead_letters
     | "WriteDeadLetters" >> beam.io.WriteToParquet(
         os.path.join(directory, layout.DEAD_LETTERS_PREFIX), dead_letter_schema(params),
         file_name_suffix=layout.PARQUET))
