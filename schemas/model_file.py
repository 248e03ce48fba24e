"""The model file: the one interface between training and scoring.

A dict saved with torch.save (tensors and plain values only, loaded without running
code) holding:

    format        FORMAT, the version of this layout
    version       content hash of the weights
    net_config    model.net.NetConfig as a dict: enough to rebuild the network
    state         the network's state_dict
    mel_params    schemas.config.MelParams as a dict: the spectrograms it reads
    factor_scale  norm given to predictions when unit_output
    unit_output   whether predictions are directions (mse, cosine losses)
    metrics       how training went (loss, validation_loss, epochs, ...)

Files written before the layout was versioned have every key but ``format``: they
are format 1.
"""
from __future__ import annotations

import os
from typing import Mapping

FORMAT = 1
KEYS = ("version", "net_config", "state", "mel_params", "factor_scale", "unit_output",
        "metrics")


def check(artefact: Mapping[str, object], path: str | os.PathLike) -> None:
    """Raise ValueError naming ``path`` unless ``artefact`` is a model file this
    version reads."""
    if not isinstance(artefact, Mapping):
        raise ValueError(f"{path}: not a model file (holds a {type(artefact).__name__})")
    found = artefact.get("format", 1)
    if found != FORMAT:
        raise ValueError(f"{path}: model file format {found!r}; this version of the pipeline "
                         f"reads format {FORMAT} (retrain, or score with the version that "
                         "wrote it)")
    missing = [key for key in KEYS if key not in artefact]
    if missing:
        raise ValueError(f"{path}: model file lacks {missing}")
