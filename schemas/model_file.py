"""The model file: the one interface between training and scoring.

A dict saved with torch.save (tensors and plain values only, loaded without running
code) holding:

    format        FORMAT, the version of this layout
    version       content hash of the weights
    net_config    model.net.NetConfig as a dict: enough to rebuild the network; from
                  format 3 on, model.bow.BowShape when ``arch`` is "bag-of-words"
    state         the network's state_dict
    mel_params    schemas.config.MelParams as a dict: the spectrograms it reads
    factor_scale  norm given to predictions when unit_output
    unit_output   whether predictions are directions (mse, cosine losses)
    metrics       how training went (loss, validation_loss, epochs, ...)
    factor_space  the id of the ALS run's factor space the network learned to predict
                  (format 2 on); scoring refuses to fill another space with it
    taste         (format 4 on) None, or the arrays of a taste classifier whose
                  prediction is averaged with the network's (model/taste.py),
                  fitted on every warm track; from format 5 on its statistics
                  include the rhythm
    taste_held_out  (optional) the same classifier fitted without training's
                  validation tracks: what model.choose judges on those tracks, which
                  the classifier above has learned

Files written before the layout was versioned have the format 1 keys but ``format``.
"""
from __future__ import annotations

import os
from typing import Mapping

FORMAT = 5
KEYS = {1: ("version", "net_config", "state", "mel_params", "factor_scale", "unit_output",
            "metrics")}
KEYS[2] = KEYS[1] + ("factor_space",)
KEYS[3] = KEYS[2]  # the same keys; the predictor may be the bag-of-words baseline
# A version that ignored the taste classifier would predict something else: a new format.
KEYS[4] = KEYS[3] + ("taste",)
# The same keys; the taste classifier reads rhythm statistics too (model/taste.py), so a
# version before them cannot apply it.
KEYS[5] = KEYS[4]
# The metadata key of ALS factors (and the model file key) naming their factor space.
FACTOR_SPACE = "factor_space"


def check(artefact: Mapping[str, object], path: str | os.PathLike) -> None:
    """Raise ValueError naming ``path`` unless ``artefact`` is a model file this
    version reads."""
    if not isinstance(artefact, Mapping):
        raise ValueError(f"{path}: not a model file (holds a {type(artefact).__name__})")
    found = artefact.get("format", 1)
    if found not in KEYS:
        raise ValueError(f"{path}: model file format {found!r}; this version of the pipeline "
                         f"reads formats {sorted(KEYS)} (retrain, or score with the version "
                         "that wrote it)")
    missing = [key for key in KEYS[found] if key not in artefact]
    if missing:
        raise ValueError(f"{path}: model file lacks {missing}")


def check_factor_space(artefact: Mapping[str, object], path: str | os.PathLike,
                       factors_params: Mapping[str, object],
                       factors_path: str | os.PathLike) -> None:
    """Raise ValueError unless the model at ``path`` learned the factor space of the
    ALS factors at ``factors_path`` (whose metadata is ``factors_params``): its
    predictions would sit in another space than the factors they are served with."""
    learned, wanted = artefact.get(FACTOR_SPACE), factors_params.get(FACTOR_SPACE)
    if learned is None:
        raise ValueError(f"{path}: the model does not record which ALS factors it learned "
                         f"(model file format {artefact.get('format', 1)}); retrain it")
    if learned != wanted:
        raise ValueError(f"{path}: the model learned the factor space {learned} but "
                         f"{factors_path} is in {wanted}: retrain it on these factors")
