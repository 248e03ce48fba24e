"""What the pretrained taggers (model/musicnn.py) hear in a track, pooled per track.

A track's tagger input (the spectrogram job's second output: 96 Slaney bands of 16 kHz
audio, log10(1 + 10000 x)) is cut into non-overlapping 3-second patches, the taggers'
input length; every tagger runs on every patch, and each layer is pooled over the
track's patches (and, for the per-frame front end, over its frames) by mean and
spread. Those vectors feed a learned head (model/pretrained.py); the tags' mean
probabilities are what the published track table shows.

Why these layers: the front end's pooled filters describe timbre and tempo and carry
over to music the taggers never heard; the penultimate layer and the tags describe
genre and mood as the taggers' datasets saw them. The head is fitted on all of them.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch

from model import musicnn

CHUNK = 16  # tracks whose patches run through a tagger at a time (memory: ~70 MB each)


class Heard(NamedTuple):
    """features: (tracks, dims) float32, every tagger's pooled layers side by side;
    tags: tagger name -> (tracks, labels) float32, mean tag probabilities."""
    features: np.ndarray
    tags: dict[str, np.ndarray]


def patches(mel: torch.Tensor) -> torch.Tensor:
    """(tracks, patches, PATCH_FRAMES, bands) of tagger inputs (tracks, bands, frames):
    every whole patch; an excerpt shorter than one patch is looped to fill it."""
    frames = mel.shape[2]
    if frames < musicnn.PATCH_FRAMES:
        mel = mel.repeat(1, 1, -(-musicnn.PATCH_FRAMES // frames))[:, :, :musicnn.PATCH_FRAMES]
    count = mel.shape[2] // musicnn.PATCH_FRAMES
    cut = mel[:, :, :count * musicnn.PATCH_FRAMES].float()
    return cut.reshape(mel.shape[0], mel.shape[1], count, musicnn.PATCH_FRAMES).permute(0, 2, 3, 1)


@functools.lru_cache(maxsize=4)
def taggers(device: str = "cpu") -> dict[str, torch.nn.Module]:
    """Every tagger, loaded once per process and device."""
    return {name: musicnn.load(name, device) for name in musicnn.TAGGERS}


def _mean_spread(values: torch.Tensor) -> list[torch.Tensor]:
    """Mean and standard deviation over dimension 1 of (tracks, samples, dims)."""
    return [values.mean(dim=1), values.std(dim=1, correction=0)]


@torch.inference_mode()
def hear(mel: torch.Tensor) -> Heard:
    """The pooled features and mean tag probabilities of tagger inputs (tracks, bands,
    frames), computed where ``mel`` is."""
    features, tags = [], {name: [] for name in musicnn.TAGGERS}
    nets = taggers(str(mel.device))
    for start in range(0, mel.shape[0], CHUNK):
        cut = patches(mel[start:start + CHUNK])
        n, p = cut.shape[:2]
        parts = []
        for name, net in nets.items():
            out = net(cut.reshape(n * p, *cut.shape[2:]))
            frames = out.frontend.reshape(n, -1, out.frontend.shape[-1])
            probabilities = torch.sigmoid(out.logits).reshape(n, p, -1)
            parts += _mean_spread(frames) + _mean_spread(out.penultimate.reshape(n, p, -1)) \
                + _mean_spread(probabilities)
            tags[name].append(probabilities.mean(dim=1).cpu().numpy())
        features.append(torch.cat(parts, dim=1).cpu().numpy())
    empty = np.zeros((0, 0), np.float32)
    return Heard(np.concatenate(features) if features else empty,
                 {name: np.concatenate(t) if t else empty for name, t in tags.items()})


def top_tags(probabilities: dict[str, np.ndarray], count: int = 5) -> list[list[str]]:
    """Each track's ``count`` most probable tags over every tagger (a tag both taggers
    know counts once, at its higher probability), most probable first."""
    names = list(probabilities)
    if not names:
        return []
    out = []
    for row in range(len(probabilities[names[0]])):
        best: dict[str, float] = {}
        for name in names:
            for label, p in zip(musicnn.labels(name), probabilities[name][row]):
                key = label.lower()
                best[key] = max(best.get(key, 0.0), float(p))
        out.append(sorted(best, key=best.get, reverse=True)[:count])
    return out
