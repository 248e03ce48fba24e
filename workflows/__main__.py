"""``python -m workflows TASK [luigi's options] [--debug]``: what ``luigi --module workflows
TASK`` does, with the exit code a scheduler needs to tell a degraded night apart.

A night that published without a model of its own (workflows.tasks.NightVerdict) exits
DEGRADED instead of luigi's task_failed; every other outcome exits as luigi would
(workflows/luigi_config.py). ``--debug`` shows the tracebacks of failures
($COLDSTART_DEBUG), which are otherwise one line each.
"""
from __future__ import annotations

import os
import sys

import luigi
import luigi.retcodes

from schemas import cli
from workflows import console
from workflows.luigi_config import RETCODES
from workflows.tasks import NightDegraded

DEGRADED = 50


def main(argv: list[str]) -> int:
    sys.argv[0] = "python -m workflows"  # what luigi's usage line names
    if "--debug" in argv:
        argv = [arg for arg in argv if arg != "--debug"]
        os.environ[cli.DEBUG] = "1"
    try:
        luigi.retcodes.run_with_retcodes(["--module", "workflows", *argv])
        code = 0
    except SystemExit as done:  # as the interpreter reads it: None is success, text a failure
        code = done.code if isinstance(done.code, int) else 0 if done.code is None else cli.FAILED
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
    task_failed = luigi.configuration.get_config().getint(
        "retcode", "task_failed", RETCODES["task_failed"])
    if code == task_failed and set(console.FILTER.kinds) == {NightDegraded.__name__}:
        return DEGRADED
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
