"""Fold-in: tonight's plays into the factor space of an earlier full refit.

A full ALS refit learns a new space every time (rotations, sign flips), and everything
trained on the last one must follow. Between refits a night keeps the refit's space:
its item factors stay, every user whose plays changed since the refit is solved
exactly against them (ALS's user step), then every track whose plays changed (new
tracks with plays included) is solved against the users (the item step). Both steps
are the normal equations of the objective in jobs/als/job.py, solved one row per
user or track on the executors:

    (Y'Y + Y' (C_u - I) Y + reg * n_u * I) x_u = Y' C_u p_u

Users and tracks whose plays did not change keep the refit's factors; those with no
play tonight are dropped, as a refit would drop them.

A refit writes a digest of every user's and every track's plays (user_digests/,
track_digests/) for the nights after it to compare with.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from schemas import layout
from schemas.config import AlsParams

logger = logging.getLogger(__name__)


def digests(plays: DataFrame, key: str, other: str) -> DataFrame:
    """(id, digest) for every ``key`` of ``plays``: a hash of its sorted (other, plays)."""
    pairs = F.concat_ws(":", F.col(other), F.col("plays").cast("string"))
    return (plays.groupBy(key)
            .agg(F.sha2(F.concat_ws(";", F.array_sort(F.collect_list(pairs))), 256)
                 .alias("digest"))
            .select(F.col(key).alias("id"), "digest"))


def plays_digest(user_digests: DataFrame) -> str:
    """One digest of every play, from the users' (``digests`` by user): their hashes
    combined by exclusive or, so that the order of rows does not matter."""
    row = user_digests.agg(F.bit_xor(F.xxhash64("id", "digest")).alias("xor"),
                           F.count("*").alias("users")).first()
    return f"{(row.xor or 0) & (2**64 - 1):016x}.{row.users}"


def changed(plays: DataFrame, base: Path, key: str, other: str, table: str) -> DataFrame:
    """(``key``) of the rows of ``plays`` whose plays differ from the refit's at ``base``
    (new ones included)."""
    before = plays.sparkSession.read.parquet(str(base / table))
    return (digests(plays, key, other)
            .join(before, ["id", "digest"], "left_anti")
            .select(F.col("id").alias(key)))


def new_share(track_plays: DataFrame, base: Path) -> float:
    """The share of tonight's plays (by count) that changed since the refit at ``base``:
    what each track gained or lost, over tonight's total."""
    before = (track_plays.sparkSession.read.parquet(str(base / layout.TRACK_PLAYS))
              .select("track_id", F.col("plays").alias("before")))
    change = F.abs(F.coalesce("plays", F.lit(0)) - F.coalesce("before", F.lit(0)))
    row = (track_plays.join(before, "track_id", "full")
           .agg(F.sum(change).alias("changed"), F.sum("plays").alias("total"))
           .first())
    return float(row["changed"] or 0) / max(float(row["total"] or 0), 1.0)


def gram(factors: DataFrame) -> np.ndarray:
    """Sum of x x' over the rows of a factor table, summed on the executors."""
    def partial(rows):
        block = np.array([row.factors for row in rows], np.float64)
        if len(block):
            yield block.T @ block
    return factors.select("factors").rdd.mapPartitions(partial).treeReduce(np.add)


def solve(rows: DataFrame, key: str, other_gram: np.ndarray, params: AlsParams) -> DataFrame:
    """(``key``, factors) solving the normal equations of every ``key`` of ``rows``
    ((key, factors of the other side, strength)): Spark's implicit ALS step, its
    regularisation reg times the row's number of plays included."""
    rank = other_gram.shape[0]
    shared = rows.sparkSession.sparkContext.broadcast(other_gram)
    alpha, reg = params.alpha, params.reg

    def one(group: pd.DataFrame) -> pd.DataFrame:
        y = np.stack(group["factors"].to_numpy()).astype(np.float64)
        c1 = alpha * group["strength"].to_numpy(np.float64)  # confidence - 1
        a = shared.value + (y.T * c1) @ y + reg * len(y) * np.eye(rank)
        b = ((1.0 + c1)[:, None] * y).sum(axis=0)
        x = np.linalg.solve(a, b).astype(np.float32)
        return pd.DataFrame({key: [group[key].iloc[0]], "factors": [x.tolist()]})

    return rows.groupBy(key).applyInPandas(one, schema=f"{key} string, factors array<float>")


@dataclass(frozen=True)
class Folded:
    """A fold-in night's factors and how many rows it solved."""
    users: DataFrame
    items: DataFrame
    solved_users: int
    solved_tracks: int


def step(plays: DataFrame, kept: DataFrame, other: DataFrame, moved: DataFrame, key: str,
         other_key: str, params: AlsParams) -> tuple[DataFrame, int]:
    """One half of a fold-in: the rows of ``key`` in ``moved`` solved against ``other``'s
    factors, the rest of ``kept`` kept where they still have plays; (the factors, how
    many were solved)."""
    rows = (plays.join(moved, key).join(other, other_key).select(key, "factors", "strength"))
    solved = solve(rows, key, gram(other), params).cache()
    tonight = plays.select(key).distinct()
    return (kept.join(tonight, key).join(moved, key, "left_anti").unionByName(solved).cache(),
            solved.count())


def fold_in(plays: DataFrame, base: Path, params: AlsParams) -> Folded:
    """Tonight's usable ``plays`` (user_id, track_id, plays) folded into the space of
    the refit at ``base``: see the module's docstring."""
    spark = plays.sparkSession
    plays = plays.withColumn("strength", F.log1p(F.col("plays") / params.eps))
    items = spark.read.parquet(str(base / layout.ITEM_FACTORS)).select("track_id", "factors")
    users = spark.read.parquet(str(base / layout.USER_FACTORS)).select("user_id", "factors")
    moved = changed(plays, base, "user_id", "track_id", layout.USER_DIGESTS).cache()
    users, n_users = step(plays, users, items, moved, "user_id", "track_id", params)
    moved = changed(plays, base, "track_id", "user_id", layout.TRACK_DIGESTS).cache()
    items, n_tracks = step(plays, items, users, moved, "track_id", "user_id", params)
    logger.info("fold-in: %d users and %d tracks with changed plays solved in the space of %s",
                n_users, n_tracks, base)
    return Folded(users, items, n_users, n_tracks)
