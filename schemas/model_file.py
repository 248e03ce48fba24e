"""The model file: the one interface between training, choosing and scoring.

A dict saved with torch.save (tensors and plain values only, loaded without running
code); model/predictor.py reads and writes it. From format 6 on it holds:

    format        FORMAT, the version of this layout
    version       content hash of every member's learned arrays
    mel_params    schemas.config.MelParams as a dict: the spectrograms it reads
    factor_space  the id of the ALS run's factor space the predictor learned to
                  predict; scoring refuses to fill another space with it
    metrics       how training went (loss, validation_loss, epochs, ...) and, once
                  chosen, why (selection)
    members       the ensemble whose predictions are averaged: one dict per member,
                  its ``kind`` (model/predictor.py MEMBERS) and what that member
                  saves of itself

Formats 1 to 5 held one network (or the bag-of-words baseline) as keys of the file:

    net_config    model.net.NetConfig as a dict, or model.bow.BowShape when ``arch``
                  is "bag-of-words" (format 3 on)
    state         its state_dict
    factor_scale  norm given to predictions when unit_output
    unit_output   whether predictions are directions (mse, cosine losses)
    factor_space  (format 2 on)
    taste         (format 4 on) None, or a taste classifier's arrays (model/taste.py),
                  from format 5 on of statistics that include the rhythm
    taste_held_out  (optional) the same classifier fitted without the validation tracks

Files written before the layout was versioned have the format 1 keys but ``format``.
"""
from __future__ import annotations

import os
from typing import Mapping

FORMAT = 6
KEYS = {1: ("version", "net_config", "state", "mel_params", "factor_scale", "unit_output",
            "metrics")}
KEYS[2] = KEYS[1] + ("factor_space",)
KEYS[3] = KEYS[2]  # the same keys; the predictor may be the bag-of-words baseline
# A version that ignored the taste classifier would predict something else: a new format.
KEYS[4] = KEYS[3] + ("taste",)
# The same keys; the taste classifier reads rhythm statistics too (model/taste.py), so a
# version before them cannot apply it.
KEYS[5] = KEYS[4]
# The members as a list, each saving itself: a new kind of member needs no new key.
KEYS[6] = ("version", "mel_params", "factor_space", "metrics", "members")
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


def check_factor_space(learned: str | None, path: str | os.PathLike, wanted: str | None,
                       factors_path: str | os.PathLike) -> None:
    """Raise ValueError unless the model at ``path``, which learned the factor space
    ``learned``, may fill the space ``wanted`` of the ALS factors at ``factors_path``:
    its predictions would sit in another space than the factors they are served with."""
    if learned is None:
        raise ValueError(f"{path}: the model does not record which ALS factors it learned; "
                         "retrain it")
    if learned != wanted:
        raise ValueError(f"{path}: the model learned the factor space {learned} but "
                         f"{factors_path} is in {wanted}: retrain it on these factors")
