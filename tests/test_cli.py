"""What every job shares on the command line (schemas/cli.py)."""
import argparse
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from schemas import cli
from schemas.cli import Progress, add_settings, settings_from
from schemas.config import (NO_HOLDOUT, AlsParams, AlsTuning, EvaluateConfig, InputOptions,
                            TrackHoldout)
from tests.test_publish import write_run

REPO = Path(__file__).resolve().parents[1]


def test_a_long_stage_logs_what_it_has_done_of_how_many_and_the_rate(caplog):
    log = logging.getLogger("a long stage")
    with caplog.at_level(logging.INFO, logger="a long stage"):
        progress = Progress(log, "decoding", total=3, every_s=0.0)
        progress.add()
        progress.add(2)
        quiet = Progress(log, "quiet", every_s=3600.0)
        quiet.add()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("decoding: 1 of 3 done, ") and "/s, 0 s, about " in lines[0]
    assert lines[0].endswith(" s left")
    assert lines[1].startswith("decoding: 3 of 3 done, ") and "left" not in lines[1]
    assert not any(line.startswith("quiet") for line in lines)  # not before its interval


# -- Flags derived from the config dataclasses -------------------------------------------

def parser_of(*configs, **options) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    for config in configs:
        add_settings(parser, config, **options)
    return parser


def test_a_flag_derived_from_a_field_parses_to_the_dataclass_value():
    parser = parser_of(AlsParams)
    args = parser.parse_args(["--rank", "7", "--reg", "0.5", "--blocks", "4"])
    assert settings_from(AlsParams, args) == AlsParams(rank=7, reg=0.5, blocks=4)
    assert settings_from(AlsParams, parser.parse_args([])) == AlsParams()


def test_bools_optionals_tuples_and_choices_follow_the_field_type():
    parser = parser_of(AlsParams, AlsTuning)
    add_settings(parser, EvaluateConfig, only=("models",))
    args = parser.parse_args(["--no-cache-ratings", "--blocks", "none",
                              "--models", "dieleman2014:mse", "vandenoord2013:wpe"])
    assert settings_from(AlsTuning, args) == AlsTuning(cache_ratings=False)
    assert settings_from(AlsParams, args).blocks is None
    assert settings_from(EvaluateConfig, args, only=("models",)).models == (
        "dieleman2014:mse", "vandenoord2013:wpe")
    assert settings_from(AlsTuning, parser.parse_args(["--cache-ratings"])).cache_ratings is True
    with pytest.raises(argparse.ArgumentError):
        parser.parse_args(["--final-storage", "ON_PAPER"])
    with pytest.raises(argparse.ArgumentError):
        parser.parse_args(["--rank", "many"])


def test_durations_read_as_a_person_says_them():
    assert [cli.duration(s) for s in (0.4, 41, 200, 7500)] == [
        "0 s", "41 s", "3 min 20 s", "2 h 5 min"]


def test_a_field_named_otherwise_keeps_its_name_and_an_old_flag_as_alias():
    parser = parser_of(InputOptions, aliases={"format": "--format"})
    for flag in ("--plays-format", "--format"):
        assert settings_from(InputOptions, parser.parse_args([flag, "csv"])).format == "csv"
    holdout = parser_of(NO_HOLDOUT, aliases={"fraction": "--hold-out-tracks"})
    assert settings_from(NO_HOLDOUT, holdout.parse_args([])) == TrackHoldout(fraction=0.0)
    args = holdout.parse_args(["--hold-out-tracks", "0.3", "--holdout-seed", "2"])
    assert settings_from(NO_HOLDOUT, args) == TrackHoldout(fraction=0.3, seed=2)


def test_the_help_explains_every_setting_and_ends_with_its_default():
    text = " ".join(parser_of(AlsParams, AlsTuning, only=("rank", "cache_ratings"))
                    .format_help().split())
    assert "--rank RANK number of latent factors (default 32)" in text
    assert "--cache-ratings, --no-cache-ratings cache the indexed ratings before the fit " \
           "(default True)" in text
    assert "--reg" not in text


# -- Failures: one line, no traceback ---------------------------------------------------

def run_failing_job(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={**os.environ, **(env or {})})


def test_a_missing_input_ends_a_job_with_one_line_naming_it(tmp_path):
    missing = str(tmp_path / "nope.parquet")
    for job in (["jobs.index", "--track-factors", missing, "--out", str(tmp_path / "index")],
                ["jobs.audience", "--user-factors", missing, "--track-factors", missing,
                 "--out", str(tmp_path / "audience.parquet")]):
        done = run_failing_job(*job)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.endswith(f"{missing}: No such file or directory"), last
        # asked for, the traceback is there
        debug = run_failing_job(*job, env={cli.DEBUG: "1"})
        assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_a_bug_is_one_line_that_says_so(caplog, monkeypatch):
    log = logging.getLogger("a job")

    def body():
        return {}["no such key"]
    monkeypatch.delenv(cli.DEBUG, raising=False)
    with caplog.at_level(logging.INFO, logger="a job"):
        assert cli.run_job(body, log) == cli.FAILED
    [record] = caplog.records
    assert record.getMessage().startswith("unexpected KeyError: 'no such key' (a bug;")
    assert record.exc_info is None
    monkeypatch.setenv(cli.DEBUG, "1")
    with pytest.raises(KeyError):
        cli.run_job(body, log)


def publish_into(mount_options: str, tmp_path) -> subprocess.CompletedProcess:
    """jobs.publish with --out on a small tmpfs mounted with ``mount_options``, in a mount
    namespace of its own (unshare), so that no root and no real mount are needed."""
    run = write_run(tmp_path, "2026-11-01", space="s")
    out = tmp_path / "published"
    out.mkdir()
    publish = shlex.join([sys.executable, "-m", "jobs.publish", "--run-id", "2026-11-01",
                          "--user-factors", str(run / "als" / "user_factors"),
                          "--track-factors", str(run / "factors" / "track_factors.parquet"),
                          "--out", str(out)])
    script = f"mount -t tmpfs -o {mount_options} tmpfs {shlex.quote(str(out))} && exec {publish}"
    try:
        return subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", script],
                              capture_output=True, text=True, timeout=120, cwd=REPO)
    except FileNotFoundError:
        pytest.skip("unshare is not installed")


@pytest.mark.parametrize("options, reason", [("size=8k", "No space left on device"),
                                             ("ro", "Read-only file system")])
def test_publishing_to_a_full_or_read_only_disk_is_one_line_naming_the_snapshot(
        tmp_path, options, reason):
    done = publish_into(options, tmp_path)
    if done.stderr.startswith(("unshare:", "mount:")):  # the sandbox, not the job
        pytest.skip(f"no mount namespace here: {done.stderr.strip()}")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "published/2026-11-01" in last and reason in last, last
