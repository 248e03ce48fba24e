"""Audio CNNs that map a log-mel spectrogram to collaborative-filtering factors.

Two architectures from the seeds, chosen by ``NetConfig.arch``; both convolve over
time with the mel bands as input channels (1-D convolutions, as in the papers).

``dieleman2014`` (Dieleman 2014 blog), any clip length >= ``min_frames()``::

    mel (B, n_mels, T)
    -> [conv k=4, ReLU, max-pool p] for p in pools      (B, channels[-2], ~T/prod(pools))
    -> conv k=4, ReLU                                    (B, channels[-1], T')
    -> global mean, max and L2 norm over time, concat    (B, 3 * channels[-1])
    -> dense, ReLU, dropout, dense, ReLU, dropout        (B, dense)
    -> dense                                             (B, n_factors)

``vandenoord2013`` (NIPS 2013), fixed windows of ``window_frames`` (3 s by default)::

    window (B, n_mels, W)
    -> [conv k=4, ReLU, max-pool p] for each layer       (B, channels[-1], W')
    -> flatten, dense, ReLU, dropout                     (B, dense)
    -> dense                                             (B, n_factors)

    A clip longer than one window is cut into consecutive windows and the window
    predictions are averaged, as in the paper.

Late fusion of metadata (the 2017 slides), when ``metadata_vocab`` is not empty: the
catalogue tokens of a track (model/metadata.py) are embedded and averaged
(``metadata_dim``), then joined to the audio features after the first dense layer of
either head, before the last dense layers. Training drops each token with
probability ``metadata_dropout``, so the network also learns to predict tracks whose
artist it never saw from their audio.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from model.member import ScaledModule
from schemas.config import ARCHS



@dataclass(frozen=True)
class NetConfig:
    """Shape of the network; stored in the model file so scoring can rebuild it."""
    arch: str = "dieleman2014"
    n_mels: int = 128
    n_factors: int = 32
    channels: tuple[int, ...] = (256, 256, 512, 512)
    kernel: int = 4
    pools: tuple[int, ...] = (4, 2, 2)  # one max-pool per conv layer, except Dieleman's last
    dense: int = 2048
    dropout: float = 0.5
    window_frames: int = 130  # vandenoord2013 only: 130 frames of hop 512 at 22050 Hz = 3 s
    # dieleman2014: the clip length it was trained on. A longer input is cut into
    # consecutive clips of this length and their predictions averaged, so a track is
    # scored on every excerpt the way it was trained (None: the input as one clip).
    clip_frames: int | None = None
    metadata_vocab: tuple[str, ...] = ()  # catalogue tokens of the training tracks
    metadata_dim: int = 32
    metadata_dropout: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "NetConfig":
        raw = dict(raw, channels=tuple(raw["channels"]), pools=tuple(raw["pools"]),
                   metadata_vocab=tuple(raw.get("metadata_vocab", ())))
        return cls(**raw)

    @classmethod
    def for_arch(cls, arch: str, **overrides) -> "NetConfig":
        """The seeds' sizes for ``arch``, with ``overrides`` (None values ignored)."""
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHS}")
        base = cls(arch=arch) if arch == "dieleman2014" else \
            cls(arch=arch, channels=(256, 256), pools=(4, 2), dense=2048, dropout=0.5)
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    def min_frames(self) -> int:
        """Shortest input (frames) the network accepts."""
        if self.arch == "vandenoord2013":
            return self.window_frames
        if self.arch == "musicnn":
            return 1  # the tagger pools over any length
        frames = 1
        for pool in reversed(self.pools):
            frames = (frames + self.kernel - 1) * pool
        return frames + self.kernel - 1


def conv_stack(config: NetConfig) -> tuple[nn.Sequential, int]:
    """Conv layers with ReLU and the configured max-pools; returns (stack, width out)."""
    layers: list[nn.Module] = []
    width = config.n_mels
    for i, channels in enumerate(config.channels):
        layers += [nn.Conv1d(width, channels, config.kernel), nn.ReLU()]
        if i < len(config.pools):
            layers.append(nn.MaxPool1d(config.pools[i]))
        width = channels
    return nn.Sequential(*layers), width


FUSE_AT = 4  # index in either head of the dense layer that also sees the metadata


class FactorNet(nn.Module):
    """Base of both architectures: log-mel (B, n_mels, T) float32 and, with a metadata
    branch, token ids (B, MAX_TOKENS) int64 (0: none) -> (B, n_factors).

    ``mel_mean`` and ``mel_std`` (n_mels,) standardise each band with statistics of
    the training set; they are buffers, so they travel with the weights.
    """

    def __init__(self, config: NetConfig):
        super().__init__()
        self.config = config
        self.register_buffer("mel_mean", torch.zeros(config.n_mels))
        self.register_buffer("mel_std", torch.ones(config.n_mels))
        self.metadata = nn.EmbeddingBag(len(config.metadata_vocab) + 1, config.metadata_dim,
                                        mode="mean", padding_idx=0) \
            if config.metadata_vocab else None

    def fused_width(self) -> int:
        """Extra inputs of the dense layer at FUSE_AT."""
        return self.config.metadata_dim if self.metadata is not None else 0

    def standardise(self, mel: torch.Tensor) -> torch.Tensor:
        # in float32 whatever the shards store (MelParams.dtype)
        return (mel.float() - self.mel_mean[:, None]) / self.mel_std[:, None]

    def embed(self, tokens: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """(B, metadata_dim): the mean embedding of each track's tokens (zeros for a
        track without any); None without a metadata branch."""
        if self.metadata is None:
            return None
        if tokens is None:
            tokens = torch.zeros(batch, 1, dtype=torch.long, device=self.mel_mean.device)
        if self.training and self.config.metadata_dropout:
            keep = torch.rand(tokens.shape, device=tokens.device) >= self.config.metadata_dropout
            tokens = tokens * keep
        return self.metadata(tokens)

    def run_head(self, features: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
        hidden = self.head[:FUSE_AT](features)
        if meta is not None:
            hidden = torch.cat([hidden, meta.to(hidden.dtype)], dim=1)
        return self.head[FUSE_AT:](hidden)

    def averaged(self, mel: torch.Tensor, meta: torch.Tensor | None, window: int,
                 predict) -> torch.Tensor:
        """Mean of ``predict(clips, meta)`` over the consecutive windows of each clip
        (B, n_mels, T); a clip shorter than two windows is predicted whole."""
        if mel.shape[2] < 2 * window:
            return predict(mel, meta)
        windows = mel.unfold(2, window, window)  # (B, n_mels, n_windows, window)
        batch, n_windows = mel.shape[0], windows.shape[2]
        flat = windows.permute(0, 2, 1, 3).reshape(batch * n_windows, mel.shape[1], window)
        meta = None if meta is None else meta.repeat_interleave(n_windows, dim=0)
        return predict(flat, meta).reshape(batch, n_windows, -1).mean(dim=1)


class GlobalPool(nn.Module):
    """Mean, max and L2 norm over time: (B, C, T) -> (B, 3 * C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=2), x.amax(dim=2), x.norm(dim=2)], dim=1)


class Dieleman2014(FactorNet):
    def __init__(self, config: NetConfig):
        super().__init__(config)
        if len(config.pools) != len(config.channels) - 1:
            raise ValueError("dieleman2014 needs one pool size per conv layer but the last")
        self.conv, width = conv_stack(config)
        self.head = nn.Sequential(
            GlobalPool(),
            nn.Linear(3 * width, config.dense), nn.ReLU(), nn.Dropout(config.dropout),
            nn.Linear(config.dense + self.fused_width(), config.dense), nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.dense, config.n_factors),
        )

    def forward(self, mel: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        def predict(clips: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
            return self.run_head(self.conv(self.standardise(clips)), meta)
        meta = self.embed(tokens, mel.shape[0])
        if self.training or not self.config.clip_frames:
            return predict(mel, meta)
        return self.averaged(mel, meta, self.config.clip_frames, predict)


class VanDenOord2013(FactorNet):
    def __init__(self, config: NetConfig):
        super().__init__(config)
        if len(config.pools) != len(config.channels):
            raise ValueError("vandenoord2013 needs one pool size per conv layer")
        self.conv, width = conv_stack(config)
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, config.n_mels, config.window_frames)).numel()
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, config.dense), nn.ReLU(), nn.Dropout(config.dropout),
            nn.Linear(config.dense + self.fused_width(), config.n_factors),
        )

    def forward(self, mel: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of the predictions for the consecutive windows of each clip."""
        window = self.config.window_frames
        if mel.shape[2] < window:
            raise RuntimeError(f"clip of {mel.shape[2]} frames is shorter than a window of {window}")
        if mel.shape[2] < 2 * window:
            mel = mel[:, :, :window]
        return self.averaged(mel, self.embed(tokens, mel.shape[0]), window,
                             lambda clips, meta: self.run_head(self.conv(self.standardise(clips)),
                                                               meta))


def build_net(config: NetConfig, pretrained: bool = False) -> FactorNet:
    """The untrained network of ``config``; ``pretrained``: musicnn starts from the
    tagger's weights (training), not from random ones (a model file's are loaded next)."""
    if config.arch == "musicnn":
        from model.finetune import FineTuned  # it builds on FactorNet, defined here
        return FineTuned(config, pretrained)
    return {"dieleman2014": Dieleman2014, "vandenoord2013": VanDenOord2013}[config.arch](config)


class Network(ScaledModule):
    """The CNN as a member of a shipped predictor (model/predictor.py), with its
    metadata branch where it has one."""

    kind = "network"

    @property
    def vocabulary(self) -> tuple[str, ...]:
        return tuple(self.module.config.metadata_vocab)

    @staticmethod
    def build(config: dict) -> FactorNet:
        return build_net(NetConfig.from_dict(config))
