"""Atomic outputs and schema checks."""
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from schemas import storage


def test_atomic_dir_appears_only_on_success(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with storage.atomic_dir(final) as tmp:
            (tmp / "part.txt").write_text("half")
            raise RuntimeError("killed")
    assert not final.exists() and os.listdir(tmp_path) == []
    with storage.atomic_dir(final) as tmp:
        (tmp / "part.txt").write_text("whole")
    assert (final / "part.txt").read_text() == "whole"
    with pytest.raises(FileExistsError):
        with storage.atomic_dir(final):
            pass


def test_write_table_conforms_and_records_params(tmp_path):
    table = pa.table({"plays": [3], "track_id": ["t"], "user_id": ["u"], "extra": [1]})
    storage.write_table(table, tmp_path / "p.parquet", schemas.PLAYS, {"source": "test"})
    written = pq.read_table(tmp_path / "p.parquet")
    assert written.schema.names == schemas.PLAYS.names
    assert schemas.params_of(written.schema) == {"source": "test"}
    assert [p.name for p in tmp_path.iterdir()] == ["p.parquet"]


def test_read_table_names_the_bad_input(tmp_path):
    pq.write_table(pa.table({"user_id": ["u"]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="bad.parquet"):
        storage.read_table(tmp_path / "bad.parquet", schemas.PLAYS)


def test_atomic_file_replaces_on_success_and_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "report.json"
    final.write_text("old")
    with pytest.raises(RuntimeError):
        with storage.atomic_file(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert final.read_text() == "old" and os.listdir(tmp_path) == ["report.json"]
    storage.write_text(final, "new")
    assert final.read_text() == "new" and os.listdir(tmp_path) == ["report.json"]


def test_leftovers_of_killed_processes_are_removed_live_ones_kept(tmp_path):
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    host = socket.gethostname()
    killed = tmp_path / f".tmp-als-abc@{host}.{dead}.0123abcd"
    live = tmp_path / f".tmp-mels@{host}.{os.getpid()}.0123abcd"
    ancient = tmp_path / ".tmp-model.pt-0123abcd"
    for path in (killed, live, ancient):
        path.mkdir()
        (path / "part").write_text("x")
    os.utime(ancient, (1, 1))

    with storage.atomic_dir(tmp_path / "out") as tmp:
        (tmp / "part").write_text("y")

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name])
