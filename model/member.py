"""What a member of a shipped predictor's ensemble is (model/predictor.py averages them).

A member turns a batch of log-mel excerpts, and the tracks' catalogue tokens where it
reads them, into factors in the ALS space it learned. It saves itself as plain values
and tensors (the model file is loaded without running code) and is rebuilt from them.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from schemas.metrics import unit_rows


class Member:
    """One part of the ensemble. ``kind`` names it in the model file."""

    kind: ClassVar[str]
    # the spectrograms it reads: "mels", the predictor's own settings, or "frontend",
    # the pretrained taggers' input made with them (schemas/config.py)
    input: ClassVar[str] = "mels"
    vocabulary: tuple[str, ...] = ()  # the catalogue tokens it reads; () for audio only
    n_factors: int  # the rank of the factors it predicts

    def predict(self, mel: torch.Tensor, tokens: torch.Tensor | None) -> np.ndarray:
        """(n, rank) float32 factors of ``mel`` (n, n_mels, frames), any float dtype, on
        the member's device; ``tokens`` (n, MAX_TOKENS) int64 when ``vocabulary``."""
        raise NotImplementedError

    def state(self) -> dict:
        """Plain values and tensors that ``from_state`` rebuilds the member from."""
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> "Member":
        raise NotImplementedError

    def check(self, where: str) -> None:
        """ValueError naming ``where`` (the model file) when it cannot predict here."""

    def recall(self, shard: Path, table: pa.Table) -> None:
        """Before predicting ``table`` (rows of ``shard``, conformed): take what is kept
        beside the shard about them rather than computing it again. Nothing to take by
        default."""

    def fold(self, index: int) -> "Member | None":
        """The member as fitted without fold ``index`` of the warm tracks
        (model/data.py fold_of), or None: it has no such version."""
        return None

    def held_out(self) -> "Member | None":
        """The member as fitted without training's validation tracks, to be judged on
        them (None: it has no such version and sits out)."""
        return self

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every learned array, by name: the predictor's version hashes them."""
        return {}


class ScaledModule(Member):
    """A torch module, run in bf16 autocast on a GPU. A module trained on directions
    (``unit_output``) gives unit vectors times ``factor_scale``, the median norm of the
    ALS item factors, so that they sit beside ALS factors."""

    def __init__(self, module: nn.Module, factor_scale: float, unit_output: bool):
        self.module, self.factor_scale, self.unit_output = module.eval(), factor_scale, unit_output

    @property
    def n_factors(self) -> int:
        return self.module.config.n_factors

    @torch.no_grad()
    def predict(self, mel: torch.Tensor, tokens: torch.Tensor | None) -> np.ndarray:
        inputs = (mel,) if tokens is None or not self.vocabulary else (mel, tokens)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mel.device.type == "cuda"):
            out = self.module(*inputs).float().cpu().numpy()
        return unit_rows(out) * self.factor_scale if self.unit_output else out

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.module.state_dict())

    def state(self) -> dict:
        return {"config": self.module.config.to_dict(), "weights": self.module.state_dict(),
                "factor_scale": self.factor_scale, "unit_output": self.unit_output}

    @staticmethod
    def build(config: dict) -> nn.Module:
        """The untrained module of a stored ``config``."""
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> "ScaledModule":
        module = cls.build(state["config"])
        module.load_state_dict(state["weights"])
        return cls(module.to(device), state["factor_scale"], state["unit_output"])
