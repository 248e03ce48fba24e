"""How every job behaves on the command line: its logging, its exit codes, and how an
expected failure is reported (one line naming the input, no traceback).

    0  done
    1  failed: bad input, a bound exceeded, a broken environment
    2  bad usage: unknown or missing flags, or an output that already exists
"""
from __future__ import annotations

import logging
from typing import Callable

OK, FAILED, USAGE = 0, 1, 2



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
