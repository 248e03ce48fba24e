"""Running a task's job as a child process: its environment, its failure, its time."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from luigi.contrib.external_program import ExternalProgramRunError, ExternalProgramTask

from schemas import storage
from schemas.cli import FAILURE_FILE
from workflows.locations import root

# luigi's own logger: `luigi --module workflows` shows what it logs.
logger = logging.getLogger("luigi-interface")
# Beside where a task's output would be: why it could not be made in this run.
FAILED = ".failed"

# This interpreter's scripts (spark-submit, torchrun).
BIN = Path(sys.executable).parent


def job_environment(failure_file: Path | None = None) -> dict:
    """Child processes use this interpreter and find its scripts (spark-submit, torchrun);
    a job writes the one line of its expected failure to ``failure_file``."""
    env = os.environ.copy()
    if failure_file is not None:
        env[FAILURE_FILE] = str(failure_file)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    return env


class JobFailed(RuntimeError):
    """A job's process failed: the one line its job gave, else the command and exit
    code (its own log, streamed above, says why)."""


class ChildProcess:
    """Runs the task's job with this interpreter's environment; a failure is reported
    with the command and exit code alone. luigi's own error text carries the whole
    environment, tokens and passwords included, into logs and the scheduler's UI."""
    capture_output = False  # stream the job's own log to the console
    failure_file: Path | None = None

    def program_environment(self):
        return job_environment(self.failure_file)

    def run(self):
        if self.complete():  # its inputs, known only now, are ones an earlier run used
            return
        started = time.perf_counter()
        handle, name = tempfile.mkstemp(prefix="coldstart-failure-", suffix=".txt")
        os.close(handle)
        self.failure_file = Path(name)
        try:
            super().run()
            why = self.failure_file.read_text().strip()
            # a job that exits 0 without its output, with a failure torchrun must not
            # restart (an attempt that failed before a restart succeeded left its line)
            if why and not self.complete():
                raise JobFailed(f"{self.task_family}: {why}")
        except ExternalProgramRunError as err:
            why = self.failure_file.read_text().strip()
            raise JobFailed(f"{self.task_family}: {why}" if why else
                            f"{err.message} {' '.join(map(str, err.args))}; its log above "
                            "says why") from None
        finally:
            self.failure_file.unlink(missing_ok=True)
        self.record_time(time.perf_counter() - started)

    def record_time(self, seconds: float) -> None:
        """One line in the run's stage log, for its report and summary (jobs/report)."""
        run_id = getattr(self, "run_id", None)
        if run_id is None:
            return
        log = root().outputs(run_id).stage_log
        log.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"task": self.task_family, "output": Path(self.output().path).name,
                           "seconds": round(seconds, 2)})
        with open(log, "a", encoding="utf-8") as out:  # one short write: whole lines
            out.write(line + "\n")


class JobTask(ChildProcess, ExternalProgramTask):
    """A job run as a child process with this interpreter's environment."""


class MayFail:
    """A task whose failure the night survives (a model that cannot be trained): inside
    ``survived()``, its failure's one line is kept beside where its output would be, in
    this run only, and the task counts as done; the tasks after it go on without its
    output (``failure()`` says why). A later run tries again, and so does a rerun of
    this one once that file is removed."""

    def refusal(self) -> Path:
        return Path(self.output().path + FAILED)

    def failure(self) -> str | None:
        """Why this run could not make the output, or None."""
        path = self.refusal()
        return path.read_text().strip() if path.exists() else None

    def complete(self) -> bool:
        return super().complete() or self.refusal().exists()

    @contextlib.contextmanager
    def survived(self):
        try:
            yield
        except JobFailed as err:
            storage.write_text(self.refusal(), f"{err}\n")
            logger.error("%s failed; the night goes on without it: %s", self, err)
