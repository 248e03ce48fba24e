"""How the batch jobs after training run as Beam pipelines (jobs/score.py,
jobs/audience.py, jobs/index.py): their runner flags, and where their parts meet.

Each job splits its work into parts (slices of tracks, ranges of users) that Beam
hands to its workers; a part writes its result into the job's temporary output
directory and the job assembles them once the pipeline is done, so the directory
must be a local or mounted filesystem that every worker sees (as the spectrogram
job's --out). By default the pipeline runs on Beam's local FnApiRunner with one
worker in the job's own process, which is what the job did before it was a
pipeline; any other Beam option (--runner=DataflowRunner, --runner=FlinkRunner,
--direct_num_workers=0 --direct_running_mode=multi_processing, ...) is passed through.
"""
from __future__ import annotations

import argparse
import logging
from typing import Callable, Iterable, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from schemas import cli

RUNNER_EPILOG = ("Any other flag is a Beam pipeline option, passed through to Beam (for "
                 "example --direct_num_workers=0 --direct_running_mode=multi_processing, "
                 "or --runner=DataflowRunner --project=... --region=...).")


def add_runner_arguments(parser: argparse.ArgumentParser) -> None:
    """The local runner's flags, with this module's defaults."""
    group = parser.add_argument_group("runner")
    group.add_argument("--runner", default="FnApiRunner",
                       help="Beam runner. Default: %(default)s, the local engine of "
                            "DirectRunner (DirectRunner itself first tries to download the "
                            "Prism runner).")
    group.add_argument("--direct_num_workers", type=int, default=1,
                       help="Local runner: number of workers (0 = one per CPU). "
                            "Default: %(default)s.")
    group.add_argument("--direct_running_mode", default="in_memory",
                       choices=["in_memory", "multi_threading", "multi_processing"],
                       help="Local runner: how workers run. Default: %(default)s.")


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None
          ) -> tuple[argparse.Namespace, list[str]]:
    """The job's own arguments, and the Beam options as flags (the runner's included)."""
    # passed through as given, as the spectrogram job does: Beam parses them, in the
    # --flag=value and the --flag value forms alike
    args, rest = parser.parse_known_args(argv)
    return args, [f"--runner={args.runner}", f"--direct_num_workers={args.direct_num_workers}",
                  f"--direct_running_mode={args.direct_running_mode}", *rest]


def _without_traceback(record: logging.LogRecord) -> bool:
    """False for Beam's log of a failing step's traceback: the job reports the failure
    itself, in one line (schemas/cli.py), unless asked for tracebacks."""
    return cli.debugging() or not record.exc_info


def pipeline(beam_args: Sequence[str] = ()) -> beam.Pipeline:
    """A pipeline with these options (run it as ``with pipeline(...) as p:``)."""
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    steps = logging.getLogger("apache_beam.runners.common")
    if _without_traceback not in steps.filters:
        steps.addFilter(_without_traceback)
    return beam.Pipeline(options=PipelineOptions(list(beam_args)))


def run_parts(label: str, parts: Iterable, work: Callable, beam_args: Sequence[str] = ()) -> None:
    """Run ``work(part)`` for every part, as Beam distributes them (``work`` and the
    parts are pickled to the workers)."""
    parts = list(parts)
    if not parts:
        return
    with pipeline(beam_args) as p:
        _ = p | f"{label}Parts" >> beam.Create(parts) | label >> beam.Map(work)
