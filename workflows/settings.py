"""Luigi parameters derived from the config dataclasses of schemas/config.py.

``settings(Config)`` is a mixin class with one parameter per field: its default,
description and significance come from the field, and luigi.cfg overrides it in the
section named after the task ([TrainAls] rank = 50). ``flags(task, Mixin)`` gives
the task's values back as the job's flags, named as schemas.cli.add_settings names
them, so a setting is written once, in its dataclass.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Collection, Mapping

import luigi

from schemas.cli import Setting, settings_of

_PLAIN = {int: luigi.IntParameter, float: luigi.FloatParameter, str: luigi.Parameter}
_OPTIONAL = {int: luigi.OptionalIntParameter, float: luigi.OptionalFloatParameter,
             str: luigi.OptionalParameter}


def parameter(setting: Setting) -> luigi.Parameter:
    """The Luigi parameter of one setting."""
    common = dict(default=setting.default, description=setting.help,
                  significant=setting.significant)
    if setting.kind is bool:
        # Explicit, so that a setting that defaults to true can be turned off:
        # --TrainAls-cache-ratings false.
        return luigi.BoolParameter(parsing=luigi.BoolParameter.EXPLICIT_PARSING, **common)
    if setting.many:
        return (luigi.OptionalListParameter if setting.optional else luigi.ListParameter)(**common)
    if setting.choices:
        choice = luigi.OptionalChoiceParameter if setting.optional else luigi.ChoiceParameter
        return choice(choices=setting.choices, var_type=setting.kind, **common)
    return (_OPTIONAL if setting.optional else _PLAIN)[setting.kind](**common)


def settings(config: Any, only: Collection[str] | None = None, skip: Collection[str] = (),
             names: Mapping[str, str] | None = None) -> type:
    """A mixin giving a task a parameter for each setting of ``config`` (a config
    dataclass, or an instance of one whose values are the defaults; ``only`` and
    ``skip`` pick fields). A parameter is named as the setting's flag, or as
    ``names`` says, for a field luigi.cfg files know by another name."""
    chosen = {(names or {}).get(setting.field, setting.name): setting
              for setting in settings_of(config, only, skip)}
    params = {name: parameter(setting) for name, setting in chosen.items()}
    cls = config if isinstance(config, type) else type(config)
    return type(f"{cls.__name__}Settings", (), {**params, "_settings": chosen, "_config": config})


def flags(task: luigi.Task, *mixins: type, skip: Collection[str] = ()) -> list[str]:
    """The task's values of the settings of ``mixins`` as the job's flags (those of
    schemas.cli.add_settings), but for the fields in ``skip``."""
    words = []
    for mixin in mixins:
        for name, setting in vars(mixin)["_settings"].items():
            if setting.field not in skip:
                words += _words(setting, getattr(task, name))
    return words


def config_of(task: luigi.Task, mixin: type) -> Any:
    """The config dataclass the task's values of ``mixin``'s settings make."""
    config = vars(mixin)["_config"]
    defaults = config() if isinstance(config, type) else config
    values = {setting.field: getattr(task, name)
              for name, setting in vars(mixin)["_settings"].items()}
    return dataclasses.replace(defaults, **{
        field: tuple(value) if isinstance(value, (list, tuple)) else value
        for field, value in values.items()})


def _words(setting: Setting, value: Any) -> list[str]:
    if setting.kind is bool:
        return [setting.flag if value else "--no-" + setting.flag[2:]]
    if value is None:
        return [setting.flag, "none"]
    if setting.many:
        return [setting.flag, *map(str, value)]
    return [setting.flag, str(value)]
