"""The paper's baseline (van den Oord et al. 2013, section 4.1): bag of MFCC words.

13 MFCCs with first and second differences per frame, vector-quantised against a
k-means codebook, counted per track, reduced by PCA to 95% of the variance, then a
linear regression, or a multilayer perceptron with one hidden layer, to the
unit-normalised factors (the paper's two heads on the same words). The MFCCs are the DCT of the
log-mel frames we already store (natural log; torchaudio's MFCC uses dB, which
only rescales every coefficient by the same constant).
"""
from __future__ import annotations


import numpy as np
import torch
import torchaudio.functional as AF
from sklearn.cluster import MiniBatchKMeans
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline

from schemas.config import BowConfig


def mfcc_frames(mels: np.ndarray, n_mfcc: int = 13) -> np.ndarray:
    """MFCC + deltas + delta-deltas: mels (n, n_mels, T) -> (n, T, 3 * n_mfcc) float32."""
    dct = AF.create_dct(n_mfcc, mels.shape[1], norm="ortho")  # (n_mels, n_mfcc)
    mfcc = torch.einsum("nmt,mk->nkt", torch.from_numpy(mels), dct)
    delta = AF.compute_deltas(mfcc)
    features = torch.cat([mfcc, delta, AF.compute_deltas(delta)], dim=1)
    return features.transpose(1, 2).numpy()


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
