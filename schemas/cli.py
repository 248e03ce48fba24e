"""How every job behaves on the command line: its logging, its exit codes, and how an
expected failure is reported (one line naming the input, no traceback).

    0  done
    1  failed: bad input, a bound exceeded, a broken environment
    2  bad usage: unknown or missing flags, or an output that already exists
"""
from __future__ import annotations

import logging
import time
from typing import Callable

OK, FAILED, USAGE = 0, 1, 2
PROGRESS_EVERY_S = 10.0  # how often a long stage logs its progress


class Progress:
    """Counts what a long stage has done and logs, at most every ``every_s`` seconds,
    how many of how many and the rate: otherwise such a stage says nothing until it ends."""

    def __init__(self, log: logging.Logger, what: str, total: int | None = None,
                 every_s: float = PROGRESS_EVERY_S):
        self.log, self.what, self.total, self.every_s = log, what, total, every_s
        self.done = 0
        self.started = self.logged = time.monotonic()

    def add(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.logged >= self.every_s:
            self.logged = now
            of = f" of {self.total}" if self.total else ""
            self.log.info("%s: %d%s done, %.1f/s", self.what, self.done, of,
                          self.done / max(now - self.started, 1e-9))


class JobError(Exception):
    """An expected failure; the message names the input and what is wrong with it."""


class UsageError(JobError):
    """The command line asks for something that cannot be done as given."""


def setup_logging(prefix: str = "") -> None:
    """Log INFO and above to stderr, each line stamped (and ``prefix``ed, e.g. a rank)."""
    logging.basicConfig(level=logging.INFO, force=True,
                        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s")


def run_job(body: Callable[[], int | None], log: logging.Logger,
            *expected: type[BaseException]) -> int:
    """Run a job's body and turn its expected failures into an exit code.

    JobError, and the ``expected`` exception types, are logged to ``log`` (the job's
    own logger) as one line; anything else is a bug and keeps its traceback.
    """
    try:
        return body() or OK
    except UsageError as err:
        log.error("%s", err)
        return USAGE
    except (JobError, *expected) as err:
        log.error("%s", err)
        return FAILED
