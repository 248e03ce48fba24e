"""What the workflow refuses before or instead of running: missing or malformed inputs,
escaping run ids, a second run on the same data root; and what a failure shows."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from workflows import console
from workflows.luigi_config import RETCODES, lock_dir
from workflows.tasks import TrainAls

REPO = Path(__file__).resolve().parent.parent
LUIGI = [sys.executable, "-m", "luigi", "--module", "workflows"]


def luigi(task: str, root: Path, config: str = "", *args: str, cwd: Path = REPO,
          env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`luigi --module workflows TASK --local-scheduler` on data root ROOT/data."""
    cfg = root / "test.cfg"
    cfg.write_text(config)
    env = dict(os.environ if env is None else env, COLDSTART_DATA_ROOT=str(root / "data"),
               LUIGI_CONFIG_PATH=str(cfg))
    return subprocess.run([*LUIGI, task, "--local-scheduler", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def before_summary(output: str) -> str:
    """The last line a run printed before luigi's summary, which must say why it failed;
    and no traceback anywhere."""
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in output[:output.index(console.SUMMARY)].splitlines() if line.strip()]
    return lines[-1]


def write_catalogue(path: Path, rows: list[dict], schema: pa.Schema = schemas.CATALOGUE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema), path)
    return path


def write_plays(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"user_id": ["u1", "u2"], "track_id": ["t1", "t1"],
                             "plays": pa.array([3, 4], pa.int64())}), path)
    return path


def test_a_configured_catalogue_that_does_not_exist_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere" / "catalogue.parquet"
    plays = write_plays(tmp_path / "plays.parquet")

    result = luigi("BackfillFactors", tmp_path, f"[paths]\ncatalogue = {missing}\nplays = {plays}\n")

    assert result.returncode == RETCODES["missing_data"], result.stderr[-3000:]
    assert before_summary(result.stderr).endswith(
        f"failed: UserInputs: catalogue {missing} not found (from [paths] in luigi.cfg)")
    assert not (tmp_path / "data" / "demo").exists(), "fell back to the demo data"


def test_a_catalogue_without_title_fails_the_preflight_before_als(tmp_path):
    schema = pa.schema([schemas.CATALOGUE.field("track_id"), schemas.CATALOGUE.field("audio_uri")])
    catalogue = write_catalogue(tmp_path / "catalogue.parquet",
                                [{"track_id": "t1", "audio_uri": "/a/t1.mp3"}], schema)
    plays = write_plays(tmp_path / "plays.parquet")

    result = luigi("BackfillFactors", tmp_path,
                   f"[paths]\ncatalogue = {catalogue}\nplays = {plays}\n")

    assert result.returncode == 30, result.stderr[-3000:]
    assert "lacks columns ['title', 'artist', 'duration_s']" in before_summary(result.stderr)
    runs = tmp_path / "data" / "runs" / "backfill"
    assert not list(runs.glob("als-*")) and not (tmp_path / "data" / "mels").exists()
    assert "spark-submit" not in result.stderr
    # python -m workflows: the same exit code; asked for, the traceback
    debug = subprocess.run([sys.executable, "-m", "workflows", "BackfillFactors", "--local-scheduler",
                            "--debug"], cwd=REPO, capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, COLDSTART_DATA_ROOT=str(tmp_path / "data"),
                                    LUIGI_CONFIG_PATH=str(tmp_path / "test.cfg")))
    assert debug.returncode == 30 and "Traceback" in debug.stderr, debug.stderr[-3000:]


def test_a_failed_job_does_not_show_the_environment(tmp_path):
    catalogue = write_catalogue(tmp_path / "catalogue.parquet", [
        {"track_id": "t1", "audio_uri": "/a/t1.mp3", "title": "T", "artist": "A",
         "duration_s": 10.0}])
    plays = tmp_path / "plays.parquet"  # every count unusable: the ALS job fails
    pq.write_table(pa.table({"user_id": ["u1", "u2"], "track_id": ["t1", "t1"],
                             "plays": ["many", "lots"]}), plays)
    secret = "s3cr3t-token-value-0123456789"
    env = dict(os.environ, COLDSTART_TEST_SECRET=secret)

    result = luigi("TrainAls", tmp_path, f"[paths]\ncatalogue = {catalogue}\nplays = {plays}\n",
                   env=env)

    assert result.returncode == 30, result.stderr[-3000:]
    assert f"failed: TrainAls: {plays}" in before_summary(result.stderr)  # the job's own line
    assert "jobs/als/job.py" in result.stderr
    assert secret not in result.stdout + result.stderr
    assert "COLDSTART_TEST_SECRET" not in result.stdout + result.stderr


@pytest.mark.parametrize("run_id", ["../../x", "/tmp/escaped", ".hidden", "a/b"])
def test_run_ids_cannot_leave_the_data_root(tmp_path, run_id):
    with pytest.raises(ValueError, match="run_id"):
        TrainAls(run_id=run_id)


def test_a_run_id_escaping_the_data_root_is_refused_on_the_command_line(tmp_path):
    result = luigi("BackfillFactors", tmp_path, "", "--run-id", "../../escaped")

    assert result.returncode == 2, result.stderr  # a usage error, as luigi's own
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --run-id: run_id '../../escaped' must be letters, digits, '_', '-' and '.', "
        "starting with a letter or digit")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "data").exists()


def test_failures_exit_non_zero_without_a_luigi_cfg(tmp_path):
    # A data root with a catalogue but no plays; luigi started where no luigi.cfg is.
    write_catalogue(tmp_path / "data" / "catalogue.parquet",
                    [{"track_id": "t1", "audio_uri": "/a/t1.mp3"}])
    env = {key: value for key, value in os.environ.items() if key != "LUIGI_CONFIG_PATH"}
    env.update(COLDSTART_DATA_ROOT=str(tmp_path / "data"),
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))

    result = subprocess.run([*LUIGI, "BackfillFactors", "--local-scheduler"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)

    assert result.returncode == 20, result.stderr[-3000:]  # missing data
    assert f"plays {tmp_path / 'data' / 'plays.parquet'} not found" in before_summary(result.stderr)


SLOW_DEMO = "[DemoCatalogue]\nn_tracks = 3000\nn_users = 200\nduration_s = 12\n"
TINY_DEMO = "[DemoCatalogue]\nn_tracks = 12\nn_users = 30\nduration_s = 2\n"


def test_runs_on_two_data_roots_run_side_by_side_but_not_on_one(tmp_path):
    first_root, other_root = tmp_path / "first", tmp_path / "other"
    first_root.mkdir()
    other_root.mkdir()
    (first_root / "test.cfg").write_text(SLOW_DEMO)
    env = dict(os.environ, COLDSTART_DATA_ROOT=str(first_root / "data"),
               LUIGI_CONFIG_PATH=str(first_root / "test.cfg"))
    holder = subprocess.Popen([*LUIGI, "DemoCatalogue", "--local-scheduler"], cwd=REPO, env=env,
                              start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        pid_dir = lock_dir((first_root / "data").resolve())
        deadline = time.time() + 120
        while not list(pid_dir.glob("*.pid")) and time.time() < deadline:
            assert holder.poll() is None, "the first run ended early"
            time.sleep(0.2)

        same = luigi("DemoCatalogue", first_root, SLOW_DEMO)
        other = luigi("DemoCatalogue", other_root, TINY_DEMO)

        assert holder.poll() is None, "the first run should still be going"
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert same.returncode == 10, same.stderr[-2000:]
    assert f"already running on data root {first_root / 'data'}" in same.stderr
    assert other.returncode == 0, other.stderr[-2000:]
    assert (other_root / "data" / "demo" / "catalogue.parquet").exists()


def test_outputs_follow_the_content_of_the_inputs_not_their_paths(tmp_path, monkeypatch):
    import luigi

    from workflows.tasks import TrainAls

    catalogue = write_catalogue(tmp_path / "catalogue.parquet", [
        {"track_id": "t1", "audio_uri": "/a/t1.mp3", "title": "T", "artist": "A",
         "duration_s": 10.0}])
    plays = write_plays(tmp_path / "plays.parquet")
    monkeypatch.setenv("COLDSTART_DATA_ROOT", str(tmp_path / "data"))
    config = luigi.configuration.get_config()
    monkeypatch.setattr(config, "get", lambda section, option, *args, **kwargs: (
        {"catalogue": str(catalogue), "plays": str(plays)}[option] if section == "paths"
        else type(config).get(config, section, option, *args, **kwargs)))

    def als_output() -> str:
        return TrainAls(run_id="night").output().path

    first = als_output()
    os.utime(plays, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched, same bytes
    assert als_output() == first
    write_catalogue(catalogue, [{"track_id": t, "audio_uri": f"/a/{t}.mp3", "title": "T",
                                 "artist": "A", "duration_s": 10.0} for t in ("t1", "t2")])
    assert als_output() == first  # new tracks alone do not change the factors
    pq.write_table(pa.table({"user_id": ["u1"], "track_id": ["t1"],
                             "plays": pa.array([9], pa.int64())}), plays)  # rewritten
    assert als_output() != first


def test_the_preflight_sees_a_package_installed_while_the_scheduler_runs(tmp_path, monkeypatch):
    from workflows.fingerprints import installed_versions

    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    before = installed_versions()
    assert installed_versions() == before  # read once
    info = site / "newcomer-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: newcomer\nVersion: 1.2.3\n")
    assert installed_versions() == sorted(before + [("newcomer", "1.2.3")])


def test_an_output_is_taken_from_another_run_only_when_made_from_the_same_inputs(
        tmp_path, monkeypatch):
    import luigi

    from workflows.tasks import RunTask
    from workflows.twins import adopt_twin

    class TwinFactors(RunTask):  # what every run fits for itself, like ALS
        def output(self):
            return luigi.LocalTarget(self.run_outputs().path / "als-1")

    class TwinModel(RunTask):  # the same name in every run: the same fingerprint
        def requires(self):
            return TwinFactors(run_id=self.run_id)

        def output(self):
            return luigi.LocalTarget(self.run_outputs().path / "model-1.pt")

    monkeypatch.setenv("COLDSTART_DATA_ROOT", str(tmp_path))
    runs = tmp_path / "runs"
    for run, factors in (("a", b"space one"), ("b", b"space two")):
        (runs / run / "als-1").mkdir(parents=True)
        (runs / run / "als-1" / "item_factors.parquet").write_bytes(factors)
    (runs / "a" / "model-1.pt").write_bytes(b"learned space one")
    # run b fitted its factors at the same time as run a, into another space
    assert not adopt_twin(TwinModel(run_id="b"))
    assert not (runs / "b" / "model-1.pt").exists()
    # run c took run a's factors: run a's model serves it
    (runs / "c" / "als-1").mkdir(parents=True)
    os.link(runs / "a" / "als-1" / "item_factors.parquet",
            runs / "c" / "als-1" / "item_factors.parquet")
    assert adopt_twin(TwinModel(run_id="c"))
    assert (runs / "c" / "model-1.pt").read_bytes() == b"learned space one"


def test_python_m_workflows_takes_luigis_command_line():
    shown = subprocess.run([sys.executable, "-m", "workflows", "NightlyFactors", "--help"], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.startswith("usage: python -m workflows ") and "--date" in shown.stdout
