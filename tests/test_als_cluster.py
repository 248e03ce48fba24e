"""The ALS job (jobs/als/job.py) run as users run it: spark-submit, the master from the command line."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import schemas
from schemas import factor_matrix, storage
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def spark_class(name: str, *args: str, log: Path) -> subprocess.Popen:
    """A Spark daemon (master or worker) started by pyspark's own launcher script."""
    env = os.environ.copy()
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["SPARK_LOG_DIR"] = str(log.parent)
    return subprocess.Popen([str(BIN / "spark-class"), name, *args], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for(log: Path, text: str, times: int, process: subprocess.Popen, timeout_s=120.0):
    deadline = time.monotonic() + timeout_s
    while log.read_text().count(text) < times:
        assert process.poll() is None, f"{log.name} ended:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{text!r} not seen in {log.name}:\n" \
                                            f"{log.read_text()[-3000:]}"
        time.sleep(0.5)


@pytest.fixture
def standalone_cluster(tmp_path):
    """A Spark standalone master and two workers of one core each on 127.0.0.1, each its
    own JVM, as a cluster is started by hand; stopped after the test."""
    port = free_port()
    master_url = f"spark://127.0.0.1:{port}"
    master_log = tmp_path / "master.log"
    daemons = [spark_class("org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                           "--port", str(port), "--webui-port", str(free_port()), log=master_log)]
    try:
        wait_for(master_log, "I have been elected leader", 1, daemons[0])
        for i in range(2):
            daemons.append(spark_class(
                "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "1",
                "--memory", "1g", "--webui-port", str(free_port()),
                "--work-dir", str(tmp_path / f"work-{i}"), master_url,
                log=tmp_path / f"worker-{i}.log"))
        wait_for(master_log, "Registering worker", 2, daemons[0])
        yield master_url, master_log
    finally:
        for daemon in reversed(daemons):
            daemon.terminate()
        for daemon in daemons:
            daemon.wait(60)


def test_spark_submit_to_a_standalone_cluster_gives_the_local_factors(triplets, tmp_path,
                                                                      standalone_cluster):
    path, table = triplets
    master_url, master_log = standalone_cluster
    args = ["--plays", str(path), "--rank", "4", "--iterations", "6", "--reg", "0.05",
            "--blocks", "2", "--seed", "3"]
    local = spark_submit("local[2]", *args, "--out", str(tmp_path / "local"), cwd=tmp_path)
    assert local.returncode == 0, local.stderr[-4000:]
    remote = spark_submit(master_url, *args, "--out", str(tmp_path / "cluster"), cwd=tmp_path)
    assert remote.returncode == 0, remote.stderr[-4000:]
    # the job ran on the two workers' executors, not in the driver
    assert master_log.read_text().count("Launching executor") == 2
    out = tmp_path / "cluster"
    assert storage.read_table(out / "user_factors", schemas.USER_FACTORS).num_rows == \
        len(set(table.column("user_id").to_pylist()))
    assert storage.read_table(out / "item_factors", schemas.ITEM_FACTORS).num_rows == \
        len(set(table.column("track_id").to_pylist()))
    quarantined = storage.read_table(out / "quarantine", schemas.QUARANTINED_PLAYS).to_pylist()
    assert quarantined == [{"user_id": "u000", "track_id": "t001", "plays": "many",
                            "reason": "non-numeric play count"}]
    for name, schema, key in (("user_factors", schemas.USER_FACTORS, "user_id"),
                              ("item_factors", schemas.ITEM_FACTORS, "track_id")):
        runs = [storage.read_table(tmp_path / where / name, schema).sort_by(key)
                for where in ("local", "cluster")]
        assert runs[0].column(key).equals(runs[1].column(key))
        np.testing.assert_allclose(factor_matrix(runs[1]), factor_matrix(runs[0]),
                                   rtol=1e-4, atol=1e-5)


def test_bad_input_exits_non_zero_naming_it(tmp_path):
    missing = tmp_path / "no-such-plays.parquet"
    result = spark_submit("local[1]", "--plays", str(missing), "--out", str(tmp_path / "als"),
                          cwd=tmp_path)
    log = result.stdout + result.stderr  # spark-submit passes Python's stderr to its stdout
    assert result.returncode == 1
    assert f"ERROR __main__: cannot read plays from {missing}" in log
    assert "Traceback (most recent call last)" not in log, "an input error is a message, not a crash"
    assert not (tmp_path / "als").exists()

