"""ALS job on a real local Spark session."""
import dataclasses
import gzip
import logging

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import schemas
from jobs.als import job as als
from schemas import factor_matrix, storage
from schemas.config import AlsParams, InputOptions, SemiColdConfig, TrackHoldout
from schemas.inputs import PlaysInputError, plays_format


def checkerboard_plays(n_users=40, n_tracks=20, blocks=2, seed=0) -> pa.Table:
    """Users of block b play (only) tracks of block b: the factors must separate the blocks."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for t in range(n_tracks):
            if u % blocks == t % blocks and rng.random() < 0.6:
                rows.append((f"u{u:03d}", f"t{t:03d}", int(rng.integers(1, 50))))
    users, tracks, plays = zip(*rows)
    return pa.table({"user_id": users, "track_id": tracks, "plays": plays})


@pytest.fixture(scope="module")
def als_out(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("als")
    table = checkerboard_plays()
    bad = pa.table({"user_id": ["u000", None, "", "u001", "u002", "u002"],
                    "track_id": ["t000", "t001", "t002", "t003", "t000", "t000"],
                    "plays": [0, 3, 4, -2, 5, 7]})
    pq.write_table(pa.concat_tables([table, bad]), root / "plays.parquet")
    params = AlsParams(rank=4, iterations=10, reg=0.05)
    options = InputOptions(max_bad_fraction=0.05)  # 4 bad rows of 231
    als.run(spark, str(root / "plays.parquet"), root / "out", params, options=options)
    return root / "out", table, params, options


def test_outputs_follow_schemas(spark, als_out):
    out, _, params, _ = als_out
    for name, schema in [("user_factors", schemas.USER_FACTORS), ("item_factors", schemas.ITEM_FACTORS),
                         ("user_ids", schemas.USER_IDS), ("track_ids", schemas.TRACK_IDS),
                         ("quarantine", schemas.QUARANTINED_PLAYS)]:
        for part in (out / name).glob("*.parquet"):
            found = pq.read_schema(part)
            assert found.names == schema.names, name
            assert [f.type for f in schemas.conform(found.empty_table(), schema).schema] == schema.types
    meta = schemas.params_of(pq.read_schema(next((out / "item_factors").glob("*.parquet"))))
    assert meta["rank"] == params.rank and meta["alpha"] == params.alpha
    assert meta["blocks"] == spark.sparkContext.defaultParallelism, "the block count used is recorded"
    assert not list(out.parent.glob(".tmp-*")), "temporary directory left behind"
    assert not (out / "_checkpoints").exists()


def test_factors_recover_blocks(als_out):
    out, table, params, _ = als_out
    users = storage.read_table(out / "user_factors", schemas.USER_FACTORS)
    items = storage.read_table(out / "item_factors", schemas.ITEM_FACTORS)
    x, y = factor_matrix(users), factor_matrix(items)
    assert x.shape[1] == y.shape[1] == params.rank
    user_block = np.array([int(u[1:]) % 2 for u in users.column("user_id").to_pylist()])
    item_block = np.array([int(t[1:]) % 2 for t in items.column("track_id").to_pylist()])
    scores = x @ y.T
    same = user_block[:, None] == item_block[None, :]
    assert scores[same].mean() > 0.5 and scores[~same].mean() < 0.2


def test_bad_rows_quarantined_and_duplicates_summed(als_out):
    out, table, _, _ = als_out
    quarantined = storage.read_table(out / "quarantine", schemas.QUARANTINED_PLAYS).to_pylist()
    reasons = sorted(r["reason"] for r in quarantined)
    assert reasons == ["empty user_id", "empty user_id", "non-positive play count",
                       "non-positive play count"]
    ids = storage.read_table(out / "user_ids", schemas.USER_IDS)
    assert sorted(ids.column("user_index").to_pylist()) == list(range(ids.num_rows))
    assert None not in ids.column("user_id").to_pylist() and "" not in ids.column("user_id").to_pylist()


def test_listeners_and_plays_of_every_track_and_the_semi_cold_plays(als_out):
    out, table, _, _ = als_out
    pairs: dict[tuple[str, str], int] = {}
    for row in table.to_pylist() + [{"user_id": "u002", "track_id": "t000", "plays": 12}]:
        key = (row["user_id"], row["track_id"])
        pairs[key] = pairs.get(key, 0) + row["plays"]
    listeners: dict[str, set] = {}
    plays: dict[str, int] = {}
    for (user, track), n in pairs.items():
        listeners.setdefault(track, set()).add(user)
        plays[track] = plays.get(track, 0) + n
    counts = storage.read_table(out / "track_plays", schemas.TRACK_PLAYS).to_pylist()
    assert {r["track_id"]: (r["listeners"], r["plays"]) for r in counts} == \
        {t: (len(listeners[t]), plays[t]) for t in plays}
    sparse = storage.read_table(out / "sparse_plays", schemas.PLAYS).to_pylist()
    few = {t for t, users in listeners.items() if len(users) <= SemiColdConfig.max_listeners}
    assert few and few != set(listeners)  # the case has both kinds
    assert sorted((r["user_id"], r["track_id"], r["plays"]) for r in sparse) == \
        sorted((u, t, n) for (u, t), n in pairs.items() if t in few)


def test_split_valid_sums_duplicates(spark):
    df = spark.createDataFrame([("a", "x", 2), ("a", "x", 3), ("b", "x", 1)],
                               "user_id string, track_id string, plays long")
    usable, quarantined = als.split_valid(df)
    assert sorted(map(tuple, usable.collect())) == [("a", "x", 5), ("b", "x", 1)]
    assert quarantined.count() == 0


def test_same_seed_same_factors(spark, tmp_path, als_out):
    out, _, params, options = als_out
    als.run(spark, str(out.parent / "plays.parquet"), tmp_path / "again", params, options=options,
            semi_cold=0)
    runs = [storage.read_table(where / "item_factors", schemas.ITEM_FACTORS).sort_by("track_id")
            for where in (out, tmp_path / "again")]
    np.testing.assert_allclose(factor_matrix(runs[0]), factor_matrix(runs[1]), rtol=1e-5, atol=1e-6)
    # the same plays and settings learn the same space: the same id, so the same model files
    spaces = [storage.read_params(where / "item_factors")["factor_space"]
              for where in (out, tmp_path / "again")]
    assert spaces[0] == spaces[1]
    # no track is semi-cold at 0 listeners: an empty table, still readable
    assert storage.read_table(tmp_path / "again" / "sparse_plays", schemas.PLAYS).num_rows == 0


def test_existing_output_is_refused(spark, als_out):
    out, _, params, _ = als_out
    with pytest.raises(FileExistsError):
        als.run(spark, str(out.parent / "plays.parquet"), out, params)


# --- input formats and validation -------------------------------------------------------

TRIPLET_LINES = [
    "u1\tt1\t3", "u1\tt1\t2",      # a duplicate pair: summed to 5
    "u2\tt2",                      # too few fields
    "u3\tt3\t4\textra",            # too many fields
    "u4\tt4\tabc", "u5\tt5\tNaN",  # not numbers
    "\tt6\t2", "u7\t\t2",          # empty ids
    "u8\tt8\t",                    # no count
    "u9\tt9\t-1", "u9\tt10\t0",    # not positive
    "u11\tt11\t 7 ", "u12\tt12\t2.5",
]
EXPECTED_REASONS = {"malformed line": 2, "non-numeric play count": 2, "empty user_id": 1,
                    "empty track_id": 1, "missing play count": 1, "non-positive play count": 2}
EXPECTED_USABLE = [("u1", "t1", 5.0), ("u11", "t11", 7.0), ("u12", "t12", 2.5)]


@pytest.fixture
def dirty_triplets(tmp_path):
    path = tmp_path / "train_triplets.txt"
    path.write_text("\n".join(TRIPLET_LINES) + "\n")
    return path


def test_dirty_triplets_every_row_accounted_for(spark, dirty_triplets):
    plays = als.read_valid_plays(spark, str(dirty_triplets), InputOptions(max_bad_fraction=1.0))
    assert sorted(map(tuple, plays.usable.collect())) == EXPECTED_USABLE
    reasons = [row.reason for row in plays.quarantined.collect()]
    assert {r: reasons.count(r) for r in set(reasons)} == EXPECTED_REASONS
    assert plays.row_counts == {None: 4, **EXPECTED_REASONS}
    assert sum(plays.row_counts.values()) == len(TRIPLET_LINES), "a row went missing"
    raw = {row.user_id: row.plays for row in plays.quarantined.collect()}
    assert raw["u4"] == "abc" and raw["u9"] in ("-1", "0"), "raw values are kept"


def test_too_many_bad_rows_fail_naming_the_input(spark, dirty_triplets, tmp_path):
    with pytest.raises(PlaysInputError, match=str(dirty_triplets)) as failure:
        als.run(spark, str(dirty_triplets), tmp_path / "out", AlsParams(rank=2, iterations=1))
    message = str(failure.value)
    assert "--max-bad-fraction" in message and "malformed line" in message
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("name, write, options", [
    ("plays.parquet", lambda t, p: pq.write_table(t, p), InputOptions()),
    ("plays.csv", lambda t, p: pacsv.write_csv(
        t.rename_columns(["listener", "song", "count"]), p),
     InputOptions(user_column="listener", track_column="song", plays_column="count")),
    ("plays.tsv.gz", lambda t, p: p.write_bytes(gzip.compress("".join(
        f"{u}\t{s}\t{n}\n" for u, s, n in zip(*(t.column(c).to_pylist() for c in t.column_names))
    ).encode())), InputOptions()),
])
def test_formats_by_extension_read_alike(spark, tmp_path, name, write, options):
    table = pa.table({"user_id": ["a", "a", "b", "c"], "track_id": ["x", "x", "x", "y"],
                      "plays": [2, 3, 1, 4]})
    write(table, tmp_path / name)
    plays = als.read_valid_plays(spark, str(tmp_path / name), options)
    assert sorted(map(tuple, plays.usable.collect())) == [("a", "x", 5.0), ("b", "x", 1.0),
                                                          ("c", "y", 4.0)]
    assert plays.row_counts == {None: 4}


def test_format_from_extension_or_directory(tmp_path):
    assert plays_format("hdfs:///msd/train_triplets.txt") == "triplets"
    assert plays_format("s3a://bucket/plays.csv.gz") == "csv"
    assert plays_format("hdfs:///warehouse/plays") == "parquet"
    assert plays_format("plays.data", "csv") == "csv"
    (tmp_path / "part-00000.csv").write_text("user_id,track_id,plays\n")
    (tmp_path / "_SUCCESS").write_text("")
    assert plays_format(str(tmp_path)) == "csv"
    (tmp_path / "part-00001.snappy.parquet").write_bytes(b"")
    with pytest.raises(PlaysInputError, match="several formats"):
        plays_format(str(tmp_path))


def test_unreadable_inputs_fail_naming_the_input(spark, tmp_path):
    missing = tmp_path / "nowhere.parquet"
    not_parquet = tmp_path / "plays.parquet"
    not_parquet.write_text("user_id,track_id,plays\nu,t,1\n")
    wrong_columns = tmp_path / "plays.csv"
    wrong_columns.write_text("user,track,count\nu,t,1\n")
    header_only = tmp_path / "empty.csv"
    header_only.write_text("user_id,track_id,plays\n")
    for path, what in [(missing, "cannot read"), (not_parquet, "cannot read"),
                       (wrong_columns, r"no column \['user_id', 'track_id', 'plays'\]"),
                       (header_only, "no rows")]:
        with pytest.raises(PlaysInputError, match=what) as failure:
            als.read_valid_plays(spark, str(path))
        assert str(path) in str(failure.value)


def test_index_ids_dense_in_sorted_order(spark):
    ids = [f"id{n:04d}" for n in np.random.default_rng(0).permutation(500)]
    plays = spark.createDataFrame([(i,) for i in ids + ids[:50]], "user_id string").repartition(7)
    indexed = als.index_ids(plays, "user_id", "user_index").collect()
    assert sorted((row.user_index, row.user_id) for row in indexed) == list(enumerate(sorted(ids)))


# --- the objective: Spark's factors against a direct NumPy solve -------------------------
#
# Spark's implicit ALS (org.apache.spark.ml.recommendation.ALS.computeFactors, implicit
# branch, with its CholeskySolver) minimises, for confidences c_ui = 1 + alpha * r'_ui,
#
#   sum_{u,i} c_ui (p_ui - x_u . y_i)^2 + reg * (sum_u n_u |x_u|^2 + sum_i n_i |y_i|^2),
#
# every (user, track) pair counted (c = 1, p = 0 where there are no plays), n_u and n_i
# the numbers of played pairs of user u and track i. With r' = log(1 + r / eps) this is
# the paper's eq. 3 with eq. 2's confidence, except that each row's lambda is reg * n
# (ALS-WR) rather than one lambda. Each sweep solves the items given the users, then
# the users given the items, so the final user factors are the exact minimiser given
# the final item factors.

N_USERS, N_TRACKS = 12, 9
EXACT = AlsParams(rank=3, reg=0.5, alpha=2.0, eps=0.5, iterations=40, seed=1, blocks=2)


def small_play_matrix(seed=3, density=0.4) -> np.ndarray:
    """(N_USERS, N_TRACKS) play counts, every row and column with a play."""
    rng = np.random.default_rng(seed)
    played = rng.random((N_USERS, N_TRACKS)) < density
    played[np.arange(N_USERS), rng.integers(N_TRACKS, size=N_USERS)] = True
    played[rng.integers(N_USERS, size=N_TRACKS), np.arange(N_TRACKS)] = True
    return np.where(played, rng.integers(1, 100, (N_USERS, N_TRACKS)), 0)


def exact_rows(fixed: np.ndarray, confidence: np.ndarray, preference: np.ndarray,
               reg: np.ndarray) -> np.ndarray:
    """argmin_x sum_i c_i (p_i - x . f_i)^2 + reg |x|^2 for every row, by dense solves."""
    rows = []
    for c, p, lam in zip(confidence, preference, reg):
        weighted = fixed.T * c
        rows.append(np.linalg.solve(weighted @ fixed + lam * np.eye(fixed.shape[1]), weighted @ p))
    return np.array(rows)


class Objective:
    """Spark's implicit-ALS objective on a dense play matrix (see above)."""

    def __init__(self, plays: np.ndarray, params: AlsParams, confidence=None, per_play=True):
        self.p = (plays > 0).astype(float)
        self.c = (1 + params.alpha * np.log1p(plays / params.eps)) if confidence is None else confidence
        self.reg_users = params.reg * (self.p.sum(1) if per_play else np.ones(len(plays)))
        self.reg_tracks = params.reg * (self.p.sum(0) if per_play else np.ones(plays.shape[1]))

    def __call__(self, x, y):
        return ((self.c * (self.p - x @ y.T) ** 2).sum()
                + (self.reg_users * (x ** 2).sum(1)).sum() + (self.reg_tracks * (y ** 2).sum(1)).sum())

    def users_given(self, y):
        return exact_rows(y, self.c, self.p, self.reg_users)

    def tracks_given(self, x):
        return exact_rows(x, self.c.T, self.p.T, self.reg_tracks)

    def minimise(self, rank, sweeps=300, seed=0):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(self.p.shape[0], rank))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        for _ in range(sweeps):
            y = self.tracks_given(x)
            x = self.users_given(y)
        return x, y


@pytest.fixture(scope="module")
def exact_case(spark, tmp_path_factory):
    """Spark's factors of a small play matrix after 40 sweeps, with a checkpoint dir."""
    root = tmp_path_factory.mktemp("exact")
    plays = small_play_matrix()
    users, tracks = np.nonzero(plays)
    pq.write_table(pa.table({"user_id": [f"u{u:02d}" for u in users],
                             "track_id": [f"t{t:02d}" for t in tracks],
                             "plays": plays[users, tracks]}), root / "plays.parquet")
    als.run(spark, str(root / "plays.parquet"), root / "out", EXACT, str(root / "checkpoints"))
    x = factor_matrix(storage.read_table(root / "out" / "user_factors", schemas.USER_FACTORS)
                      .sort_by("user_id")).astype(float)
    y = factor_matrix(storage.read_table(root / "out" / "item_factors", schemas.ITEM_FACTORS)
                      .sort_by("track_id")).astype(float)
    assert x.shape == (N_USERS, EXACT.rank) and y.shape == (N_TRACKS, EXACT.rank)
    return plays, x, y, root


def test_als_says_which_iteration_it_is_in(spark, caplog, monkeypatch):
    plays = small_play_matrix()
    users, tracks = np.nonzero(plays)
    data = spark.createDataFrame(
        [(int(u), int(t), float(np.log1p(plays[u, t] / EXACT.eps))) for u, t in zip(users, tracks)],
        "user_index int, track_index int, strength float")
    monkeypatch.setattr(als.cli, "PROGRESS_EVERY_S", 0.05)
    params = dataclasses.replace(EXACT, iterations=6, checkpoint_interval=100)
    with caplog.at_level(logging.INFO, logger=als.logger.name):
        als.fit(data, params)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ALS: ")]
    assert lines[-1].startswith("ALS: 6 of 6 iterations done, ")
    seen = [int(line.split()[2]) for line in lines[:-1]]
    assert seen and seen == sorted(seen) and set(seen) <= set(range(1, 7))
    assert all(line.split(", ")[0].endswith(" of 6") for line in lines[:-1])


def test_forty_sweeps_run_checkpointed(exact_case):
    *_, root = exact_case
    assert list((root / "checkpoints").glob("*/rdd-*")), "ALS never checkpointed"


def test_user_factors_are_the_exact_solve_of_the_paper_objective(exact_case):
    plays, x, y, _ = exact_case
    objective = Objective(plays, EXACT)
    np.testing.assert_allclose(x, objective.users_given(y), atol=1e-5)
    # The same solve with another confidence or regularisation lands far away, so
    # the match above pins the objective down.
    others = {"linear confidence": Objective(plays, EXACT, 1 + EXACT.alpha * plays),
              "eps ignored": Objective(plays, dataclasses.replace(EXACT, eps=1.0)),
              "one lambda (paper eq. 3)": Objective(plays, EXACT, per_play=False)}
    for name, other in others.items():
        assert np.abs(other.users_given(y) - x).max() > 1e-2, name


def test_factors_reach_the_numpy_optimum(exact_case):
    plays, x, y, _ = exact_case
    objective = Objective(plays, EXACT)
    x_np, y_np = objective.minimise(EXACT.rank)
    assert objective(x, y) == pytest.approx(objective(x_np, y_np), rel=1e-5)
    np.testing.assert_allclose(x @ y.T, x_np @ y_np.T, atol=2e-3)  # factors up to a rotation
    np.testing.assert_allclose(y, objective.tracks_given(x), atol=1e-3)


def test_plays_of_tracks_outside_the_catalogue_are_quarantined(spark, tmp_path):
    plays = checkerboard_plays(n_users=12, n_tracks=8)
    pq.write_table(plays, tmp_path / "plays.parquet")
    listed = sorted(set(plays.column("track_id").to_pylist()))[:6]  # t006, t007 unknown
    pq.write_table(pa.table({"track_id": listed}), tmp_path / "catalogue.parquet")

    als.run(spark, str(tmp_path / "plays.parquet"), tmp_path / "out",
            AlsParams(rank=2, iterations=2), catalogue_path=str(tmp_path / "catalogue.parquet"))

    quarantined = pq.read_table(tmp_path / "out" / "quarantine").to_pylist()
    unknown = {row["track_id"] for row in quarantined if row["reason"] == als.NOT_IN_CATALOGUE}
    assert unknown == {"t006", "t007"}
    items = pq.read_table(tmp_path / "out" / "item_factors").column("track_id").to_pylist()
    assert sorted(items) == listed

    pq.write_table(pa.table({"track_id": ["x1", "x2"]}), tmp_path / "other.parquet")
    with pytest.raises(PlaysInputError, match=f"no play of {tmp_path / 'plays.parquet'} names "
                                              f"a track of the catalogue {tmp_path / 'other.parquet'}"):
        als.run(spark, str(tmp_path / "plays.parquet"), tmp_path / "out2",
                AlsParams(rank=2, iterations=2), catalogue_path=str(tmp_path / "other.parquet"))
    assert not (tmp_path / "out2").exists()


def test_track_holdout_is_stratified_by_artist_and_keeps_every_play(spark, tmp_path):
    plays = checkerboard_plays(n_users=30, n_tracks=40)
    pq.write_table(plays, tmp_path / "plays.parquet")
    tracks = sorted(set(plays.column("track_id").to_pylist()))
    artist = {t: f"artist{i % 4}" for i, t in enumerate(tracks)}  # 10 tracks each
    pq.write_table(pa.table({"track_id": tracks, "artist": [artist[t] for t in tracks]}),
                   tmp_path / "catalogue.parquet")

    def held_tracks(seed, name):
        out = tmp_path / name
        als.run(spark, str(tmp_path / "plays.parquet"), out, AlsParams(rank=2, iterations=2),
                catalogue_path=str(tmp_path / "catalogue.parquet"),
                holdout=TrackHoldout(fraction=0.2, seed=seed))
        held = pq.read_table(out / "heldout_plays")
        learned = set(pq.read_table(out / "item_factors").column("track_id").to_pylist())
        return out, held, learned

    out, held, learned = held_tracks(0, "first")
    assert pq.read_schema(next((out / "heldout_plays").glob("*.parquet"))).equals(
        schemas.with_metadata(schemas.PLAYS, dataclasses.asdict(TrackHoldout(0.2, 0))))
    chosen = set(held.column("track_id").to_pylist())
    assert len(chosen) == 8 and not chosen & learned and chosen | learned == set(tracks)
    assert sorted(artist[t] for t in chosen) == sorted([f"artist{i}" for i in range(4)] * 2)
    # every play of a held-out track is there, none of the others
    expected = plays.filter(pa.compute.is_in(plays["track_id"], pa.array(sorted(chosen))))
    assert held.num_rows == expected.num_rows
    assert set(held_tracks(0, "again")[1].column("track_id").to_pylist()) == chosen
    assert set(held_tracks(1, "other")[1].column("track_id").to_pylist()) != chosen


def test_a_fold_in_solves_the_changed_users_then_the_changed_tracks_in_the_refits_space(
        spark, exact_case, tmp_path):
    from schemas import layout

    plays, x, y, root = exact_case
    tonight = np.concatenate([plays, np.zeros((N_USERS, 1), plays.dtype)], axis=1)
    tonight[0, np.flatnonzero(plays[0] == 0)[0]] = 7  # user 0 plays a track new to them
    tonight[[3, 4], -1] = [5, 2]  # a track new tonight, played by users 3 and 4
    users, tracks = np.nonzero(tonight)
    pq.write_table(pa.table({"user_id": [f"u{u:02d}" for u in users],
                             "track_id": [f"t{t:02d}" for t in tracks],
                             "plays": tonight[users, tracks]}), tmp_path / "plays.parquet")

    als.run(spark, str(tmp_path / "plays.parquet"), tmp_path / "night", EXACT,
            base=root / "out", max_new_share=0.5)

    meta = storage.read_params(tmp_path / "night" / layout.ITEM_FACTORS)
    before = storage.read_params(root / "out" / layout.ITEM_FACTORS)
    assert meta["night"] == "fold-in" and meta["base"] == "out"
    assert meta["factor_space"] == before["factor_space"]
    assert 0 < meta["new_share"] < 0.05
    x_new = factor_matrix(storage.read_table(tmp_path / "night" / "user_factors",
                                             schemas.USER_FACTORS).sort_by("user_id")).astype(float)
    y_new = factor_matrix(storage.read_table(tmp_path / "night" / "item_factors",
                                             schemas.ITEM_FACTORS).sort_by("track_id")).astype(float)
    assert x_new.shape == (N_USERS, EXACT.rank) and y_new.shape == (N_TRACKS + 1, EXACT.rank)
    moved = [0, 3, 4]
    kept = [u for u in range(N_USERS) if u not in moved]
    np.testing.assert_array_equal(x_new[kept], x[kept].astype(np.float32))
    # the user step sees the tracks the refit knows (the new one is not yet in its space)
    expected = Objective(tonight[:, :N_TRACKS], EXACT).users_given(y)
    np.testing.assert_allclose(x_new[moved], expected[moved], atol=1e-4)
    changed_tracks = [int(np.flatnonzero(plays[0] == 0)[0]), N_TRACKS]
    same = [t for t in range(N_TRACKS) if t not in changed_tracks]
    np.testing.assert_array_equal(y_new[same], y[same].astype(np.float32))
    expected = Objective(tonight, EXACT).tracks_given(x_new)
    np.testing.assert_allclose(y_new[changed_tracks], expected[changed_tracks], atol=1e-4)

    als.run(spark, str(tmp_path / "plays.parquet"), tmp_path / "refit", EXACT,
            base=root / "out", max_new_share=0.0)
    meta = storage.read_params(tmp_path / "refit" / layout.ITEM_FACTORS)
    assert meta["night"] == "refit" and "new or gone since it (above 0.0%)" in meta["why"]
    assert meta["factor_space"] != before["factor_space"]
    assert (tmp_path / "refit" / layout.USER_DIGESTS).exists()
