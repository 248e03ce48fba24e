"""Luigi parameters derived from the config dataclasses (workflows/settings.py): the
task's values go to the job as the flags the job derives from the same fields."""
import argparse
from pathlib import Path

import luigi
import pytest

from schemas.cli import add_settings, settings_from
from schemas.config import NO_HOLDOUT, AlsParams, AlsTuning, InputOptions, TrackHoldout
from workflows import tasks
from workflows.settings import config_of, flags, settings

Factorisation = settings(AlsParams)
Reading = settings(InputOptions)
Holdout = settings(NO_HOLDOUT)


class Factorise(Factorisation, Reading, Holdout, luigi.Task):
    """A task taking three groups of settings."""


def parse(words: list[str], *configs) -> argparse.Namespace:
    parser = argparse.ArgumentParser(exit_on_error=False)
    for config in configs:
        add_settings(parser, config)
    return parser.parse_args(words)


def test_the_parameters_carry_the_dataclass_defaults_and_significance():
    task = Factorise()
    assert config_of(task, Factorisation) == AlsParams()
    assert config_of(task, Reading) == InputOptions()
    assert config_of(task, Holdout) == TrackHoldout(fraction=0.0)
    params = dict(Factorise.get_params())
    assert params["rank"].significant and params["holdout"].significant
    assert not params["plays_format"].significant and not params["user_column"].significant
    assert isinstance(params["blocks"], luigi.OptionalIntParameter)
    assert params["rank"].description == "number of latent factors"


@pytest.mark.parametrize("values", [{}, {"rank": 5, "blocks": 8, "plays_format": "csv",
                                         "delimiter": "\\t", "holdout": 0.3}])
def test_a_task_renders_its_values_as_the_flags_the_job_parses(values):
    task = Factorise(**values)
    args = parse(flags(task, Factorisation, Reading, Holdout), AlsParams, InputOptions, NO_HOLDOUT)
    assert settings_from(AlsParams, args) == config_of(task, Factorisation)
    assert settings_from(InputOptions, args) == config_of(task, Reading)
    assert settings_from(NO_HOLDOUT, args) == config_of(task, Holdout)


def test_flags_leave_out_the_fields_skipped():
    words = flags(Factorise(), Reading, skip=("max_bad_fraction",))
    assert "--plays-format" in words and "--max-bad-fraction" not in words


@pytest.fixture
def luigi_cfg():
    """Set options of the real luigi configuration; they are removed afterwards."""
    config = luigi.configuration.get_config()
    added = []

    def set_option(section: str, option: str, value: str) -> None:
        if not config.has_section(section):
            config.add_section(section)
        added.append((section, option, config.get(section, option, None)))
        config.set(section, option, value)

    yield set_option
    for section, option, before in reversed(added):
        if before is None:
            config.remove_option(section, option)
        else:
            config.set(section, option, before)


def test_a_luigi_cfg_override_reaches_the_job_flag(luigi_cfg):
    from jobs.als import job as als

    luigi_cfg("TrainAls", "rank", "50")
    luigi_cfg("TrainAls", "cache_ratings", "false")
    luigi_cfg("TrainAls", "plays_format", "triplets")
    luigi_cfg("MelSpectrograms", "workers", "3")
    task = tasks.TrainAls()
    groups = (tasks.Als, tasks.AlsSpeed, tasks.PlaysReading, tasks.Split, tasks.SemiCold)
    args = als.parse_args(["--plays", "p", "--out", "o", *flags(task, *groups)])
    assert als.als_params(args) == AlsParams(rank=50)
    assert als.als_tuning(args) == AlsTuning(cache_ratings=False)
    assert als.input_options(args).format == "triplets"
    assert args.holdout == 0.0 and args.semi_cold_listeners == task.semi_cold_listeners
    mels = flags(tasks.MelSpectrograms(), tasks.MelJob)
    assert mels[mels.index("--decoders") + 1] == "3"


def test_the_tags_setting_in_luigi_cfg_reaches_the_tags_job(luigi_cfg):
    from jobs import tags

    luigi_cfg("TagTracks", "top_tags", "3")
    args = tags.parse_args(["--frontend-mels", "m", "--catalogue", "c", "--out", "o",
                            *flags(tasks.TagTracks(), tasks.Tagging)])
    assert args.top_tags == 3


# What luigi.cfg files set, and the significant ones what outputs are fingerprinted by:
# deriving the parameters keeps both.
BEFORE = {
    "TrainAls": ({"rank", "reg", "alpha", "eps", "iterations", "seed", "blocks", "holdout",
                  "holdout_seed", "semi_cold_listeners"},
                 {"checkpoint_dir", "plays_format", "user_column", "track_column",
                  "plays_column", "delimiter", "max_bad_fraction"}),
    "TrainModel": ({"arch", "loss", "epochs", "batch_size", "lr", "crop_frames", "patience",
                    "seed", "net", "clips_per_track", "min_spread", "holdout", "holdout_seed",
                    "metadata", "taste_bags", "warm_epochs"}, {"nproc", "max_restarts", "loader_workers"}),
    "NewReleaseAudience": ({"k"}, set()),
    "SimilarityIndex": (set(), set()),
    "PublishFactors": (set(), {"keep"}),
    "TagTracks": ({"top_tags"}, set()),
}


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_fingerprinted_tasks_keep_their_parameters(name):
    significant, other = BEFORE[name]
    params = dict(getattr(tasks, name).get_params())
    assert {n for n, p in params.items() if p.significant and n != "run_id"} == significant
    assert other <= {n for n, p in params.items() if not p.significant}


def test_tasks_whose_outputs_are_named_otherwise_keep_their_parameters():
    assert {"n_tracks", "n_users", "duration_s", "cold_fraction", "seed"} \
        <= set(tasks.DemoCatalogue.get_param_names())
    params = dict(tasks.MelSpectrograms.get_params())
    assert params["excerpt_s"].significant and params["dtype"].significant
    assert params["filterbank"].significant and params["compression"].significant
    assert not params["workers"].significant and not params["max_bad_fraction"].significant
    assert not params["frontend"].significant  # it adds an output, changes none


def test_the_spectrograms_are_complete_with_the_tagger_input_beside(tmp_path, monkeypatch):
    monkeypatch.setenv("COLDSTART_DATA_ROOT", str(tmp_path))
    task, without = (tasks.MelSpectrograms(run_id="n1", frontend=frontend)
                     for frontend in (True, False))
    assert task.frontend_dir() == tmp_path / "mels" / task.params().frontend().params_hash()
    assert task.frontend_dir() != task.params_dir() == without.params_dir()
    assert "--frontend" in flags(task, tasks.MelJob)
    assert "--no-frontend" in flags(without, tasks.MelJob)

    Path(task.output().path).mkdir(parents=True)  # a run made before the tagger's input
    assert not task.complete() and without.complete()
    (task.frontend_dir() / "n1").mkdir(parents=True)
    assert task.complete()


def test_the_spectrogram_and_training_jobs_parse_their_tasks_flags(luigi_cfg):
    from jobs.spectrograms.job import parse_options
    from model.train import job_of, parse_args

    luigi_cfg("MelSpectrograms", "excerpt_s", "")  # none: whole tracks
    luigi_cfg("MelSpectrograms", "retry_dead_letters", "true")
    luigi_cfg("TrainModel", "loss", "cosine")
    luigi_cfg("TrainModel", "lr", "0.01")
    mels = tasks.MelSpectrograms()
    job = parse_options(["--catalogue", "c", "--out", "o", *flags(mels, tasks.Mels, tasks.MelJob)])
    assert job.params == mels.params() and job.params.excerpt_s is None
    assert job.options == config_of(mels, tasks.MelJob) and job.options.retry_dead_letters
    model = tasks.TrainModel()
    train = job_of(parse_args(["--mels", "m", "--item-factors", "f", "--out", "o",
                               *flags(model, tasks.Network, tasks.Training)]))
    assert (train.arch, train.loss) == (model.arch, "cosine")
    assert train.config == config_of(model, tasks.Training) and train.config.lr == 0.01


def test_the_beam_options_in_luigi_cfg_reach_every_beam_job(luigi_cfg):
    from jobs import audience, index, score
    from jobs.spectrograms.job import parse_options

    luigi_cfg("beam", "options", "--direct_num_workers=2 --direct_running_mode=multi_processing")
    options = tasks.beam_options()
    assert options == ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    for args in (audience.parse_args(["--user-factors", "u", "--track-factors", "t", "--out", "o",
                                      *options]),
                 index.parse_args(["--track-factors", "t", "--out", "o", *options]),
                 score.parse_args(["--model", "m", "--mels", "m", "--catalogue", "c",
                                   "--item-factors", "i", "--out", "o", *options])):
        assert args.beam_args[:3] == ["--runner=FnApiRunner", *options]
    # a value after its flag, as Beam's own documentation writes them, passes too
    spaced = audience.parse_args(["--user-factors", "u", "--track-factors", "t", "--out", "o",
                                  "--flink_master", "flink:8081"])
    assert spaced.beam_args[3:] == ["--flink_master", "flink:8081"]
    beam_options = parse_options(["--catalogue", "c", "--out", "o", *options]).beam
    assert beam_options.get_all_options()["direct_num_workers"] == 2
