"""Where a run's outputs are: found in its directory by the names schemas/layout.py gives them."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pyarrow as pa

import schemas
from model.predictor import Predictor
from schemas import layout, storage
from schemas.config import MelParams


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
    published: Path  # the run's snapshot directory
    mels: Path | None  # the spectrograms of the shipped model's parameters
    tags: Path | None  # every track's top tags from the pretrained taggers (jobs/tags.py)
    frontend_mels: Path | None = None  # the pretrained tagger's input made beside them

    @property
    def outputs(self) -> layout.RunOutputs:
        return layout.RunOutputs(self.run)

    @property
    def stages(self) -> Path:
        return self.outputs.stage_log

    @cached_property
    def track_factors(self) -> pa.Table | None:
        """The combined factor table, read once for every section that needs it."""
        if not self.factors:
            return None
        return storage.read_table(self.factors / layout.TRACK_FACTORS, schemas.TRACK_FACTORS)

    @cached_property
    def track_tags(self) -> dict[str, list[str]]:
        """Each tagged track's top tags, most probable first; {} when the run has none."""
        if not self.tags:
            return {}
        table = storage.read_table(self.tags, schemas.TRACK_TAGS)
        return dict(zip(table["track_id"].to_pylist(), table["tags"].to_pylist()))


def find(run: Path, catalogue: Path | None = None, plays: Path | None = None) -> RunFiles:
    """The outputs of the run in ``run`` (DATA_ROOT/runs/<run id>). The catalogue and
    plays default to those the run's published snapshot records."""
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run directory")
    outputs = layout.RunOutputs(run)
    data_root = outputs.data_root
    published = layout.snapshot_dir(data_root.published, run.name)
    manifest = published / layout.SNAPSHOT_MANIFEST
    recorded = json.loads(manifest.read_text())["inputs"] if manifest.exists() else {}
    catalogue = catalogue or (recorded.get("catalogue") and Path(recorded["catalogue"]))
    plays = plays or (recorded.get("plays") and Path(recorded["plays"]))
    chosen = outputs.newest_chosen_model()
    params = None if chosen is None else MelParams.from_dict(Predictor.load(chosen).mel_params)
    frontend = None if params is None else layout.params_dir(data_root.mels, params.frontend())
    return RunFiles(
        run=run, als=outputs.newest_als(), heldout_als=outputs.newest_als(heldout=True),
        factors=outputs.newest_factors(), chosen=chosen, models=outputs.trained_models(),
        evaluation=outputs.newest_evaluation(), catalogue=catalogue, plays=plays,
        published=published, mels=None if params is None else layout.params_dir(
            data_root.mels, params), tags=outputs.newest_tags(),
        frontend_mels=frontend if frontend is not None and frontend.is_dir() else None)
