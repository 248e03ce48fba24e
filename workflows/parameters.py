"""Parameter types of the workflow's tasks."""
from __future__ import annotations

import luigi

from schemas import layout


class RunIdParameter(luigi.Parameter):
    """A run's name: one plain path component under DATA_ROOT/runs/, never a way out
    of the data root (schemas.layout.check_run_id)."""

    def normalize(self, x):
        return layout.check_run_id(str(x))
