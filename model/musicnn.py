"""The pretrained musicnn taggers (Pons & Serra, 2019) in PyTorch.

The weights are the TensorFlow checkpoints inside the `musicnn` wheel (pinned in
requirements.lock, installed without its dependencies), read with model.tf_checkpoint;
TensorFlow is never imported. Input patches are log-mel spectrograms of 16 kHz audio:
n_fft 512, hop 256, 96 bands of librosa's default (Slaney) mel filterbank, values
log10(1 + 10000 * mel power); 187 frames make the 3 s the taggers were trained on.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.tf_checkpoint import WeightsError, read_checkpoint

TAGGERS = ("MTT_musicnn", "MSD_musicnn")
PATCH_FRAMES = 187
N_MELS = 96
_INSTALL = "pip install --no-deps musicnn==0.1.0"

_EPS = 1e-3  # TensorFlow's batch-norm default
_TIMBRAL = ((7, int(0.4 * N_MELS)), (7, int(0.7 * N_MELS)))  # (frames, bands) kernels
_TIMBRAL_FILTERS = int(1.6 * 128)
_TEMPORAL = (128, 64, 32)  # frames
_TEMPORAL_FILTERS = int(1.6 * 32)
FRONTEND_FEATURES = len(_TIMBRAL) * _TIMBRAL_FILTERS + len(_TEMPORAL) * _TEMPORAL_FILTERS  # 561
_MIDEND_FILTERS, _MIDEND_LAYERS = 64, 3
MIDEND_FEATURES = FRONTEND_FEATURES + _MIDEND_LAYERS * _MIDEND_FILTERS  # 753
PENULTIMATE_FEATURES = 200


class Outputs(NamedTuple):
    """What the network computes for n patches of T frames (float32)."""
    frontend: torch.Tensor  # (n, T, 561): timbral 7x38, 7x67 then temporal 128, 64, 32
    midend: torch.Tensor  # (n, T, 753): the front end, then the three mid-end layers
    mean_pool: torch.Tensor  # (n, 753): midend averaged over time
    max_pool: torch.Tensor  # (n, 753): its maximum over time
    penultimate: torch.Tensor  # (n, 200): the last hidden layer, after its batch norm
    logits: torch.Tensor  # (n, tags)

    @property
    def probabilities(self) -> torch.Tensor:
        """(n, tags): each tag's probability (the taggers are trained multi-label)."""
        return torch.sigmoid(self.logits)


class _Branch(nn.Module):
    """conv -> relu -> batch norm -> max over every band: (n, 1, T, bands) -> (n, filters, T).
    `pad` zero-pads time before and after (TensorFlow's 'same' puts the odd frame after)."""

    def __init__(self, filters: int, kernel: tuple[int, int], pad: tuple[int, int]):
        super().__init__()
        self.pad = pad
        self.conv = nn.Conv2d(1, filters, kernel)
        self.norm = nn.BatchNorm2d(filters, eps=_EPS)

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        maps = self.conv(F.pad(spectrogram, (0, 0, *self.pad)))
        if self.norm.training:
            return self.norm(F.relu(maps)).amax(dim=3)
        # With fixed statistics, relu then batch norm is monotonic for each filter, so the
        # band maximum can be taken first (the minimum where the norm's scale is negative):
        # the same values, without normalising every band.
        low, high = torch.aminmax(maps, dim=3)
        norm = self.norm
        rising = (norm.weight >= 0).unsqueeze(1)
        return F.batch_norm(F.relu(torch.where(rising, high, low)), norm.running_mean,
                            norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)


class _MidEnd(nn.Module):
    """Three 7-frame convolutions over the front end's features, the last two residual."""

    def __init__(self):
        super().__init__()
        widths = (FRONTEND_FEATURES,) + (_MIDEND_FILTERS,) * (_MIDEND_LAYERS - 1)
        self.convs = nn.ModuleList(nn.Conv1d(w, _MIDEND_FILTERS, 7, padding=3) for w in widths)
        self.norms = nn.ModuleList(nn.BatchNorm1d(_MIDEND_FILTERS, eps=_EPS) for _ in widths)

    def forward(self, frontend: torch.Tensor) -> list[torch.Tensor]:
        """frontend: (n, 561, T) -> [frontend, layer 1, layer 2, layer 3], each (n, C, T)."""
        layers = [frontend]
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            out = norm(F.relu(conv(layers[-1])))
            layers.append(out if i == 0 else out + layers[-1])
        return layers


class _BackEnd(nn.Module):
    """Max and mean over time -> batch norm -> dense 200, relu -> batch norm -> dense tags."""

    def __init__(self, n_tags: int):
        super().__init__()
        self.pool_norm = nn.BatchNorm1d(2 * MIDEND_FEATURES, eps=_EPS)
        self.hidden = nn.Linear(2 * MIDEND_FEATURES, PENULTIMATE_FEATURES)
        self.hidden_norm = nn.BatchNorm1d(PENULTIMATE_FEATURES, eps=_EPS)
        self.output = nn.Linear(PENULTIMATE_FEATURES, n_tags)

    def forward(self, max_pool: torch.Tensor, mean_pool: torch.Tensor):
        # The original flattens (features, [max, mean]): each feature's max, then its mean.
        pooled = torch.stack([max_pool, mean_pool], dim=2).flatten(1)
        penultimate = self.hidden_norm(F.relu(self.hidden(self.pool_norm(pooled))))
        return penultimate, self.output(penultimate)


class MusiCNN(nn.Module):
    """musicnn: timbral and temporal front end, dense mid end, pooled dense back end."""

    def __init__(self, n_tags: int = 50):
        super().__init__()
        self.input_norm = nn.BatchNorm2d(1, eps=_EPS)
        # The timbral kernels span the time axis (padded by 3 frames each side) but only
        # part of the bands; the temporal ones span time only.
        timbral = [_Branch(_TIMBRAL_FILTERS, kernel, (3, 3)) for kernel in _TIMBRAL]
        temporal = [_Branch(_TEMPORAL_FILTERS, (frames, 1), ((frames - 1) // 2, frames // 2))
                    for frames in _TEMPORAL]
        self.frontend = nn.ModuleList(timbral + temporal)
        self.midend = _MidEnd()
        self.backend = _BackEnd(n_tags)

    def forward(self, patches: torch.Tensor) -> Outputs:
        """patches: (n, T, 96) float32 log-mel (frames, bands). The taggers were trained on
        T = 187 (3 s); other lengths run too."""
        if patches.dim() != 3 or patches.shape[2] != N_MELS:
            raise ValueError(f"patches must be (n, frames, {N_MELS}), not {tuple(patches.shape)}")
        spectrogram = self.input_norm(patches.unsqueeze(1))
        frontend = torch.cat([branch(spectrogram) for branch in self.frontend], dim=1)
        midend = torch.cat(self.midend(frontend), dim=1)  # (n, 753, T)
        max_pool, mean_pool = midend.amax(dim=2), midend.mean(dim=2)
        penultimate, logits = self.backend(max_pool, mean_pool)
        return Outputs(frontend.transpose(1, 2), midend.transpose(1, 2), mean_pool, max_pool,
                       penultimate, logits)


# TensorFlow variable -> torch parameter or buffer, per kind of layer; optimiser state
# (Adam slots, beta1_power, ...) is left unread.
_VARIABLES = {
    "batch_normalization": {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                            "moving_variance": "running_var"},
    "conv2d": {"kernel": "weight", "bias": "bias"},
    "dense": {"kernel": "weight", "bias": "bias"},
}


_WEIGHT_NAMES = {variable for kind in _VARIABLES.values() for variable in kind}


def _is_weight(variable: str) -> bool:
    """Adam's slots are named `<variable>/Adam`, so they fail this too."""
    return variable.rsplit("/", 1)[-1] in _WEIGHT_NAMES


def _kind(layer: nn.Module) -> str:
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        return "batch_normalization"
    return "dense" if isinstance(layer, nn.Linear) else "conv2d"


def _in_creation_order(net: MusiCNN) -> list[nn.Module]:
    """The layers in the order the original graph creates them, which numbers their
    variables (conv2d, conv2d_1, ...; batch_normalization, batch_normalization_1, ...)."""
    layers = [net.input_norm]
    for branch in net.frontend:
        layers += [branch.conv, branch.norm]
    for conv, norm in zip(net.midend.convs, net.midend.norms):
        layers += [conv, norm]
    backend = net.backend
    return layers + [backend.pool_norm, backend.hidden, backend.hidden_norm, backend.output]


def _torch_kernel(layer: nn.Module, kernel: np.ndarray) -> np.ndarray:
    if isinstance(layer, nn.Linear):  # (in, out)
        return kernel.T
    if isinstance(layer, nn.Conv1d):  # (frames, channels, 1, out): channels were conv width
        return kernel[:, :, 0, :].transpose(2, 1, 0)
    return kernel.transpose(3, 2, 0, 1)  # (frames, bands, in, out)


@torch.no_grad()
def _assign(net: MusiCNN, weights: dict[str, np.ndarray], source: str) -> None:
    seen: dict[str, int] = {}
    for layer in _in_creation_order(net):
        kind = _kind(layer)
        count = seen[kind] = seen.get(kind, -1) + 1
        scope = kind if count == 0 else f"{kind}_{count}"
        for variable, target in _VARIABLES[kind].items():
            name = f"{scope}/{variable}"
            if name not in weights:
                raise WeightsError(f"{source}: no variable '{name}'")
            value = weights[name]
            value = _torch_kernel(layer, value) if variable == "kernel" else value
            tensor = getattr(layer, target)
            if tuple(value.shape) != tuple(tensor.shape):
                raise WeightsError(f"{source}: '{name}' has shape {weights[name].shape}, "
                                   f"which does not fit musicnn's {tuple(tensor.shape)}")
            tensor.copy_(torch.from_numpy(np.ascontiguousarray(value)))


def _check_name(name: str) -> None:
    if name not in TAGGERS:
        raise ValueError(f"unknown tagger {name!r}; choose one of {', '.join(TAGGERS)}")


def checkpoint_dir(name: str) -> Path:
    """Where the installed musicnn wheel keeps tagger `name`'s checkpoint."""
    _check_name(name)
    # find_spec locates the package without importing it (nor TensorFlow).
    spec = importlib.util.find_spec("musicnn")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"the musicnn package (the taggers' weights) is not installed: "
                           f"{_INSTALL}")
    return Path(list(spec.submodule_search_locations)[0]) / name


def labels(name: str) -> tuple[str, ...]:
    """The tag of each output of tagger `name`, in order."""
    checkpoint_dir(name)
    configuration = importlib.import_module("musicnn.configuration")  # plain lists, no imports
    return tuple(configuration.MTT_LABELS if name.startswith("MTT") else configuration.MSD_LABELS)


def load(name: str, device: torch.device | str = "cpu",
         directory: str | os.PathLike | None = None) -> MusiCNN:
    """Tagger `name` in eval mode, with the weights of the installed musicnn wheel, or of
    the checkpoint in `directory` (files `.index` and `.data-00000-of-00001`) if given.
    A missing or damaged file raises WeightsError naming it."""
    directory = Path(directory) if directory is not None else checkpoint_dir(name)
    weights = read_checkpoint(f"{directory}{os.sep}", include=_is_weight)
    net = MusiCNN(n_tags=len(labels(name)))
    _assign(net, weights, str(directory / ".index"))
    return net.to(device).eval()
