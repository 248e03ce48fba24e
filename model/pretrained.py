"""The pretrained front end's member: frozen tagger features and a learned head.

The taggers (model/musicnn.py) stay as their wheel ships them; only the head, from a
track's pooled features (model/frontend.py) to its ALS factors, is fitted here, on
warm tracks. Two heads:

- ``ridge``: ridge regression from the standardised features to the unit factors,
  its strength chosen by generalised cross-validation on the warm tracks (closed form,
  deterministic); predictions are unit directions times the factors' median norm, as
  the networks' are.
- ``clusters``: the taste classifier's head (model/taste.py) on these features: warm
  tracks grouped by their factors, a logistic regression of the group, and the
  groups' mean factors weighted by its probabilities.

A member keeps the head fitted on every warm track, and one fitted without each
fold of them (``fold``), so that choosing can judge it on every warm track it did not
learn (jobs/evaluate/choose.py). The taggers' weights are not in the model file; their
digest is, and a model fitted on other weights refuses to predict.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from sklearn.linear_model import RidgeCV

from model import frontend, taste
from model.data import unit_rows
from model.member import Member

RIDGE_ALPHAS = np.logspace(0, 5, 16)  # relative to the feature count; see fit


def fit(features: np.ndarray, factors: np.ndarray, head: str, c: float, seed: int,
        bags: int = 1) -> dict[str, torch.Tensor] | None:
    """A head's arrays fitted on warm tracks' ``features`` and ALS ``factors``; None when
    the tracks are too few. ``c``, ``bags``: the clusters head's inverse L2 strength and
    clusterings (model/taste.py fit)."""
    if head == "clusters":
        arrays = taste.fit(features, factors, c, seed, bags=bags)
        return None if arrays is None else {**arrays, "clusters": torch.ones(1)}
    if head != "ridge":
        raise ValueError(f"unknown head {head!r}; expected ridge or clusters")
    if len(features) < 3:
        return None
    mean, scale = features.mean(axis=0), features.std(axis=0)
    scale[scale == 0] = 1.0
    standard = (features - mean) / scale
    # strengths scale with the feature count: every feature has unit variance
    ridge = RidgeCV(alphas=RIDGE_ALPHAS * standard.shape[1] / 100).fit(standard, unit_rows(factors))
    arrays = {"mean": mean, "scale": scale, "coef": ridge.coef_.T,
              "intercept": ridge.intercept_,
              "factor_scale": [np.median(np.linalg.norm(factors, axis=1))],
              "alpha": [ridge.alpha_]}
    return {name: torch.from_numpy(np.asarray(a, np.float32)) for name, a in arrays.items()}


def apply(head: dict[str, torch.Tensor], features: torch.Tensor) -> np.ndarray:
    """(tracks, rank) float32 factors of pooled ``features``."""
    if head["mean"].shape[0] != features.shape[1]:
        raise ValueError(f"the head was fitted on {head['mean'].shape[0]} features, the "
                         f"taggers give {features.shape[1]}: refit the model")
    if "clusters" in head:
        return taste.predict_features(head, features).cpu().numpy()
    mean, scale, coef, intercept = (head[name].to(features.device, torch.float32)
                                    for name in ("mean", "scale", "coef", "intercept"))
    out = (((features.float() - mean) / scale) @ coef + intercept).cpu().numpy()
    return unit_rows(out) * float(head["factor_scale"][0])


class Pretrained(Member):
    """Frozen taggers and a head: ``head`` fitted on every warm track, ``folds[i]``
    without fold i (None where too few tracks were left), ``held_out`` without
    training's validation tracks."""

    kind = "pretrained"
    input = "frontend"

    def __init__(self, head: dict, weights: str, folds: list | None = None,
                 held_out: dict | None = None):
        self.head, self.weights = head, weights
        self.folds, self.held_out_head = list(folds or []), held_out

    @property
    def n_factors(self) -> int:
        return int(self.head["centres" if "clusters" in self.head else "coef"].shape[-1])

    def check(self, where: str) -> None:
        installed = frontend.version()
        if installed != self.weights:
            raise ValueError(f"{where}: fitted on tagger weights {self.weights}, the installed "
                             f"musicnn wheel has {installed}: refit the model")

    def predict(self, mel: torch.Tensor, tokens: torch.Tensor | None) -> np.ndarray:
        return apply(self.head, torch.from_numpy(frontend.hear(mel).features).to(mel.device))

    def recall(self, shard: Path, table: pa.Table) -> None:
        frontend.recall_heard(shard, table)  # what the taggers heard there, kept beside it

    def fold(self, index: int) -> "Pretrained | None":
        head = self.folds[index] if index < len(self.folds) else None
        return None if head is None else Pretrained(head, self.weights)

    def held_out(self) -> "Pretrained | None":
        return None if self.held_out_head is None else Pretrained(self.held_out_head, self.weights)

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.head)

    def state(self) -> dict:
        return {"head": self.head, "weights": self.weights, "folds": self.folds,
                "held_out": self.held_out_head}

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> "Pretrained":
        return cls(state["head"], state["weights"], state.get("folds"), state.get("held_out"))
