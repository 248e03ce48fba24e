"""Parameter types of the workflow's tasks."""
from __future__ import annotations

import sys

import luigi

from schemas import cli, layout


class RunIdParameter(luigi.Parameter):
    """A run's name: one plain path component under DATA_ROOT/runs/, never a way out
    of the data root (schemas.layout.check_run_id)."""

    def parse(self, x):
        # Given on the command line (or in luigi.cfg): a bad one is a usage error, as
        # luigi's own argument errors are, not an "uncaught exception" with a traceback.
        try:
            return layout.check_run_id(x)
        except ValueError as err:
            print(f"error: --run-id: {err}", file=sys.stderr)
            raise SystemExit(cli.USAGE) from None

    def normalize(self, x):
        return layout.check_run_id(str(x))
