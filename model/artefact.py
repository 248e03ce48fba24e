"""Reading a file of weights written by torch.save (model files, training snapshots)
without running code; model/predictor.py owns the model file itself."""
from __future__ import annotations

import os
import pickle

import torch


class UnsafeFileError(ValueError):
    """A model or snapshot file holds more than weights and plain values."""


def load_weights(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict:
    """A file written by torch.save of tensors and plain values, loaded without
    running code: a file that would need to import or call anything is refused."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0]
        raise UnsafeFileError(f"{path}: refused to load: it holds objects other than weights "
                              f"and plain values, and loading it could run code "
                              f"({reason})") from None
