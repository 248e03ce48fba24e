"""The audio CNN that maps a log-mel spectrogram to collaborative-filtering factors.

Dieleman (2014): 1-D convolutions over time with the mel bands as input channels,
max-pooling between the first layers, then global temporal pooling (mean, max and
L2 norm over time) so any clip length gives one vector, and two dense layers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class NetConfig:
    """Shape of the network; stored in the model file so scoring can rebuild it."""
    n_mels: int = 128
    n_factors: int = 32
    channels: tuple[int, ...] = (256, 256, 512, 512)
    kernel: int = 4
    pools: tuple[int, ...] = (4, 2, 2)  # max-pool after conv 1..3; conv 4 feeds global pooling
    dense: int = 2048
    dropout: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "NetConfig":
        raw = dict(raw, channels=tuple(raw["channels"]), pools=tuple(raw["pools"]))
        return cls(**raw)

    def min_frames(self) -> int:
        """Shortest input (frames) that still leaves one frame for global pooling."""
        frames = 1
        for pool in reversed(self.pools):
            frames = (frames + self.kernel - 1) * pool
        return frames + self.kernel - 1


class GlobalPool(nn.Module):
    """Mean, max and L2 norm over time: (batch, ch, time) -> (batch, 3 * ch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=2), x.amax(dim=2), x.norm(dim=2)], dim=1)


class FactorNet(nn.Module):
    """log-mel (batch, n_mels, frames) float32 -> factors (batch, n_factors).

    ``mel_mean`` and ``mel_std`` (n_mels,) standardise each band with statistics of
    the training set; they are buffers, so they travel with the weights.
    """

    def __init__(self, config: NetConfig):
        super().__init__()
        self.config = config
        if len(config.pools) != len(config.channels) - 1:
            raise ValueError("need one pool size per conv layer but the last")
        layers: list[nn.Module] = []
        width = config.n_mels
        for i, channels in enumerate(config.channels):
            layers += [nn.Conv1d(width, channels, config.kernel), nn.ReLU()]
            if i < len(config.pools):
                layers.append(nn.MaxPool1d(config.pools[i]))
            width = channels
        self.conv = nn.Sequential(*layers)
        self.pool = GlobalPool()
        self.head = nn.Sequential(
            nn.Linear(3 * width, config.dense), nn.ReLU(), nn.Dropout(config.dropout),
            nn.Linear(config.dense, config.dense), nn.ReLU(), nn.Dropout(config.dropout),
            nn.Linear(config.dense, config.n_factors),
        )
        self.register_buffer("mel_mean", torch.zeros(config.n_mels))
        self.register_buffer("mel_std", torch.ones(config.n_mels))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = (mel - self.mel_mean[:, None]) / self.mel_std[:, None]
        return self.head(self.pool(self.conv(x)))
