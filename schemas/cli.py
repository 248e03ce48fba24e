"""How every job behaves on the command line: its logging, its exit codes, and how an
expected failure is reported (one line naming the input, no traceback).

    0  done
    1  failed: bad input, a bound exceeded, a broken environment (a file that cannot
       be read or written, a full disk), or a bug
    2  bad usage: unknown or missing flags, or an output that already exists

Every failure ends the job's log with one line saying what is wrong; a traceback only
with $COLDSTART_DEBUG set (for a bug, the line says so).

A job's settings are flags derived from the fields of a config dataclass
(schemas/config.py): ``add_settings`` adds them, ``settings_from`` builds the config
from the parsed command line. The Luigi tasks derive their parameters the same way
(workflows/settings.py) and pass them back as these flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
import types
import typing
from typing import Any, Callable, Collection, Mapping

OK, FAILED, USAGE = 0, 1, 2
# Where a job run by the workflow writes the one line of its expected failure, so that
# the workflow can say why without reading the job's log (workflows/process.py).
FAILURE_FILE = "COLDSTART_FAILURE_FILE"
DEBUG = "COLDSTART_DEBUG"  # set (to anything but "" or 0): tracebacks are shown
PROGRESS_EVERY_S = 10.0  # how often a long stage logs its progress


class Progress:
    """Counts what a long stage has done and logs, at most every ``every_s`` seconds,
    how many of how many, the rate, the time so far and (with a total) the time left;
    on a terminal the line carries a bar. Otherwise such a stage says nothing until it
    ends."""

    BAR = 20  # characters of the bar

    def __init__(self, log: logging.Logger, what: str, total: int | None = None,
                 every_s: float = PROGRESS_EVERY_S):
        self.log, self.what, self.total, self.every_s = log, what, total, every_s
        self.done = 0
        self.started = self.logged = time.monotonic()
        self.bar = sys.stderr.isatty()

    def add(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.logged >= self.every_s or (self.total and self.done == self.total):
            self.logged = now
            self.log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        """What the stage has done, as of ``now`` (time.monotonic())."""
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        text = f"{self.what}: {self.done}"
        if self.total:
            text += f" of {self.total} done, {rate:.1f}/s, {duration(elapsed)}"
            if 0 < self.done < self.total:
                text += f", about {duration((self.total - self.done) / rate)} left"
            if self.bar:
                filled = round(self.BAR * min(self.done / self.total, 1.0))
                text = f"[{'#' * filled}{'.' * (self.BAR - filled)}] {text}"
        else:
            text += f" done, {rate:.1f}/s, {duration(elapsed)}"
        return text


def duration(seconds: float) -> str:
    """``seconds`` for a person: "41 s", "3 min 20 s", "2 h 5 min"."""
    seconds = round(max(seconds, 0.0))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class JobError(Exception):
    """An expected failure; the message names the input and what is wrong with it."""


class UsageError(JobError):
    """The command line asks for something that cannot be done as given."""


def setup_logging(prefix: str = "") -> None:
    """Log INFO and above to stderr, each line stamped (and ``prefix``ed, e.g. a rank)."""
    logging.basicConfig(level=logging.INFO, force=True,
                        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s")


def debugging() -> bool:
    """Whether failures should show their tracebacks ($COLDSTART_DEBUG)."""
    return os.environ.get(DEBUG, "") not in ("", "0")


def run_job(body: Callable[[], int | None], log: logging.Logger,
            *expected: type[BaseException]) -> int:
    """Run a job's body and turn its failures into an exit code.

    JobError, OSError (a file missing or unwritable, a full disk) and the ``expected``
    exception types are logged to ``log`` (the job's own logger) as one line, also
    written to the file $COLDSTART_FAILURE_FILE names. Anything else is a bug: one line
    that says so, and its traceback with $COLDSTART_DEBUG.
    """
    try:
        return body() or OK
    except UsageError as err:
        record_failure(log, err)
        return USAGE
    except (JobError, OSError, *expected) as err:
        if debugging():
            log.exception("the traceback of the failure below")
        record_failure(log, one_line(err))
        return FAILED
    except Exception as err:
        if debugging():
            raise
        record_failure(log, f"unexpected {type(err).__name__}: {err} (a bug; "
                            f"{DEBUG}=1 shows where)")
        return FAILED


def one_line(err: BaseException) -> str:
    """What ``err`` says, on one line; for an OSError, the file and what is wrong with it
    rather than Python's "[Errno 2] ..." form."""
    if isinstance(err, OSError) and err.strerror:
        where = " -> ".join(str(name) for name in (err.filename, err.filename2) if name)
        return f"{where}: {err.strerror}" if where else err.strerror
    text = " ".join(str(err).split())
    if isinstance(err, FileNotFoundError) and text and " " not in text:
        return f"{text}: No such file or directory"  # pyarrow's: the path alone
    return text or type(err).__name__


def record_failure(log: logging.Logger, err: BaseException | str) -> None:
    line = one_line(err) if isinstance(err, BaseException) else err
    log.error("%s", line)
    path = os.environ.get(FAILURE_FILE)
    if path:
        with open(path, "w", encoding="utf-8") as out:  # ranks that fail alike write alike
            out.write(line + "\n")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One field of a config dataclass, as a command line and a Luigi task see it."""
    field: str  # the dataclass field
    name: str  # what flags and luigi.cfg call it
    kind: type  # bool, int, float or str; of each item when ``many``
    optional: bool  # None is a value ("none" on a command line)
    many: bool  # a tuple of ``kind``
    default: Any
    help: str
    choices: tuple | None
    significant: bool  # changes results, so outputs are fingerprinted by it

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def settings_of(config: Any, only: Collection[str] | None = None,
                skip: Collection[str] = ()) -> list[Setting]:
    """The settings of ``config``, a config dataclass or an instance of one whose values
    are the defaults; ``only`` and ``skip`` pick fields by name."""
    cls = config if isinstance(config, type) else type(config)
    defaults = config() if isinstance(config, type) else config
    hints = typing.get_type_hints(cls)
    found = []
    for field in dataclasses.fields(cls):
        if (only is not None and field.name not in only) or field.name in skip:
            continue
        kind, optional, many = _unpack(hints[field.name])
        meta = field.metadata
        found.append(Setting(field.name, meta.get("name") or field.name, kind, optional, many,
                             getattr(defaults, field.name), meta.get("help", ""),
                             meta.get("choices"), meta.get("significant", True)))
    return found


def _unpack(hint: Any) -> tuple[type, bool, bool]:
    """(item type, None allowed, tuple) of ``int``, ``float | None``, ``tuple[str, ...]``."""
    args = typing.get_args(hint)
    optional = isinstance(hint, types.UnionType) and type(None) in args
    if optional:
        [hint] = [arg for arg in args if arg is not type(None)]
        args = typing.get_args(hint)
    many = typing.get_origin(hint) is tuple
    kind = args[0] if many else hint
    if kind not in (bool, int, float, str):
        raise TypeError(f"a setting is a bool, int, float or str, or a tuple of them; got {hint}")
    return kind, optional, many


def _or_none(kind: type) -> Callable[[str], Any]:
    """``kind`` from a command-line word, where "none" means None."""
    def parse(word: str) -> Any:
        return None if word.lower() == "none" else kind(word)
    parse.__name__ = kind.__name__  # argparse names it in its errors
    return parse


def add_settings(parser: argparse.ArgumentParser | argparse._ArgumentGroup, config: Any,
                 only: Collection[str] | None = None, skip: Collection[str] = (),
                 aliases: Mapping[str, str] | None = None) -> None:
    """A flag for each setting of ``config`` (see settings_of): ``--rank`` for ``rank``,
    ``--cache-ratings``/``--no-cache-ratings`` for a bool, several words for a tuple;
    its type, default, choices and help from the field. ``aliases`` maps a field to
    another flag that sets it too (one a command line used before)."""
    for setting in settings_of(config, only, skip):
        flags = [setting.flag, *([aliases[setting.field]] if aliases and setting.field in aliases
                                 else [])]
        common = dict(dest=setting.name, default=setting.default,
                      help=setting.help.replace("%", "%%") + " (default %(default)s)")
        if setting.kind is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **common)
            continue
        parser.add_argument(*flags, type=_or_none(setting.kind) if setting.optional
                            else setting.kind, choices=setting.choices,
                            nargs="*" if setting.many else None, **common)


def settings_from(config: Any, args: argparse.Namespace, only: Collection[str] | None = None,
                  skip: Collection[str] = ()) -> Any:
    """The config the parsed flags of ``add_settings(parser, config, only, skip)`` describe;
    fields without a flag keep their defaults."""
    defaults = config() if isinstance(config, type) else config
    values = {setting.field: getattr(args, setting.name)
              for setting in settings_of(config, only, skip)}
    return dataclasses.replace(defaults, **{
        field: tuple(value) if isinstance(value, list) else value  # nargs gives a list
        for field, value in values.items()})
