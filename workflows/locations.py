"""Where the workflow finds its data: the data root and the user's catalogue and plays."""
from __future__ import annotations

from pathlib import Path

import luigi

from schemas import layout


class paths(luigi.Config):
    """Where data lives. The data root comes from COLDSTART_DATA_ROOT (default ./data)."""
    catalogue = luigi.OptionalPathParameter(
        default=None, description="catalogue Parquet; default DATA_ROOT/catalogue.parquet")
    plays = luigi.OptionalPathParameter(
        default=None, description="play counts: a Parquet, CSV or triplet file or a directory "
        "of them ([TrainAls] says how to read it); default DATA_ROOT/plays.parquet")


def root() -> layout.DataRoot:
    return layout.DataRoot(layout.data_root())


def user_inputs() -> tuple[Path, Path]:
    """(catalogue, plays) a user supplied, configured or at their default place."""
    cfg = paths()
    return Path(cfg.catalogue or root().catalogue), Path(cfg.plays or root().plays)


def configured_inputs() -> bool:
    """Whether luigi.cfg names the catalogue or the plays ([paths])."""
    cfg = paths()
    return cfg.catalogue is not None or cfg.plays is not None
