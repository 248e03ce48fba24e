"""Where a run's outputs are: found in its directory by the names the workflow gives them."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from schemas import layout


def newest(run: Path, pattern: str) -> Path | None:
    found = sorted(run.glob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


@dataclass
class RunFiles:
    run: Path
    als: Path | None  # the production ALS run (every play), not the evaluation's hold-out
    heldout_als: Path | None
    factors: Path | None
    chosen: Path | None
    models: list[Path]  # every trained CNN of the run, the evaluation's included
    evaluation: Path | None
    catalogue: Path | None
    plays: Path | None
    mels_root: Path

    @property
    def stages(self) -> Path:
        return self.run / layout.STAGE_LOG


def find(run: Path, catalogue: Path | None = None, plays: Path | None = None) -> RunFiles:
    """The outputs of the run in ``run`` (DATA_ROOT/runs/<run id>). The catalogue and
    plays default to those the run's published snapshot records."""
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run directory")
    data_root = run.parent.parent
    manifest = layout.snapshot_dir(data_root / "published", run.name) / layout.SNAPSHOT_MANIFEST
    recorded = json.loads(manifest.read_text())["inputs"] if manifest.exists() else {}
    catalogue = catalogue or (recorded.get("catalogue") and Path(recorded["catalogue"]))
    plays = plays or (recorded.get("plays") and Path(recorded["plays"]))
    models = sorted(p for p in run.glob("model-*.pt") if not p.name.startswith("model-chosen-"))
    return RunFiles(
        run=run, als=newest(run, "als-[0-9a-f]*"), heldout_als=newest(run, "als-heldout-*"),
        factors=newest(run, "factors-*"), chosen=newest(run, "model-chosen-*.pt"), models=models,
        evaluation=newest(run, "evaluation-*.json"), catalogue=catalogue, plays=plays,
        mels_root=data_root / "mels")
