"""Ask the latest published factors: similar tracks, a track's audience, a user's mix.

    python -m jobs.query similar --track ID        tracks nearest by cosine, among those
                                                   with plays (the known tracks it is
                                                   like; --among cold or all for others)
    python -m jobs.query audience --track ID       users of highest x_u . y_i who do not
                                                   play it yet (a new release's from the
                                                   published audience table)
    python -m jobs.query recommend --user ID       tracks of highest x_u . y_i that the
                                                   user has not played, with a share of
                                                   cold tracks (--cold-share)

Reads DATA_ROOT/published/latest (--published to read another directory of
snapshots); ``similar`` searches the snapshot's index (jobs/index.py) when it was
built from the snapshot's factors, and exactly otherwise. Prints a table naming each
track by title and artist (the snapshot's catalogue), its score, where its factors
came from ("als": plays, "audio": the audio model, "als+audio": a few plays held
toward the audio) and, when the snapshot has them, its top tags from the pretrained
taggers (jobs/tags.py; "-" for a track they never heard), or JSON with --json. An id the snapshot does not know is an error
naming it. ``recommend`` and ``audience`` leave out what was played, as the snapshot
keeps it (jobs/publish.py; else the plays file it was made from; --plays to read
others; Parquet).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import schemas
from schemas import arrow, cli, factor_matrix, layout, storage
from schemas.config import IndexConfig, QueryConfig
from schemas.metrics import unit_rows
from schemas.neighbours import ShardedIndex
from schemas.played import Played
from schemas.ranking import top_k

logger = logging.getLogger(__name__)
USER_SLICE = 65_536  # users scored at once when every user is: 8 MiB of factors at rank 32


class Snapshot:
    """One published snapshot, opened without reading it whole: the tracks' factors and
    sources (every query needs them) are read at once; a user's factors, the users of
    an audience, and the names and tags of the tracks answered, as they are asked for."""

    def __init__(self, published: Path):
        self.path = layout.latest(published).resolve()
        manifest = self.path / layout.SNAPSHOT_MANIFEST
        if not manifest.exists():
            raise cli.JobError(f"{published}: no published snapshot (no {layout.latest(published)}"
                               f"/{layout.SNAPSHOT_MANIFEST}); run the workflow first")
        self.manifest = json.loads(manifest.read_text())
        self.users_path = self.path / layout.SNAPSHOT_USERS
        self.tracks = storage.read_table(self.path / layout.SNAPSHOT_TRACKS, schemas.TRACK_FACTORS)
        self.track_ids = self.tracks.column("track_id").to_pylist()
        self.sources = self.tracks.column("source").to_pylist()

    def index(self):
        """The snapshot's similar-track index (jobs/index.py), or None when it has none
        or it was built from other factors (then the search is exact)."""
        folder = self.path / layout.INDEX
        if not (folder / layout.INDEX_MANIFEST).exists():
            return None
        built = json.loads((folder / layout.INDEX_MANIFEST).read_text())
        ids = pq.ParquetFile(folder / layout.INDEX_IDS).read().column("track_id").to_pylist()
        if built["factor_table"] != schemas.factors_version(self.tracks) or ids != self.track_ids:
            logger.warning("%s was built from other factors than the snapshot's; searching "
                           "exactly", folder)
            return None
        return ShardedIndex.load(folder)

    def unknown(self, kind: str, wanted: str, known: int) -> cli.JobError:
        return cli.JobError(f"{kind} {wanted!r} is not in the snapshot {self.path.name} "
                            f"({known} {kind}s)")

    def track_row(self, track_id: str) -> int:
        """The row of ``track_id``; an error naming it when the snapshot does not know it."""
        try:
            return self.track_ids.index(track_id)
        except ValueError:
            raise self.unknown("track", track_id, len(self.track_ids)) from None

    def user_row(self, user_id: str) -> int:
        """The row of ``user_id`` in the user table (sorted by id): the one row group
        whose statistics can hold it is read, for its ids only."""
        reader = pq.ParquetFile(self.users_path)
        leaf = reader.schema_arrow.names.index("user_id")
        offset = 0
        for group in range(reader.num_row_groups):
            meta = reader.metadata.row_group(group)
            stats = meta.column(leaf).statistics
            if stats is None or not stats.has_min_max or stats.min <= user_id <= stats.max:
                ids = reader.read_row_group(group, columns=["user_id"]).column(0)
                found = pc.index_in(arrow.strings([user_id]), value_set=ids)
                if found.null_count == 0:
                    return offset + found[0].as_py()
            offset += meta.num_rows
        raise self.unknown("user", user_id, offset)

    def user_ids(self, rows: np.ndarray) -> list[str]:
        """The ids of the users at ``rows``: only the row groups holding them are read."""
        reader = pq.ParquetFile(self.users_path)
        starts = np.cumsum([0] + [reader.metadata.row_group(g).num_rows
                                  for g in range(reader.num_row_groups)])
        groups = np.searchsorted(starts, rows, side="right") - 1
        ids = {}
        for group in np.unique(groups):
            column = reader.read_row_group(int(group), columns=["user_id"]).column(0)
            inside = rows[groups == group]
            ids.update(zip(inside.tolist(), column.take(arrow.indices(
                inside - starts[group])).to_pylist()))
        return [ids[row] for row in rows.tolist()]

    def user_rows(self, user_ids: set[str]) -> np.ndarray:
        """The rows of those of ``user_ids`` the snapshot holds (the id column is read)."""
        column = pq.ParquetFile(self.users_path).read(columns=["user_id"]).column(0)
        rows = pc.index_in(arrow.strings(sorted(user_ids)), value_set=column)
        return arrow.values(rows.drop_null()).astype(np.int64)

    def user_factors(self) -> np.ndarray:
        """Every user's factors, memory-mapped (a snapshot published before the matrix
        file: its table, read whole)."""
        path = self.path / layout.SNAPSHOT_USER_MATRIX
        if path.exists():
            return np.load(path, mmap_mode="r")
        return factor_matrix(storage.read_table(self.users_path, schemas.USER_FACTORS))

    def played(self, given: Path | None, by: str, row: int, key: str) -> np.ndarray | None:
        """Rows of what the user (``by`` "user_id") or the track ("track_id") at ``row``,
        id ``key``, was played with: from ``given`` plays, else the snapshot's own,
        else the plays file the snapshot was made from; None when there are none."""
        kept = Played.of(self.path / layout.SNAPSHOT_PLAYED) if given is None else None
        if kept is not None:
            return kept.tracks_of(row) if by == "user_id" else kept.users_of(row)
        plays = given or self.plays()
        if plays is None:
            return None
        other = "track_id" if by == "user_id" else "user_id"
        ids = played_by(plays, key, by, other)
        if by == "track_id":
            return self.user_rows(ids)
        return np.array([j for j, t in enumerate(self.track_ids) if t in ids], np.int64)

    def top_users(self, y: np.ndarray, n: int, leave_out: np.ndarray) -> list[dict]:
        """The ``n`` users of highest x_u . ``y`` but the rows ``leave_out``, best first
        (ties to the earlier user): the users' factors read a slice at a time."""
        path = self.path / layout.SNAPSHOT_USER_MATRIX
        slices = storage.matrix_slices(path, USER_SLICE) if path.exists() \
            else [self.user_factors()]
        scores = np.concatenate([np.zeros(0, np.float32), *(x @ y for x in slices)])
        scores[leave_out] = -np.inf
        best, best_scores = top_k(scores[None, :], min(n, int(np.isfinite(scores).sum())))
        return [{"user_id": user, "score": round(float(score), 4)}
                for user, score in zip(self.user_ids(best[0]), best_scores[0])]

    def audience_of(self, track_id: str) -> list[dict]:
        """A new release's users from the snapshot's audience table, best first; none when
        the snapshot has no table or the track is not in it."""
        path = self.path / layout.AUDIENCE
        if not path.exists():
            return []
        rows = storage.read_where(path, "track_id", [track_id], ["user_id", "score", "rank"]
                                  ).sort_by("rank").to_pylist()
        return [{"user_id": r["user_id"], "score": round(float(r["score"]), 4)} for r in rows]

    def plays(self) -> Path | None:
        """The plays file the snapshot was made from, if it says."""
        found = self.manifest.get("inputs", {}).get("plays")
        return Path(found) if found else None

    def answered(self, rows: list[int], scores: list[float]) -> list[dict]:
        """The tracks at ``rows`` with their ``scores``, named by the snapshot's catalogue
        and, when the snapshot has them, with their top tags: both read for these rows only."""
        wanted = [self.track_ids[row] for row in rows]
        names = self.read_rows(self.path / layout.SNAPSHOT_CATALOGUE, ["title", "artist"], wanted)
        # (a snapshot that says none of its tracks was tagged shows no tags column)
        tags = self.read_rows(self.path / layout.SNAPSHOT_TRACKS, ["tags"], wanted) \
            if self.manifest.get("tagged_tracks", 1) else None
        found = []
        for row, track_id, score in zip(rows, wanted, scores):
            title, artist = names.get(track_id, (None, None))
            found.append({"track_id": track_id, "title": title, "artist": artist,
                          "score": round(float(score), 4), "source": self.sources[row]})
            if tags is not None:
                found[-1]["tags"] = tags.get(track_id, (None,))[0]
        return found

    @staticmethod
    def read_rows(path: Path, columns: list[str], track_ids: list[str]) -> dict | None:
        """{track id: its ``columns``} of the tracks wanted, or None when the file or a
        column is missing (snapshots published before tags, or without a catalogue)."""
        if not path.exists() or not set(columns) <= set(pq.read_schema(path).names):
            return None
        table = storage.read_where(path, "track_id", track_ids, ["track_id", *columns])
        return dict(zip(table.column("track_id").to_pylist(),
                        zip(*(table.column(c).to_pylist() for c in columns))))


# which tracks a similar-track search may answer with, by where their factors came from
AMONG = {"all": lambda source: True,
         "warm": lambda source: source != "audio",  # factors from plays ("als", "als+audio")
         "cold": lambda source: source == "audio"}
# Warm by default: predicted factors of one style crowd together (they come from one
# model), so a cold track's nearest tracks would mostly be other cold ones at near-tied
# cosines, which tell a listener nothing; known tracks do.
DEFAULT_AMONG = "warm"


def similar(snap: Snapshot, track_id: str, n: int, among: str = DEFAULT_AMONG) -> list[dict]:
    """The ``n`` tracks nearest to ``track_id`` by the cosine of their factors, of the
    kind ``among`` names (AMONG): from the snapshot's index when it was built from
    these factors, asking it for more neighbours until enough are of that kind, else
    exact."""
    row = snap.track_row(track_id)
    y = factor_matrix(snap.tracks)
    allowed = np.array([AMONG[among](source) for source in snap.sources])
    allowed[row] = False  # not itself
    n = min(n, int(allowed.sum()))
    index = snap.index()
    if index is not None:
        k = n + 1
        while True:
            ids, distances = index.query(y[row], k=k, query_ef=max(IndexConfig.query_ef, k))
            hits = [(int(j), 1 - d) for j, d in zip(ids, distances) if allowed[j]]
            if len(hits) >= n or k == len(y):
                return snap.answered(*zip(*hits[:n])) if n else []
            k = min(4 * k, len(y))
    cosine = unit_rows(y) @ unit_rows(y[row:row + 1])[0]
    cosine[~allowed] = -np.inf
    best, scores = top_k(cosine[None, :], n)
    return snap.answered(list(best[0]), list(scores[0]))


def audience(snap: Snapshot, track_id: str, n: int, plays: Path | None = None) -> list[dict]:
    """The ``n`` users of highest predicted preference for ``track_id`` who do not play it
    yet: a new release's read from the snapshot's audience table (jobs/audience.py) where
    it holds as many; else computed, leaving out the track's listeners (Snapshot.played)."""
    row = snap.track_row(track_id)
    published = snap.audience_of(track_id)
    if len(published) >= n:
        return published[:n]
    listeners = snap.played(plays, "track_id", row, track_id)
    if listeners is None:
        if snap.sources[row] != "audio":
            logger.warning("%s has plays but the snapshot keeps none and names no plays file: "
                           "its listeners are not left out (give --plays)", track_id)
        listeners = np.zeros(0, np.int64)
    return snap.top_users(factor_matrix(snap.tracks)[row], n, listeners)


def played_by(plays: Path, who: str, column: str = "user_id",
              wanted: str = "track_id") -> set[str]:
    """The ``wanted`` ids of the plays whose ``column`` is ``who`` (by default: the tracks
    a user played), from a Parquet file or directory (schemas.PLAYS)."""
    try:
        table = storage.read_where(plays, column, [who], [wanted])
    except (OSError, ValueError, pa.ArrowInvalid) as err:
        raise cli.JobError(f"{plays}: cannot read the plays (Parquet with user_id and "
                           f"track_id): {err}") from None
    return set(table.column(wanted).to_pylist())


def recommend(snap: Snapshot, user_id: str, n: int, cold_share: float,
              plays: Path | None = None) -> list[dict]:
    """The ``n`` tracks of highest x_u . y_i the user has not played (Snapshot.played):
    about ``cold_share`` of them cold (factors from audio), the rest warm, each part
    the best of its kind, merged by score."""
    row = snap.user_row(user_id)
    scores = factor_matrix(snap.tracks) @ np.asarray(snap.user_factors()[row])
    played = snap.played(plays, "user_id", row, user_id)
    if played is None:
        raise cli.JobError(f"{snap.path}: the snapshot keeps no plays and does not say which "
                           "plays it was made from; give --plays")
    open_ = np.ones(len(snap.track_ids), bool)
    open_[played] = False
    cold = np.array([s == "audio" for s in snap.sources])
    n_cold = min(int(round(n * cold_share)), int((open_ & cold).sum()))
    n_warm = min(n - n_cold, int((open_ & ~cold).sum()))
    n_cold = min(n - n_warm, int((open_ & cold).sum()))  # fill up with cold when warm run out
    picked = []
    for mask, count in ((open_ & cold, n_cold), (open_ & ~cold, n_warm)):
        rows = np.flatnonzero(mask)
        best, _ = top_k(scores[rows][None, :], count)
        picked += list(rows[best[0]])
    picked.sort(key=lambda j: (-scores[j], j))
    return snap.answered(picked, [scores[j] for j in picked])


def cell(value: object) -> str:
    """A value as a table shows it: "-" for none, a list (of tags) comma-separated."""
    if value is None:
        return "-"
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def render(rows: list[dict]) -> str:
    """A plain table of ``rows`` (the keys of the first as columns)."""
    if not rows:
        return "(nothing)"
    columns = list(rows[0])
    cells = [[cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def shared_options(parser: argparse.ArgumentParser, here: bool = True) -> argparse.ArgumentParser:
    """--published, --json and -n, on the command or (``here`` False) on each query, so
    that they go anywhere on the line: a query's copy sets nothing unless given, and
    never undoes what was given before the query's name."""
    published = layout.DataRoot(layout.data_root()).published
    parser.add_argument("--published", type=Path, default=published,
                        help="directory of the published snapshots (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    cli.add_settings(parser, QueryConfig, only=("top",), aliases={"top": "-n"})
    if not here:
        for action in parser._actions:
            if action.dest in ("published", "json", "top"):
                action.default = argparse.SUPPRESS
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = shared_options(argparse.ArgumentParser(
        prog="python -m jobs.query", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter))
    commands = parser.add_subparsers(dest="command", required=True)

    def query(name: str, what: str) -> argparse.ArgumentParser:
        return shared_options(commands.add_parser(name, help=what), here=False)
    near = query("similar", "tracks nearest to a track")
    near.add_argument("--track", required=True)
    near.add_argument("--among", choices=list(AMONG), default=DEFAULT_AMONG,
                      help="answer with warm tracks only (factors from plays: the known "
                           "tracks it is like), cold ones only (factors from audio), or any "
                           "(default %(default)s)")
    listen = query("audience", "users most likely to like a track, who do not play it yet")
    listen.add_argument("--track", required=True)
    listen.add_argument("--plays", type=Path,
                        help="plays whose listeners to leave out (default: those the snapshot "
                             "was made from)")
    mix = query("recommend", "tracks for a user")
    mix.add_argument("--user", required=True)
    cli.add_settings(mix, QueryConfig, only=("cold_share",))
    mix.add_argument("--plays", type=Path,
                     help="plays to leave out (default: those the snapshot was made from)")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error("-n must be at least 1")
    if args.command == "recommend" and not 0.0 <= args.cold_share <= 1.0:
        parser.error("--cold-share must be between 0 and 1")
    return args


def answer(args: argparse.Namespace) -> list[dict]:
    snap = Snapshot(args.published)
    if args.command == "similar":
        return similar(snap, args.track, args.top, args.among)
    if args.command == "audience":
        return audience(snap, args.track, args.top, args.plays)
    return recommend(snap, args.user, args.top, args.cold_share, args.plays)


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    args = parse_args(argv)

    def body() -> None:
        rows = answer(args)
        print(json.dumps(rows, indent=2) if args.json else render(rows))
    return cli.run_job(body, logger, ValueError)


if __name__ == "__main__":
    sys.exit(main())
