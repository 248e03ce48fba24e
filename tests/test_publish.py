"""Publishing a night's factors: one snapshot, an atomic "latest" link, retention."""
import json
import os
import time

import numpy as np
import pyarrow as pa

import schemas
from jobs import publish
from schemas import factors_column, layout, storage


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
