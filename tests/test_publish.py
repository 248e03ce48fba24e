"""Publishing a night's factors: one snapshot, an atomic "latest" link, retention."""
import json
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from jobs import publish, query, tags
from model import frontend
from schemas import factors_column, layout, storage
from tests.test_tags import tagger_input, write_catalogue, write_shard


def write_run(root, night: str, space: str):
    """ALS user factors and the combined track factors of one night, as the stages write them."""
    run = root / "runs" / night
    users = pa.table({"user_id": ["u1", "u2"], "factors": factors_column(np.eye(2, 3))})
    tracks = pa.table({"track_id": ["t1", "t2"], "factors": factors_column(np.ones((2, 3))),
                       "source": ["als", "audio"], "model_version": [None, f"m-{night}"],
                       "listeners": [3, 0], "plays": [7, 0]})
    storage.write_table(users, run / "als" / "user_factors" / "part-0.parquet",
                        schemas.USER_FACTORS, {"factor_space": space})
    storage.write_table(tracks, run / "factors" / "track_factors.parquet", schemas.TRACK_FACTORS)
    return run


def test_each_night_is_one_snapshot_behind_latest_and_old_ones_go(tmp_path):
    out = tmp_path / "published"
    nights = ["2026-11-01", "2026-11-02", "2026-11-03"]
    for index, night in enumerate(nights):
        run = write_run(tmp_path, night, space=f"space-{index}")
        assert publish.main(["--run-id", night, "--user-factors", str(run / "als" / "user_factors"),
                             "--track-factors", str(run / "factors" / "track_factors.parquet"),
                             "--out", str(out), "--runs", str(tmp_path / "runs"),
                             "--keep", "2"]) == 0
        time.sleep(0.01)  # snapshots are ordered by time
        latest = layout.latest(out)
        assert os.readlink(latest) == night
        manifest = json.loads((latest / layout.SNAPSHOT_MANIFEST).read_text())
        assert manifest["factor_space"] == f"space-{index}" and manifest["model_versions"] == [
            f"m-{night}"]
        # published without tags: the column is there, and says no track was heard
        assert pq.read_table(latest / layout.SNAPSHOT_TRACKS)["tags"].null_count == 2
        users = storage.read_params(latest / layout.SNAPSHOT_USERS)
        tracks = storage.read_params(latest / layout.SNAPSHOT_TRACKS)
        assert users["factor_space"] == tracks["factor_space"] == f"space-{index}"

    assert sorted(p.name for p in out.iterdir()) == ["2026-11-02", "2026-11-03", "latest"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["2026-11-02", "2026-11-03"]
    # Republishing a night is bad usage; keeping none still keeps the latest.
    run = tmp_path / "runs" / "2026-11-03"
    assert publish.main(["--run-id", "2026-11-03", "--user-factors", str(run / "als" / "user_factors"),
                         "--track-factors", str(run / "factors" / "track_factors.parquet"),
                         "--out", str(out)]) == 2
    assert publish.expired(out, 0) == [out / "2026-11-02"]


def test_the_published_track_table_carries_each_tracks_tags(tmp_path, capsys):
    """Tags from the real taggers for a warm and a cold track, and none for a track
    they never heard; the query's similar tracks show them."""
    run = write_run(tmp_path, "2026-11-01", space="s")
    factors = run / "factors" / "track_factors.parquet"
    storage.write_table(pa.table({
        "track_id": ["t1", "t2", "t3"], "factors": factors_column(np.eye(3)[[0, 0, 1]] + 0.1),
        "source": ["als", "audio", "audio"], "model_version": [None, "m", "m"],
        "listeners": [3, 0, 0], "plays": [7, 0, 0]}), factors, schemas.TRACK_FACTORS)
    write_shard(tmp_path / "frontend-mels" / "r1" / "mels-00000-of-00001.parquet",
                {"t1": tagger_input("beats"), "t2": tagger_input("chord")})
    write_catalogue(tmp_path / "catalogue.parquet", ["t1", "t2", "t3"])
    assert tags.main(["--frontend-mels", str(tmp_path / "frontend-mels"), "--catalogue",
                      str(tmp_path / "catalogue.parquet"), "--out", str(run / "tags.parquet")]) == 0
    tagged = {row["track_id"]: row["tags"] for row in pq.read_table(run / "tags.parquet").to_pylist()}
    out = tmp_path / "published"
    assert publish.main(["--run-id", "2026-11-01", "--user-factors", str(run / "als" / "user_factors"),
                         "--track-factors", str(factors), "--tags", str(run / "tags.parquet"),
                         "--catalogue", str(tmp_path / "catalogue.parquet"), "--out", str(out)]) == 0
    latest = layout.latest(out)
    published = storage.read_table(latest / layout.SNAPSHOT_TRACKS, schemas.SNAPSHOT_TRACKS)
    assert published["track_id"].to_pylist() == ["t1", "t2", "t3"]
    assert published["tags"].to_pylist() == [tagged["t1"], tagged["t2"], None]
    assert "beat" in tagged["t1"] and "ambient" in tagged["t2"]
    manifest = json.loads((latest / layout.SNAPSHOT_MANIFEST).read_text())
    assert manifest["taggers_versions"] == [frontend.version()] and manifest["tagged_tracks"] == 2
    capsys.readouterr()
    assert query.main(["--published", str(out), "--json", "similar", "--track", "t1",
                       "--among", "all"]) == 0
    similar = json.loads(capsys.readouterr().out)
    assert [(row["track_id"], row["tags"]) for row in similar] == [("t2", tagged["t2"]),
                                                                    ("t3", None)]
