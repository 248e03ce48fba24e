"""What every job shares on the command line (schemas/cli.py)."""
import argparse
import logging

import pytest

from schemas.cli import Progress, add_settings, settings_from
from schemas.config import (NO_HOLDOUT, AlsParams, AlsTuning, EvaluateConfig, InputOptions,
                            TrackHoldout)


def test_a_long_stage_logs_what_it_has_done_of_how_many_and_the_rate(caplog):
    log = logging.getLogger("a long stage")
    with caplog.at_level(logging.INFO, logger="a long stage"):
        progress = Progress(log, "decoding", total=3, every_s=0.0)
        progress.add()
        progress.add(2)
        quiet = Progress(log, "quiet", every_s=3600.0)
        quiet.add()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("decoding: 1 of 3 done, ") and lines[0].endswith("/s")
    assert lines[1].startswith("decoding: 3 of 3 done, ")
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
