"""The ALS job (jobs/als/job.py) run as users run it: spark-submit, the master from the command line."""
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import schemas
from schemas import storage
from tests.test_als import checkerboard_plays

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def spark_submit(master: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ.copy()
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    command = [str(BIN / "spark-submit"), "--master", master, "--conf", "spark.ui.enabled=false",
               "--conf", "spark.sql.shuffle.partitions=4", str(REPO / "jobs" / "als" / "job.py"), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def triplets(tmp_path_factory):
    """The checkerboard plays as MSD triplets, plus one line that is not a number."""
    path = tmp_path_factory.mktemp("cluster") / "train_triplets.txt"
    table = checkerboard_plays()
    lines = [f"{u}\t{t}\t{n}" for u, t, n in zip(*(table.column(c).to_pylist()
                                                    for c in table.column_names))]
    path.write_text("\n".join(lines + ["u000\tt001\tmany"]) + "\n")
    return path, table


def test_spark_submit_on_local_cluster(triplets, tmp_path):
    path, table = triplets
    out = tmp_path / "als"
    result = spark_submit("local-cluster[2,1,1024]", "--plays", str(path), "--out", str(out),
                          "--rank", "4", "--iterations", "4", "--reg", "0.05", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stderr.count("Granted executor ID") == 2, "expected two executor JVMs"
    users = storage.read_table(out / "user_factors", schemas.USER_FACTORS)
    items = storage.read_table(out / "item_factors", schemas.ITEM_FACTORS)
    assert users.num_rows == len(set(table.column("user_id").to_pylist()))
    assert items.num_rows == len(set(table.column("track_id").to_pylist()))
    quarantined = storage.read_table(out / "quarantine", schemas.QUARANTINED_PLAYS).to_pylist()
    assert quarantined == [{"user_id": "u000", "track_id": "t001", "plays": "many",
                            "reason": "non-numeric play count"}]
    meta = schemas.params_of(pq.read_schema(next((out / "item_factors").glob("*.parquet"))))
    assert meta["blocks"] == 2, "one block per executor core"


def test_bad_input_exits_non_zero_naming_it(tmp_path):
    missing = tmp_path / "no-such-plays.parquet"
    result = spark_submit("local[1]", "--plays", str(missing), "--out", str(tmp_path / "als"),
                          cwd=tmp_path)
    log = result.stdout + result.stderr  # spark-submit passes Python's stderr to its stdout
    assert result.returncode == 1
    assert f"ERROR __main__: cannot read plays from {missing}" in log
    assert "Traceback (most recent call last)" not in log, "an input error is a message, not a crash"
    assert not (tmp_path / "als").exists()

