"""The paper's baseline (van den Oord et al. 2013, section 4.1): bag of MFCC words.

13 MFCCs with first and second differences per frame, vector-quantised against a
k-means codebook, counted per track, reduced by PCA to 95% of the variance, then a
linear regression, or a multilayer perceptron with one hidden layer, to the
unit-normalised factors (the paper's two heads on the same words). The MFCCs are the DCT of the
log-mel frames we already store (natural log; torchaudio's MFCC uses dB, which
only rescales every coefficient by the same constant).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.functional as AF
from torch import nn
from sklearn.cluster import MiniBatchKMeans
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline

from model.member import ScaledModule
from schemas.config import BowConfig


def mfcc_features(mels: torch.Tensor, dct: torch.Tensor) -> torch.Tensor:
    """MFCC + deltas + delta-deltas: mels (n, n_mels, T), dct (n_mels, n_mfcc) ->
    (n, T, 3 * n_mfcc)."""
    mfcc = torch.einsum("nmt,mk->nkt", mels, dct)
    delta = AF.compute_deltas(mfcc)
    return torch.cat([mfcc, delta, AF.compute_deltas(delta)], dim=1).transpose(1, 2)


def mfcc_frames(mels: np.ndarray, n_mfcc: int = 13) -> np.ndarray:
    """MFCC + deltas + delta-deltas: mels (n, n_mels, T) -> (n, T, 3 * n_mfcc) float32."""
    dct = AF.create_dct(n_mfcc, mels.shape[1], norm="ortho")  # (n_mels, n_mfcc)
    return mfcc_features(torch.from_numpy(mels), dct).numpy()


# The architecture name a bag-of-words model file carries (model/net.py has the CNNs').
ARCH = "bag-of-words"


@dataclass(frozen=True)
class BowShape:
    """What a fitted bag-of-words predictor's arrays look like; stored in its model file."""
    n_mels: int
    n_factors: int
    n_mfcc: int
    codebook: int
    components: int
    arch: str = ARCH

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "BowShape":
        return cls(**raw)


class BagOfWordsNet(nn.Module):
    """The fitted linear bag-of-words predictor as a torch module, so that scoring
    and the model file treat it like the CNNs: mels (B, n_mels, T) -> (B, n_factors).
    Its arrays are buffers (the k-means codebook, PCA and regression)."""

    def __init__(self, config: BowShape):
        super().__init__()
        self.config = config
        features = 3 * config.n_mfcc
        self.register_buffer("dct", AF.create_dct(config.n_mfcc, config.n_mels, norm="ortho"))
        self.register_buffer("centres", torch.zeros(config.codebook, features))
        self.register_buffer("pca_mean", torch.zeros(config.codebook))
        self.register_buffer("pca_components", torch.zeros(config.components, config.codebook))
        self.register_buffer("coef", torch.zeros(config.n_factors, config.components))
        self.register_buffer("intercept", torch.zeros(config.n_factors))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        frames = mfcc_features(mel.float(), self.dct)  # (B, T, F)
        words = torch.cdist(frames, self.centres.expand(len(frames), -1, -1)).argmin(dim=2)
        counts = torch.zeros(len(frames), self.config.codebook, device=mel.device)
        counts.scatter_add_(1, words, torch.ones_like(words, dtype=counts.dtype))
        reduced = (counts - self.pca_mean) @ self.pca_components.T
        return reduced @ self.coef.T + self.intercept


class BagOfWords:
    """Fit on (mels, factors) of warm tracks; predict unit factors for other tracks."""

    def __init__(self, config: BowConfig = BowConfig()):
        self.config = config

    def histograms(self, mels: np.ndarray) -> np.ndarray:
        """(n, codebook) word counts per track."""
        frames = mfcc_frames(mels, self.config.n_mfcc)
        words = self.kmeans.predict(frames.reshape(-1, frames.shape[2])).reshape(len(mels), -1)
        return np.stack([np.bincount(w, minlength=self.kmeans.n_clusters) for w in words]).astype(np.float32)

    def fit(self, mels: np.ndarray, factors: np.ndarray) -> "BagOfWords":
        cfg = self.config
        self.n_mels = mels.shape[1]
        frames = mfcc_frames(mels, cfg.n_mfcc)
        rng = np.random.default_rng(cfg.seed)
        take = [f[rng.choice(len(f), min(cfg.frames_per_track, len(f)), replace=False)] for f in frames]
        sample = np.concatenate(take)
        words = min(cfg.codebook, len(sample) // 4)
        self.kmeans = MiniBatchKMeans(n_clusters=words, random_state=cfg.seed, n_init=3).fit(sample)
        mlp = MLPRegressor(hidden_layer_sizes=(cfg.mlp_hidden,), alpha=cfg.mlp_l2,
                           max_iter=cfg.mlp_epochs, random_state=cfg.seed)
        self.heads = {head: make_pipeline(PCA(n_components=cfg.pca_variance, random_state=cfg.seed),
                                          regressor)
                      for head, regressor in (("linear", LinearRegression()), ("mlp", mlp))}
        unit = factors / np.maximum(np.linalg.norm(factors, axis=1, keepdims=True), 1e-12)
        words = self.histograms(mels)
        for head in self.heads.values():
            head.fit(words, unit)
        return self

    def predict(self, mels: np.ndarray, head: str = "linear") -> np.ndarray:
        """Unit-scale factors from the ``head`` regression ("linear" or "mlp")."""
        return self.heads[head].predict(self.histograms(mels)).astype(np.float32)

    def to_net(self) -> BagOfWordsNet:
        """The fitted codebook, PCA and linear regression as a BagOfWordsNet."""
        pca, regression = self.heads["linear"][0], self.heads["linear"][1]
        net = BagOfWordsNet(BowShape(n_mels=self.n_mels, n_factors=regression.coef_.shape[0],
                                     n_mfcc=self.config.n_mfcc,
                                     codebook=self.kmeans.n_clusters,
                                     components=pca.components_.shape[0]))
        arrays = {"centres": self.kmeans.cluster_centers_, "pca_mean": pca.mean_,
                  "pca_components": pca.components_, "coef": regression.coef_,
                  "intercept": regression.intercept_}
        for name, array in arrays.items():
            getattr(net, name).copy_(torch.from_numpy(np.asarray(array, np.float32)))
        return net.eval()


class Bow(ScaledModule):
    """The fitted linear baseline as a member of a shipped predictor
    (model/predictor.py); it predicts unit factors, given the ALS factor scale."""

    kind = ARCH

    @staticmethod
    def build(config: dict) -> BagOfWordsNet:
        return BagOfWordsNet(BowShape.from_dict(config))
