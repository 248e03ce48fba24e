"""Implicit-feedback ALS (weighted matrix factorisation) on a play-count table.

Runs under spark-submit (the master comes from spark-submit), as
``python -m jobs.als``, or from the Luigi chain:

    spark-submit jobs/als/job.py --plays plays.parquet --out /data/als --rank 50
    spark-submit --master yarn jobs/als/job.py --plays hdfs:///msd/train_triplets.txt \\
        --out /data/als --format triplets --blocks 64

Inputs: Parquet, CSV with a header line, or the MSD Taste Profile triplets
(``user<TAB>song<TAB>count``, no header), chosen by --format or the extension.
Every row that cannot be used (malformed line, empty id, missing, non-numeric or
non-positive count) goes to quarantine/ with its reason; duplicate (user, track)
rows are summed. The job fails, naming the input, when the unusable fraction of
rows is above --max-bad-fraction.

Objective. The paper's confidence is c = 1 + alpha * log(1 + r / eps). Spark's
implicit ALS uses c = 1 + alpha * r', so we feed it r' = log(1 + r / eps) and the
confidences are the same (van den Oord et al. 2013, eq. 2). Spark then minimises

    sum_{u,i} c_ui (p_ui - x_u . y_i)^2 + reg * (sum_u n_u |x_u|^2 + sum_i n_i |y_i|^2)

over all (user, track) pairs, p_ui = 1 for played pairs, 0 otherwise; n_u and n_i
count the plays of user u and track i. That is the paper's eq. 3 with the
regularisation of each row scaled by its number of plays ("ALS-WR"), so ``--reg``
is per play, not the paper's lambda.

Output directory (appears atomically, every table a directory of Parquet parts):
    user_factors/  schemas.USER_FACTORS      item_factors/  schemas.ITEM_FACTORS
    user_ids/      schemas.USER_IDS          track_ids/     schemas.TRACK_IDS
    quarantine/    schemas.QUARANTINED_PLAYS (rows that could not be used, with why)
    heldout_plays/ schemas.PLAYS, with --holdout only: the held-out tracks' plays
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import logging
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from py4j.protocol import Py4JJavaError
from pyspark import StorageLevel
from pyspark.errors import PySparkException
from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import NumericType, StringType, StructField, StructType

import schemas
from jobs.als import foldin
from schemas import cli, inputs, layout, model_file, storage
from schemas.config import (NO_HOLDOUT, AlsParams, AlsTuning, FoldInConfig, InputOptions,
                            SemiColdConfig, TrackHoldout)
from schemas.inputs import PlaysInputError, local_path, plays_format

logger = logging.getLogger(__name__)

# Text readers put a line whose number of fields is wrong here (Spark's PERMISSIVE mode).
MALFORMED = "_malformed_line"



@dataclass(frozen=True)
class ValidPlays:
    """Validated plays: ``usable`` (user_id, track_id, plays double, one row per
    pair), ``quarantined`` (schemas.QUARANTINED_PLAYS columns) and the number of
    input rows per reason (None: usable)."""
    usable: DataFrame
    quarantined: DataFrame
    row_counts: dict


def _column(name: str) -> Column:
    """A column by its exact name, even with dots or spaces in it."""
    return F.col("`" + name.replace("`", "``") + "`")


def _read_text(spark: SparkSession, plays_path: str, names: list[str], delimiter: str,
               header: bool) -> DataFrame:
    """Delimited text, every field a string; a line with the wrong number of fields
    keeps what it has and its raw text in MALFORMED."""
    schema = StructType([StructField(name, StringType()) for name in names]
                        + [StructField(MALFORMED, StringType())])
    return (spark.read.schema(schema).option("sep", delimiter).option("header", header)
            .option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", MALFORMED)
            .csv(plays_path))


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def extract(spark: SparkSession, plays_path: str, options: InputOptions = InputOptions()) -> DataFrame:
    """Read a play-count table as columns user_id, track_id (strings) and plays
    (as stored: numeric in Parquet, text otherwise), plus MALFORMED for text input.

    Raises PlaysInputError naming ``plays_path`` when it cannot be read or lacks
    a column.
    """
    fmt = plays_format(plays_path, options.format)
    wanted = [options.user_column, options.track_column, options.plays_column]
    try:
        if fmt == "parquet":
            table = spark.read.parquet(plays_path)
        elif fmt == "csv":
            header = spark.read.option("header", True).option("sep", options.delimiter).csv(plays_path)
            table = _read_text(spark, plays_path, header.columns, options.delimiter, header=True)
        else:
            wanted = list(schemas.PLAYS.names)
            table = _read_text(spark, plays_path, wanted, "\t", header=False)
    except (PySparkException, Py4JJavaError) as err:
        raise PlaysInputError(f"cannot read plays from {plays_path} as {fmt} (set --format "
                              f"if that is wrong): {_first_line(err)}") from err
    missing = [name for name in wanted if name not in table.columns]
    if missing:
        raise PlaysInputError(
            f"{plays_path} ({fmt}) has no column {missing}; it has {table.columns}. Name the "
            "columns with --user-column/--track-column/--plays-column, or set --format")
    columns = [_column(wanted[0]).cast("string").alias("user_id"),
               _column(wanted[1]).cast("string").alias("track_id"),
               _column(wanted[2]).alias("plays")]
    if MALFORMED in table.columns:
        columns.append(MALFORMED)
    return table.select(*columns)


def tag_rows(plays: DataFrame) -> DataFrame:
    """Add ``count`` (the play count as a double) and ``reason`` (why the row
    cannot be used; null when it can) to extracted plays."""
    raw = F.col("plays")
    if isinstance(plays.schema["plays"].dataType, NumericType):
        missing, count = raw.isNull(), raw.cast("double")
    else:
        text = F.trim(raw.cast("string"))
        missing, count = raw.isNull() | (text == ""), text.try_cast("double")

    def empty(name: str) -> Column:
        return F.col(name).isNull() | (F.trim(name) == "")

    malformed = F.col(MALFORMED).isNotNull() if MALFORMED in plays.columns else F.lit(False)
    reason = (F.when(malformed, "malformed line")
              .when(empty("user_id"), "empty user_id")
              .when(empty("track_id"), "empty track_id")
              .when(missing, "missing play count")
              .when(count.isNull() | F.isnan(count) | (F.abs(count) == float("inf")),
                    "non-numeric play count")
              .when(count <= 0, "non-positive play count"))
    return plays.withColumn("count", count).withColumn("reason", reason)


def split_valid(plays: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Split extracted plays into (usable, quarantined).

    Usable rows have non-empty ids and a positive, finite count; duplicates of a
    (user, track) pair are summed into one row (plays: double). Quarantined rows
    keep their raw values (plays as text) and carry a ``reason``.
    """
    tagged = tag_rows(plays)
    quarantined = (tagged.where(F.col("reason").isNotNull())
                   .select("user_id", "track_id", F.col("plays").cast("string").alias("plays"),
                           "reason"))
    usable = (tagged.where(F.col("reason").isNull())
              .groupBy("user_id", "track_id").agg(F.sum("count").alias("plays")))
    return usable, quarantined


def row_counts(plays: DataFrame) -> dict:
    """Number of extracted rows per quarantine reason; key None counts usable rows."""
    return {row["reason"]: row["count"]
            for row in tag_rows(plays).groupBy("reason").count().collect()}


def check_bad_fraction(counts: dict, plays_path: str, max_bad_fraction: float,
                       quarantined: DataFrame | None = None) -> None:
    """Raise PlaysInputError naming ``plays_path`` when no row is usable or the
    unusable fraction of rows is above ``max_bad_fraction``; a few of the
    ``quarantined`` rows are shown as examples."""
    total = sum(counts.values())
    bad = dict(sorted((reason, n) for reason, n in counts.items() if reason is not None))
    n_bad = sum(bad.values())
    if total == 0:
        raise PlaysInputError(f"{plays_path}: no rows")
    if n_bad < total and n_bad / total <= max_bad_fraction:
        return
    examples = [] if quarantined is None else [row.asDict() for row in quarantined.limit(3).collect()]
    shown = "".join(f"\n  {row}" for row in examples)
    what = (f"none of its {total} rows can be used" if n_bad == total else
            f"{n_bad} of {total} rows ({n_bad / total:.2%}) cannot be used, above the bound of "
            f"{max_bad_fraction:.2%} (--max-bad-fraction)")
    raise PlaysInputError(f"{plays_path}: {what}: {bad}" + (f"; for example:{shown}" if shown else ""))


def read_valid_plays(spark: SparkSession, plays_path: str,
                     options: InputOptions = InputOptions()) -> ValidPlays:
    """Extract and validate plays, logging the count of each kind of bad row and
    of duplicates. Both tables come back persisted (unpersist them when done).

    Raises PlaysInputError naming ``plays_path`` when it cannot be read, or when
    the unusable fraction passes ``options.max_bad_fraction``.
    """
    raw = extract(spark, plays_path, options).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        try:
            counts = row_counts(raw)  # the first full read: a broken file shows up here
        except (PySparkException, Py4JJavaError) as err:
            raise PlaysInputError(f"cannot read plays from {plays_path}: "
                                  f"{_first_line(err)}") from err
        usable, quarantined = split_valid(raw)
        check_bad_fraction(counts, plays_path, options.max_bad_fraction, quarantined)
        usable = usable.persist(StorageLevel.MEMORY_AND_DISK)
        quarantined = quarantined.persist(StorageLevel.MEMORY_AND_DISK)
        n_pairs = usable.count()
        quarantined.count()
    finally:
        raw.unpersist()
    n_rows, n_valid = sum(counts.values()), counts.get(None, 0)
    for reason, n in sorted((r, n) for r, n in counts.items() if r is not None):
        logger.warning("%s: %d rows quarantined: %s", plays_path, n, reason)
    logger.info("%s: %d rows, %d usable, %d quarantined, %d duplicate (user, track) rows; "
                "%d distinct pairs", plays_path, n_rows, n_valid, n_rows - n_valid,
                n_valid - n_pairs, n_pairs)
    return ValidPlays(usable, quarantined, counts)


# Why a usable play is set aside when its track is unknown to the catalogue.
NOT_IN_CATALOGUE = "track not in catalogue"


def restrict_to_catalogue(spark: SparkSession, plays: ValidPlays, plays_path: str,
                          catalogue_path: str) -> ValidPlays:
    """Set aside, with their reason, the usable plays of tracks the catalogue does not
    list: they would get factors no track can be served with.

    Raises PlaysInputError naming both files when no play names a catalogue track.
    """
    try:
        listed = spark.read.parquet(catalogue_path).select("track_id").distinct()
    except (PySparkException, Py4JJavaError) as err:
        raise PlaysInputError(f"cannot read the catalogue {catalogue_path}: "
                              f"{_first_line(err)}") from err
    inside = plays.usable.join(listed, "track_id", "left_semi").persist(
        StorageLevel.MEMORY_AND_DISK)
    outside = plays.usable.join(listed, "track_id", "left_anti").select(
        "user_id", "track_id", F.col("plays").cast("string").alias("plays"),
        F.lit(NOT_IN_CATALOGUE).alias("reason"))
    n_outside = outside.count()
    if inside.count() == 0:
        raise PlaysInputError(f"no play of {plays_path} names a track of the catalogue "
                              f"{catalogue_path}: are they from the same service?")
    quarantined = plays.quarantined.unionByName(outside).persist(StorageLevel.MEMORY_AND_DISK)
    quarantined.count()
    plays.usable.unpersist()
    plays.quarantined.unpersist()
    if n_outside:
        logger.warning("%s: %d (user, track) pairs name tracks that the catalogue %s does not "
                       "list; quarantined", plays_path, n_outside, catalogue_path)
    return ValidPlays(inside, quarantined, {**plays.row_counts, NOT_IN_CATALOGUE: n_outside})


def hold_out_tracks(plays: DataFrame, holdout: TrackHoldout,
                    artists: DataFrame | None = None) -> tuple[DataFrame, DataFrame]:
    """Split usable plays into (train, held out): every play of ``holdout.fraction`` of
    the tracks goes to the held-out side.

    Stratified by artist (``artists``: track_id, artist) and popularity: the tracks,
    ordered by artist, then listeners, then a seeded hash, are sampled systematically
    (every 1/fraction-th from a seeded offset), so each artist and each popularity
    level loses its share and the split depends on the data and the seed only.
    """
    tracks = plays.groupBy("track_id").agg(F.count(F.lit(1)).alias("_listeners"))
    tracks = (tracks.join(artists, "track_id", "left") if artists is not None
              else tracks.withColumn("artist", F.lit(None).cast("string")))
    order = Window.orderBy(F.coalesce("artist", F.lit("")), F.desc("_listeners"),
                           F.xxhash64(F.lit(holdout.seed), "track_id"), "track_id")
    offset = np.random.default_rng(holdout.seed).random()
    position = (F.row_number().over(order) - 1).cast("double")
    chosen = (F.floor((position + 1) * holdout.fraction + offset)
              > F.floor(position * holdout.fraction + offset))
    held = tracks.withColumn("_held", chosen).where("_held").select("track_id")
    return plays.join(held, "track_id", "left_anti"), plays.join(held, "track_id", "left_semi")


def catalogue_artists(spark: SparkSession, catalogue_path: str) -> DataFrame | None:
    """(track_id, artist) of the catalogue, or None when it has no artist column."""
    catalogue = spark.read.parquet(catalogue_path)
    return catalogue.select("track_id", "artist") if "artist" in catalogue.columns else None


def index_ids(plays: DataFrame, column: str, index_column: str) -> DataFrame:
    """A dense int index 0..n-1 of the distinct values of ``column``, in sorted order.

    Sorting first makes the dictionary the same on every run over the same data.
    Distributed: each sorted partition numbers its rows, offset by the sizes of the
    partitions before it. Returns a persisted DataFrame (unpersist when done).
    """
    ordered = (plays.select(column).distinct().orderBy(column)
               .withColumn("_position", F.monotonically_increasing_id())  # (partition << 33) + row
               .persist(StorageLevel.MEMORY_AND_DISK))
    partition = F.shiftrightunsigned("_position", 33)
    sizes = ordered.groupBy(partition.alias("_partition")).count().orderBy("_partition").collect()
    offsets, total = [], 0
    for row in sizes:
        offsets.append((row["_partition"], total))
        total += row["count"]
    if total >= 2 ** 31:
        raise ValueError(f"{total} distinct {column} values: more than Spark's ALS can index")
    offset_of = ordered.sparkSession.createDataFrame(offsets, "_partition long, _offset long")
    indexed = (ordered.withColumn("_partition", partition)
               .join(F.broadcast(offset_of), "_partition")
               .select(column, (F.col("_offset") + F.col("_position").bitwiseAND((1 << 33) - 1))
                       .cast("int").alias(index_column))
               .persist(StorageLevel.MEMORY_AND_DISK))
    indexed.count()
    ordered.unpersist()
    return indexed


def ratings(plays: DataFrame, user_ids: DataFrame, track_ids: DataFrame, eps: float) -> DataFrame:
    """Indexed plays as Spark's implicit ratings: (user_index, track_index, strength).

    strength = log(1 + plays / eps) (float), so that Spark's confidence
    1 + alpha * strength is the paper's c = 1 + alpha * log(1 + r / eps).
    """
    return (plays.join(user_ids, "user_id").join(track_ids, "track_id")
            .select("user_index", "track_index",
                    F.log1p(F.col("plays") / eps).cast("float").alias("strength")))


class AlsProgress:
    """While open, logs every cli.PROGRESS_EVERY_S seconds which iteration Spark's ALS is
    in, the time so far and the time left: ALS itself says nothing until it ends.

    Spark runs each implicit ALS half-iteration's Gram matrix (YtY) as a job of its own
    (an ``aggregate`` of the factors), two per iteration; the jobs of a job group of our
    own are counted through Spark's status tracker.
    """

    groups = itertools.count(1)

    def __init__(self, spark: SparkSession, iterations: int):
        self.context, self.iterations = spark.sparkContext, iterations
        self.tracker = self.context.statusTracker()
        self.group = f"coldstart-als-{next(AlsProgress.groups)}"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def halves_done(self) -> int:
        """Half-iterations finished: the group's succeeded ``aggregate`` jobs."""
        done = 0
        for job in self.tracker.getJobIdsForGroup(self.group):
            info = self.tracker.getJobInfo(job)
            stage = self.tracker.getStageInfo(max(info.stageIds)) if info and info.stageIds else None
            done += bool(info and info.status == "SUCCEEDED" and stage
                         and stage.name.startswith("aggregate"))
        return done

    def watch(self) -> None:
        started = self.started
        first = None  # when the first half-iteration was done: the set-up before it is not
        while not self.stop.wait(cli.PROGRESS_EVERY_S):
            halves, now = self.halves_done(), time.monotonic()
            if halves and first is None:
                first = (now, halves)
            left = ""
            if first is not None and halves > first[1]:
                per_half = (now - first[0]) / (halves - first[1])
                left = f", about {cli.duration(per_half * (2 * self.iterations - halves))} left"
            logger.info("ALS: iteration %d of %d, %s%s", min(halves // 2 + 1, self.iterations),
                        self.iterations, cli.duration(now - started), left)

    def __enter__(self) -> "AlsProgress":
        self.context.setJobGroup(self.group, "ALS")
        self.started = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        if exc[0] is None:  # (the count of jobs can run past two per iteration: Spark
            # runs more aggregates than the Gram matrices, at the start and the end)
            logger.info("ALS: %d of %d iterations done, %s", self.iterations,
                        self.iterations, cli.duration(time.monotonic() - self.started))


def fit(data: DataFrame, params: AlsParams, tuning: AlsTuning = AlsTuning()) -> ALSModel:
    """Fit implicit ALS on ``ratings``-shaped data (user_index, track_index, strength).

    ``params.blocks`` None uses Spark's default of 10 blocks (run() resolves it to
    the session's parallelism first). Spark keeps the final factors persisted at
    ``tuning.final_storage``.
    """
    if tuning.cache_ratings:
        data = data.persist(StorageLevel.MEMORY_AND_DISK)
    blocks = params.blocks or 10
    als = ALS(rank=params.rank, maxIter=params.iterations, regParam=params.reg,
              implicitPrefs=True, alpha=params.alpha, seed=params.seed,
              checkpointInterval=params.checkpoint_interval,
              numUserBlocks=blocks, numItemBlocks=blocks,
              intermediateStorageLevel=tuning.intermediate_storage,
              finalStorageLevel=tuning.final_storage,
              userCol="user_index", itemCol="track_index", ratingCol="strength")
    with AlsProgress(data.sparkSession, params.iterations):
        model = als.fit(data)
    if tuning.cache_ratings:
        data.unpersist()
    return model


def transform(plays: DataFrame, user_ids: DataFrame, track_ids: DataFrame,
              params: AlsParams, tuning: AlsTuning = AlsTuning()) -> ALSModel:
    """Fit implicit ALS with the paper's log confidence on usable, indexed plays."""
    return fit(ratings(plays, user_ids, track_ids, params.eps), params, tuning)


def named_factors(factors: DataFrame, ids: DataFrame, id_column: str,
                  index_column: str) -> DataFrame:
    """Attach string ids to Spark's (id, features) factor table."""
    return (factors.join(ids, factors["id"] == ids[index_column])
            .select(id_column, F.col("features").alias("factors")))


def write_parquet(df: DataFrame, directory: Path, schema: pa.Schema,
                  params: dict | None = None) -> int:
    """Write ``df`` as Parquet parts conforming to ``schema``, one per partition.

    Each executor writes its partition with pyarrow (so files carry our schema and
    metadata, not Spark's), named by partition id so a retried task overwrites its
    own part. ``directory`` must be visible to every executor. Returns rows written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = str(directory)
    file_schema = schemas.with_metadata(schema, params)

    def write_partition(batches):
        from pyspark import TaskContext
        path = f"{target}/part-{TaskContext.get().partitionId():05d}.parquet"
        rows = 0
        with pq.ParquetWriter(path, file_schema) as writer:
            for batch in batches:
                table = schemas.conform(pa.Table.from_batches([batch]), schema)
                writer.write_table(table.replace_schema_metadata(file_schema.metadata))
                rows += batch.num_rows
        yield pa.RecordBatch.from_pydict({"rows": [rows]})

    written = sum(row.rows for row in df.mapInArrow(write_partition, "rows long").collect())
    if not any(directory.glob("*.parquet")):  # no partition at all: still a readable table
        pq.write_table(file_schema.empty_table(), directory / "part-00000.parquet")
    logger.info("wrote %d rows to %s", written, directory)
    return written


def resolve_blocks(spark: SparkSession, params: AlsParams) -> AlsParams:
    """``params`` with ``blocks`` set: as given, else the session's parallelism."""
    if params.blocks:
        return params
    return dataclasses.replace(params, blocks=spark.sparkContext.defaultParallelism)


def run(spark: SparkSession, plays_path: str, out: Path, params: AlsParams,
        checkpoint_dir: str | None = None, options: InputOptions = InputOptions(),
        tuning: AlsTuning = AlsTuning(), catalogue_path: str | None = None,
        holdout: TrackHoldout = NO_HOLDOUT,
        semi_cold: int = SemiColdConfig.max_listeners, base: Path | None = None,
        max_new_share: float = FoldInConfig.max_new_share) -> None:
    """Extract, validate, factorise and write every output table under ``out``.

    With ``catalogue_path``, plays of tracks it does not list are quarantined. With a
    ``holdout`` fraction, the plays of that share of the tracks (stratified by the
    catalogue's artists when there is one) are written to heldout_plays/ instead of
    being learned from. Every play of the tracks with at most ``semi_cold``
    listeners goes to sparse_plays/, for scoring to blend with their audio. With
    ``base``, an earlier refit's output, the plays are folded into its factor space
    (jobs/als/foldin.py) unless more than ``max_new_share`` of them are new since or
    its settings differ: then it is a full refit. Raises PlaysInputError (nothing
    written) when the input cannot be used.
    """
    params = resolve_blocks(spark, params)
    if base is not None and holdout.fraction > 0:
        raise cli.UsageError("a fold-in (--base) learns every play: it takes no hold-out")
    with storage.atomic_dir(out) as tmp:
        # Without a checkpoint directory Spark silently skips checkpointing, and long
        # runs die of StackOverflowError on the factors' lineage.
        spark.sparkContext.setCheckpointDir(checkpoint_dir or str(tmp / "_checkpoints"))
        plays = read_valid_plays(spark, plays_path, options)
        if catalogue_path is not None:
            plays = restrict_to_catalogue(spark, plays, plays_path, catalogue_path)
        n_bad = write_parquet(plays.quarantined, tmp / layout.QUARANTINE, schemas.QUARANTINED_PLAYS)
        learned = plays.usable
        if holdout.fraction > 0:
            artists = catalogue_artists(spark, catalogue_path) if catalogue_path else None
            learned, held = hold_out_tracks(plays.usable, holdout, artists)
            learned = learned.persist(StorageLevel.MEMORY_AND_DISK)
            n_held = write_parquet(held.select("user_id", "track_id", F.greatest(
                F.lit(1), F.round("plays")).cast("long").alias("plays")),
                tmp / layout.HELDOUT_PLAYS, schemas.PLAYS, dataclasses.asdict(holdout))
            logger.info("held out every play of %.0f%% of the tracks (%d plays) for evaluation",
                        100 * holdout.fraction, n_held)
        write_play_counts(learned, tmp, semi_cold)
        night = night_kind(spark, base, params, tmp, max_new_share)
        if night["night"] == "fold-in":
            folded = foldin.fold_in(learned, base, params)
            meta = {**dataclasses.asdict(params), **night}
            n_users = write_parquet(folded.users, tmp / layout.USER_FACTORS,
                                    schemas.USER_FACTORS, meta)
            n_items = write_parquet(folded.items, tmp / layout.ITEM_FACTORS,
                                    schemas.ITEM_FACTORS, meta)
        else:
            n_users, n_items = refit(learned, params, tuning, tmp, night)
        for table in (plays.usable, learned, plays.quarantined):
            table.unpersist()
        if checkpoint_dir is None:
            shutil.rmtree(tmp / "_checkpoints", ignore_errors=True)
    logger.info("ALS %s, rank %d, %d blocks: %d users, %d tracks, %d quarantined rows -> %s",
                night["night"], params.rank, params.blocks, n_users, n_items, n_bad, out)


def night_kind(spark: SparkSession, base: Path | None, params: AlsParams, out: Path,
               max_new_share: float) -> dict:
    """What tonight is, recorded with the factors: {"night": "fold-in", "base": the
    refit's directory name, its factor space, "new_share"} or {"night": "refit"} with
    why when a ``base`` was offered. ``out`` holds tonight's track_plays/."""
    if base is None:
        return {"night": "refit"}
    learned = storage.read_params(base / layout.ITEM_FACTORS)
    settings = ("rank", "reg", "alpha", "eps")
    if any(learned.get(name) != getattr(params, name) for name in settings):
        why = "its settings differ from tonight's"
    elif not (base / layout.USER_DIGESTS).exists():
        why = "it recorded no digests of its plays"
    else:
        share = foldin.new_share(spark.read.parquet(str(out / layout.TRACK_PLAYS)), base)
        if share <= max_new_share:
            logger.info("fold-in: %.1f%% of tonight's plays are new or gone since the refit %s "
                        "(refit above %.1f%%)", 100 * share, base, 100 * max_new_share)
            return {"night": "fold-in", "base": base.name,
                    model_file.FACTOR_SPACE: learned[model_file.FACTOR_SPACE],
                    "new_share": round(share, 6)}
        why = f"{100 * share:.1f}% of tonight's plays are new or gone since it (above " \
              f"{100 * max_new_share:.1f}%)"
    logger.info("full refit instead of folding into %s: %s", base, why)
    return {"night": "refit", "instead_of_base": base.name, "why": why}


def refit(learned: DataFrame, params: AlsParams, tuning: AlsTuning, out: Path,
          night: dict) -> tuple[int, int]:
    """Full ALS on ``learned``, written under ``out`` with the digests of its plays
    that later fold-in nights compare theirs with; (users, tracks) written."""
    # Every ALS refit learns a space of its own (rotations, sign flips): its factors
    # carry an id of that space, and a model trained on them records it. The same plays
    # and settings give the same factors (seeded), so the same space: the id is made
    # from them, and a rerun's models are the same files.
    user_digests = foldin.digests(learned, "user_id", "track_id").persist(StorageLevel.MEMORY_AND_DISK)
    learned_from = json.dumps({**dataclasses.asdict(params),
                               "plays": foldin.plays_digest(user_digests)}, sort_keys=True)
    meta = {**dataclasses.asdict(params), **night,
            model_file.FACTOR_SPACE: hashlib.sha1(learned_from.encode()).hexdigest()[:32]}
    user_ids = index_ids(learned, "user_id", "user_index")
    track_ids = index_ids(learned, "track_id", "track_index")
    model = transform(learned, user_ids, track_ids, params, tuning)
    write_parquet(user_ids, out / layout.USER_IDS, schemas.USER_IDS)
    write_parquet(track_ids, out / layout.TRACK_IDS, schemas.TRACK_IDS)
    n_users = write_parquet(named_factors(model.userFactors, user_ids, "user_id", "user_index"),
                            out / layout.USER_FACTORS, schemas.USER_FACTORS, meta)
    n_items = write_parquet(named_factors(model.itemFactors, track_ids, "track_id", "track_index"),
                            out / layout.ITEM_FACTORS, schemas.ITEM_FACTORS, meta)
    write_parquet(user_digests, out / layout.USER_DIGESTS, schemas.PLAY_DIGESTS)
    write_parquet(foldin.digests(learned, "track_id", "user_id"), out / layout.TRACK_DIGESTS,
                  schemas.PLAY_DIGESTS)
    for table in (user_ids, track_ids, user_digests):
        table.unpersist()
    return n_users, n_items


def write_play_counts(learned: DataFrame, out: Path, semi_cold: int) -> None:
    """track_plays/: listeners and plays of every track; sparse_plays/: every play of
    the tracks with at most ``semi_cold`` listeners."""
    counts = learned.select("user_id", "track_id", F.greatest(
        F.lit(1), F.round("plays")).cast("long").alias("plays"))
    per_track = (counts.groupBy("track_id")
                 .agg(F.count("*").alias("listeners"), F.sum("plays").alias("plays"))
                 .persist(StorageLevel.MEMORY_AND_DISK))
    write_parquet(per_track, out / layout.TRACK_PLAYS, schemas.TRACK_PLAYS)
    sparse = per_track.filter(F.col("listeners") <= semi_cold).select("track_id")
    n = write_parquet(counts.join(sparse, "track_id").select("user_id", "track_id", "plays"),
                      out / layout.SPARSE_PLAYS, schemas.PLAYS, {"max_listeners": semi_cold})
    per_track.unpersist()
    logger.info("%d plays of tracks with at most %d listeners (semi-cold)", n, semi_cold)


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments that say how to read and validate the plays (InputOptions)."""
    parser.add_argument("--plays", required=True,
                        help="play-count table: a Parquet, CSV or triplet file, or a directory "
                             "of them; any path Spark reads (local, hdfs://, s3a://)")
    cli.add_settings(parser, InputOptions, aliases={"format": "--format"})


def add_als_arguments(parser: argparse.ArgumentParser) -> None:
    """The factorisation's arguments (AlsParams) and speed settings (AlsTuning)."""
    cli.add_settings(parser, AlsParams)
    parser.add_argument("--checkpoint-dir",
                        help="checkpoint directory visible to all executors (HDFS/S3 on a "
                             "cluster); default: a scratch folder inside the output")
    cli.add_settings(parser, AlsTuning)


def input_options(args: argparse.Namespace) -> InputOptions:
    options = cli.settings_from(InputOptions, args)
    return dataclasses.replace(options, delimiter=inputs.delimiter(options.delimiter))


def als_params(args: argparse.Namespace) -> AlsParams:
    return cli.settings_from(AlsParams, args)


def als_tuning(args: argparse.Namespace) -> AlsTuning:
    return cli.settings_from(AlsTuning, args)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="jobs/als/job.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_arguments(parser)
    parser.add_argument("--out", required=True, type=Path,
                        help="output directory; must not exist, appears when complete")
    parser.add_argument("--catalogue",
                        help="catalogue Parquet (schemas.CATALOGUE); plays of tracks it does "
                             "not list are quarantined, and none matching is an error")
    cli.add_settings(parser, NO_HOLDOUT, aliases={"fraction": "--hold-out-tracks",
                                                  "seed": "--hold-out-seed"})
    cli.add_settings(parser, SemiColdConfig, only=("max_listeners",))
    parser.add_argument("--base", type=Path,
                        help="an earlier full refit's output directory: fold tonight's plays "
                             "into its factor space instead of refitting (jobs/als/foldin.py)")
    cli.add_settings(parser, FoldInConfig, only=("max_new_share",))
    add_als_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    args = parse_args(argv)
    return cli.run_job(lambda: run_job(args), logger, PlaysInputError)


def run_job(args: argparse.Namespace) -> None:
    local = local_path(args.plays)
    if local is not None and not local.exists():  # say so before starting Spark
        raise cli.JobError(f"cannot read plays from {args.plays}: no such file or directory")
    if args.out.exists():
        raise cli.UsageError(f"output {args.out} already exists; remove it to rebuild")
    spark = SparkSession.builder.appName("coldstart-als").getOrCreate()
    try:
        run(spark, args.plays, args.out, als_params(args), args.checkpoint_dir,
            input_options(args), als_tuning(args), args.catalogue,
            cli.settings_from(NO_HOLDOUT, args), args.semi_cold_listeners, args.base,
            args.max_new_share)
    finally:
        spark.stop()


if __name__ == "__main__":
    sys.exit(main())
