"""Running a task's job as a child process: its environment, its failure, its time."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from luigi.contrib.external_program import ExternalProgramRunError, ExternalProgramTask

from workflows.locations import root

# This interpreter's scripts (spark-submit, torchrun).
BIN = Path(sys.executable).parent


def job_environment() -> dict:
    """Child processes use this interpreter and find its scripts (spark-submit, torchrun)."""
    env = os.environ.copy()
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    return env


class JobFailed(RuntimeError):
    """A job's process failed; its own log, streamed above, says why."""


class ChildProcess:
    """Runs the task's job with this interpreter's environment; a failure is reported
    with the command and exit code alone. luigi's own error text carries the whole
    environment, tokens and passwords included, into logs and the scheduler's UI."""
    capture_output = False  # stream the job's own log to the console

    def program_environment(self):
        return job_environment()

    def run(self):
        if self.complete():  # its inputs, known only now, are ones an earlier run used
            return
        started = time.perf_counter()
        try:
            super().run()
        except ExternalProgramRunError as err:
            raise JobFailed(f"{err.message} {' '.join(map(str, err.args))}; its log above "
                            "says why") from None
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
