"""The doctor: environment and input checks, as a user runs them."""
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from jobs import doctor

REPO = Path(__file__).resolve().parent.parent


def doctor_run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.doctor", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def row(output: str, name: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(name))


@pytest.fixture
def inputs(tmp_path):
    catalogue = tmp_path / "catalogue.parquet"
    pq.write_table(pa.Table.from_pylist([{"track_id": "t1", "audio_uri": "/a.mp3", "title": "T",
                                          "artist": "A", "duration_s": 1.0}], schemas.CATALOGUE),
                   catalogue)
    plays = tmp_path / "plays.csv"
    plays.write_text("listener,song,count\nu1,t1,3\n")
    return catalogue, plays


def test_a_healthy_environment_and_inputs_pass(inputs, tmp_path):
    catalogue, plays = inputs
    report = tmp_path / "report.json"

    result = doctor_run("--catalogue", str(catalogue), "--plays", str(plays),
                        "--user-column", "listener", "--track-column", "song",
                        "--plays-column", "count", "--report", str(report))

    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("java", "pyspark", "apache_beam", "torch + torchaudio", "PyAV decoders",
                 f"catalogue {catalogue}", f"plays {plays}"):
        assert " ok " in row(result.stdout, name), result.stdout
    assert "a spectrogram of shape (128, 44)" in result.stdout
    assert report.exists() and '"ok": true' in report.read_text()


def test_wrong_inputs_are_named_with_what_is_wrong(inputs, tmp_path):
    catalogue, plays = inputs
    no_title = tmp_path / "no_title.parquet"
    pq.write_table(pa.table({"track_id": ["t1"], "audio_uri": ["/a.mp3"]}), no_title)

    result = doctor_run("--catalogue", str(no_title), "--plays", str(plays))

    assert result.returncode == 1
    assert "WRONG  lacks columns ['title', 'artist', 'duration_s']" in row(
        result.stdout, f"catalogue {no_title}")
    assert "csv lacks columns ['user_id', 'track_id', 'plays']" in row(
        result.stdout, f"plays {plays}")
    missing = doctor_run("--catalogue", str(tmp_path / "none.parquet"))
    assert missing.returncode == 1
    assert "WRONG  does not exist" in row(missing.stdout, f"catalogue {tmp_path / 'none.parquet'}")


def test_a_broken_environment_is_reported(tmp_path):
    site = tmp_path / "site" / "torchaudio"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("raise OSError('Could not load this library')\n")
    env = dict(os.environ, JAVA_HOME=str(tmp_path / "no-java"),
               PYTHONPATH=os.pathsep.join([str(site.parent), str(REPO)]))

    result = doctor_run(env=env)

    assert result.returncode == 1
    assert "WRONG  no java found" in row(result.stdout, "java")
    assert "torchaudio does not load: OSError: Could not load this library" in row(
        result.stdout, "torch + torchaudio")
    assert " ok " in row(result.stdout, "PyAV decoders")


@pytest.mark.parametrize("version, major", [("17.0.15", 17), ("1.8.0_392", 8), ("21", 21),
                                            ("11.0.2", 11)])
def test_java_major_version(version, major):
    assert doctor.java_major(version) == major


def test_duplicate_track_ids_in_the_catalogue_are_named(tmp_path):
    row = {"track_id": "t1", "audio_uri": "/a.mp3", "title": "T", "artist": "A", "duration_s": 1.0}
    catalogue = tmp_path / "catalogue.parquet"
    pq.write_table(pa.Table.from_pylist([row, {**row, "audio_uri": "/b.mp3"},
                                         {**row, "track_id": "t2"}], schemas.CATALOGUE), catalogue)

    check = doctor.check_catalogue(catalogue)

    assert not check.ok
    assert "1 track ids appear more than once, e.g. 't1'" in check.detail


def test_plays_are_compared_with_the_catalogue(inputs, tmp_path):
    catalogue, _ = inputs  # lists t1
    some = tmp_path / "some.csv"
    some.write_text("user_id,track_id,plays\nu1,t1,3\nu2,elsewhere,4\nu3,t1,1\n")
    none = tmp_path / "none.tsv"
    none.write_text("u1\tx1\t3\nu2\tx2\t4\n")

    partly = doctor.check_overlap(catalogue, some, "auto", "track_id", ",")
    unrelated = doctor.check_overlap(catalogue, none, "triplets", "track_id", ",")

    assert partly.ok and "1 of 3 play rows name tracks the catalogue does not list" in partly.detail
    assert not unrelated.ok
    assert f"no play of {none} names a track of the catalogue {catalogue}" in unrelated.detail

