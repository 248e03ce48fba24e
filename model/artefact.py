"""Writing and reading the model file (its contract: schemas/model_file.py)."""
from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import torch

from model import bow
from model.net import NetConfig, build_net
from schemas import model_file, storage


def state_version(state: dict) -> str:
    """A content hash of the weights: the same weights always get the same version."""
    digest = hashlib.sha1()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def save_model(path: Path, config: NetConfig | bow.BowShape, state: dict, mel_params: dict,
               factor_scale: float, metrics: dict, unit_output: bool = True,
               factor_space: str | None = None, taste: dict | None = None,
               taste_held_out: dict | None = None) -> str:
    """Write the model file atomically and return its version.

    With ``unit_output`` (nets trained on directions: mse, cosine) scoring turns each
    prediction into a unit vector times ``factor_scale``, the median norm of the ALS
    item factors, so it sits beside ALS factors; otherwise predictions are used as is.
    ``taste``: the arrays of a taste classifier (model/taste.py) to average with;
    ``taste_held_out``: the same fitted without training's validation tracks.
    """
    version = state_version(state)
    artefact = {"format": model_file.FORMAT, "version": version,
                "net_config": config.to_dict(), "state": state,
                "mel_params": mel_params, "factor_scale": factor_scale,
                "unit_output": unit_output, "metrics": metrics,
                model_file.FACTOR_SPACE: factor_space, "taste": taste,
                "taste_held_out": taste_held_out}
    with storage.atomic_file(path) as tmp:
        torch.save(artefact, tmp)
    return version


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


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the predictor from a model file (a CNN, or the bag-of-words baseline);
    returns (model in eval mode, artefact)."""
    artefact = load_weights(path, device)
    model_file.check(artefact, path)
    raw = artefact["net_config"]
    model = bow.BagOfWordsNet(bow.BowShape.from_dict(raw)) if raw.get("arch") == bow.ARCH \
        else build_net(NetConfig.from_dict(raw))
    model.load_state_dict(artefact["state"])
    return model.to(device).eval(), artefact
