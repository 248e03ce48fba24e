"""How a run reads on the console: each failure as one line saying what is wrong, no
traceback unless asked ($COLDSTART_DEBUG, or ``--debug`` of ``python -m workflows``), and
every failure's line again just before luigi's summary, so that the last lines of a
failed run say why it failed.

luigi logs a task's failure with its traceback, and a missing input as "Data for ...
does not exist (yet?)"; a filter on its logger rewrites both.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import tempfile
from pathlib import Path

import luigi

from schemas import cli

logger = logging.getLogger("luigi-interface")

# The file this run's failure lines go to: tasks may run in forked worker processes,
# and the summary is logged by the first one.
FAILURES = "COLDSTART_RUN_FAILURES"
SUMMARY = "===== Luigi Execution Summary ====="


def failure_line(task: luigi.Task | None, err: BaseException) -> str:
    """``err`` of ``task`` as one line: a job's failure says its task already."""
    line = cli.one_line(err)
    family = task.task_family if task is not None else None
    return line if family is None or line.startswith(f"{family}: ") else f"{family}: {line}"


def _task_of(record: logging.LogRecord) -> luigi.Task | None:
    args = record.args if isinstance(record.args, tuple) else ()
    return next((arg for arg in args if isinstance(arg, luigi.Task)), None)


class OneLineFailures(logging.Filter):
    """Rewrites luigi's failure records to one line each, remembers the lines, and puts
    them before the summary. Failures seen last run are in :attr:`kinds`."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: list[str] = []  # exception type names of the last summarised run

    def filter(self, record: logging.LogRecord) -> bool:
        task = _task_of(record)
        error = record.exc_info[1] if record.exc_info else None
        if error is not None:
            line = failure_line(task, error)
            _remember(type(error).__name__, line)
            if not cli.debugging():
                record.msg, record.args = f"{record.getMessage()}: {line}", None
                record.exc_info = record.exc_text = None
        elif task is not None and hasattr(task, "missing") and "does not exist" in record.msg:
            line = f"{task.task_family}: {task.missing()}"
            record.msg, record.args = line, None
            _remember("missing", line)
        elif isinstance(record.msg, str) and SUMMARY in record.msg and not record.args:
            found = _recall()
            self.kinds = [kind for kind, _ in found]
            if found:
                lines = [line for _, line in found]
                record.msg = (f"failed: {lines[0]}" if len(lines) == 1 else "failed:\n  "
                              + "\n  ".join(lines)) + "\n" + record.msg
        return True


def _remember(kind: str, line: str) -> None:
    path = os.environ.get(FAILURES)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(f"{kind}\t{line}\n")


def _recall() -> list[tuple[str, str]]:
    """The failures remembered since the last summary, each once, and forgets them."""
    path = Path(os.environ.get(FAILURES, ""))
    if not path.is_file():
        return []
    found = list(dict.fromkeys(tuple(line.split("\t", 1)) for line in
                               path.read_text(encoding="utf-8").splitlines() if "\t" in line))
    path.write_text("")
    return found


FILTER = OneLineFailures()


def install() -> None:
    """Rewrite luigi's failure records in this process (and the workers it forks, which
    share its file of failures; another run started from here gets its own)."""
    if FILTER not in logger.filters:
        logger.addFilter(FILTER)
        handle, name = tempfile.mkstemp(prefix="coldstart-run-failures-", suffix=".txt")
        os.close(handle)
        os.environ[FAILURES] = name
        atexit.register(_forget, name)  # forked workers leave without running atexit


def _forget(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)
