"""ALS job on a real local Spark session."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from jobs import als, storage
from model.data import factor_matrix


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
    params = als.AlsParams(rank=4, iterations=10, reg=0.05)
    als.run(spark, str(root / "plays.parquet"), root / "out", params)
    return root / "out", table, params


def test_outputs_follow_schemas(als_out):
    out, _, params = als_out
    for name, schema in [("user_factors", schemas.USER_FACTORS), ("item_factors", schemas.ITEM_FACTORS),
                         ("user_ids", schemas.USER_IDS), ("track_ids", schemas.TRACK_IDS),
                         ("quarantine", schemas.QUARANTINED_PLAYS)]:
        for part in (out / name).glob("*.parquet"):
            found = pq.read_schema(part)
            assert found.names == schema.names, name
            assert [f.type for f in schemas.conform(found.empty_table(), schema).schema] == schema.types
    meta = schemas.params_of(pq.read_schema(next((out / "item_factors").glob("*.parquet"))))
    assert meta["rank"] == params.rank and meta["alpha"] == params.alpha
    assert not list(out.parent.glob(".tmp-*")), "temporary directory left behind"


def test_factors_recover_blocks(als_out):
    out, table, params = als_out
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
    out, table, _ = als_out
    quarantined = storage.read_table(out / "quarantine", schemas.QUARANTINED_PLAYS).to_pylist()
    reasons = sorted(r["reason"] for r in quarantined)
    assert reasons == ["empty user_id", "empty user_id", "non-positive play count",
                       "non-positive play count"]
    ids = storage.read_table(out / "user_ids", schemas.USER_IDS)
    assert sorted(ids.column("user_index").to_pylist()) == list(range(ids.num_rows))
    assert None not in ids.column("user_id").to_pylist() and "" not in ids.column("user_id").to_pylist()


def test_split_valid_sums_duplicates(spark):
    df = spark.createDataFrame([("a", "x", 2), ("a", "x", 3), ("b", "x", 1)],
                               "user_id string, track_id string, plays long")
    usable, quarantined = als.split_valid(df)
    assert sorted(map(tuple, usable.collect())) == [("a", "x", 5), ("b", "x", 1)]
    assert quarantined.count() == 0


def test_same_seed_same_factors(spark, tmp_path, als_out):
    _, table, params = als_out
    pq.write_table(table, tmp_path / "plays.parquet")
    runs = []
    for name in ("a", "b"):
        als.run(spark, str(tmp_path / "plays.parquet"), tmp_path / name, params)
        items = storage.read_table(tmp_path / name / "item_factors", schemas.ITEM_FACTORS)
        runs.append(items.sort_by("track_id"))
    np.testing.assert_allclose(factor_matrix(runs[0]), factor_matrix(runs[1]), rtol=1e-5, atol=1e-6)


def test_existing_output_is_refused(spark, als_out):
    out, _, params = als_out
    with pytest.raises(FileExistsError):
        als.run(spark, str(out.parent / "plays.parquet"), out, params)
