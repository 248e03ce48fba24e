"""The taste classifier that the audio CNN's predictions are averaged with.

Warm tracks are grouped into k taste clusters by k-means on their unit ALS factors
(k = sqrt(tracks / 2), the usual rule of thumb, so it grows with the catalogue). A
logistic regression learns each track's cluster from summary statistics of its
log-mel excerpt (per band and for the first 20 cepstral coefficients: mean, spread
and mean frame-to-frame change; per band also the 10th and 90th percentiles; and the
rhythm, the autocorrelation of onset envelopes in four groups of bands), and a track's
prediction is the clusters' mean factors weighted by its probabilities.

Why: with a few dozen or hundred warm tracks the CNN learns the sound of a style only
partly, and these statistics with a linear classifier generalise from few tracks
better; the average ranks better than either. Training fits it on every warm track,
the network's validation tracks included (model/train.py). On held-out real music
(benchmarks/real_music.py, 3 seeds) the default network's mean AUC was 0.676 alone;
averaged with a classifier of its training tracks only 0.709, of every warm track
0.727, and with the rhythm statistics too 0.729. On the demo, whose tastes follow
tempo as well as style, 0.804 alone and 0.813 averaged (0.803 without the rhythm).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from scipy.fft import dct, irfft, rfft
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression

from model.data import mel_array, read_mels, unit_rows

logger = logging.getLogger(__name__)

CEPSTRA = 20
CHUNK = 256  # excerpts turned into statistics at a time
# Rhythm: the onset envelope (summed rise in level) of each of ONSET_GROUPS groups of
# adjacent bands, autocorrelated and averaged over frame lags between these edges, log
# spaced from 1 to 64 frames (1.5 s at the default hop): beat periods of 40 bpm and up.
ONSET_GROUPS = 4
LAG_EDGES = (1, 2, 3, 5, 8, 14, 23, 39, 65)


def rhythm(mel: np.ndarray) -> np.ndarray:
    """(tracks, ONSET_GROUPS * (len(LAG_EDGES) - 1)): the onset envelopes' autocorrelation
    (1 at lag 0) averaged within each lag bin."""
    out = []
    for bands in np.array_split(np.arange(mel.shape[1]), ONSET_GROUPS):
        onsets = np.maximum(np.diff(mel[:, bands], axis=2), 0).sum(axis=1)
        onsets -= onsets.mean(axis=1, keepdims=True)
        n = onsets.shape[1]
        power = np.abs(rfft(onsets, 2 * n, axis=1)) ** 2  # padded: no wrap-around
        acf = irfft(power, 2 * n, axis=1)[:, :LAG_EDGES[-1]]
        acf /= np.maximum(acf[:, :1], 1e-12)
        if acf.shape[1] < LAG_EDGES[-1]:  # an excerpt shorter than the longest lag
            acf = np.pad(acf, ((0, 0), (0, LAG_EDGES[-1] - acf.shape[1])))
        out += [acf[:, lo:hi].mean(axis=1) for lo, hi in zip(LAG_EDGES[:-1], LAG_EDGES[1:])]
    return np.stack(out, axis=1)


def statistics(mel: np.ndarray) -> np.ndarray:
    """(tracks, features) float64 from log-mel excerpts (tracks, bands, frames)."""
    mel = np.asarray(mel, dtype=np.float64)
    cepstra = dct(mel, axis=1, norm="ortho")[:, :CEPSTRA]
    parts = []
    for x in (mel, cepstra):
        parts += [x.mean(axis=2), x.std(axis=2), np.abs(np.diff(x, axis=2)).mean(axis=2)]
    parts += [np.percentile(mel, 10, axis=2), np.percentile(mel, 90, axis=2), rhythm(mel)]
    return np.concatenate(parts, axis=1)


def clusters_for(tracks: int) -> int:
    return int(round(np.sqrt(tracks / 2)))


def features_of(shards: Sequence[Path], track_ids: Iterable[str]) -> tuple[list[str], np.ndarray]:
    """(ids in the order found, their statistics): one shard's wanted excerpts in
    memory at a time, turned into float statistics CHUNK excerpts at a time."""
    wanted, ids, parts = set(track_ids), [], []
    for shard in shards:
        table = read_mels([shard], wanted)
        for start in range(0, table.num_rows, CHUNK):
            parts.append(statistics(mel_array(table.slice(start, CHUNK))))
        found = table.column("track_id").to_pylist()
        ids += found
        wanted -= set(found)
    return ids, (np.concatenate(parts) if parts else np.zeros((0, 0)))


def fit(features: np.ndarray, factors: np.ndarray, c: float, seed: int,
        labels: np.ndarray | None = None) -> dict | None:
    """The classifier's arrays (as tensors, for the model file) fitted on warm tracks'
    ``features`` (statistics) and their ALS ``factors``; None when the tracks are too
    few for two clusters. ``labels``: classes to learn instead of taste clusters."""
    if labels is None:
        k = clusters_for(len(features))
        if k < 2:
            logger.info("taste classifier: %d tracks are too few for two clusters; none kept",
                        len(features))
            return None
        labels = KMeans(k, n_init=10, random_state=seed).fit_predict(unit_rows(factors))
    mean, scale = features.mean(axis=0), features.std(axis=0)
    scale[scale == 0] = 1.0
    standard = (features - mean) / scale
    classifier = LogisticRegression(C=c, max_iter=5000).fit(standard, labels)
    centres = np.stack([factors[labels == label].mean(axis=0) for label in classifier.classes_])
    logger.info("taste classifier: %d classes of %d tracks, training accuracy %.2f",
                len(centres), len(features), classifier.score(standard, labels))
    arrays = {"mean": mean, "scale": scale, "coef": classifier.coef_,
              "intercept": classifier.intercept_, "centres": centres}
    return {name: torch.from_numpy(np.asarray(a, np.float32)) for name, a in arrays.items()}


def predict_features(taste: dict, features: np.ndarray) -> np.ndarray:
    """(tracks, rank) float32: the classes' mean factors weighted by their probabilities."""
    if taste["mean"].shape[0] != features.shape[1]:
        raise ValueError(f"the taste classifier was fitted on {taste['mean'].shape[0]} "
                         f"statistics, these excerpts give {features.shape[1]}: it reads "
                         "other statistics than this version computes; retrain the model")
    standard = (features - taste["mean"].numpy()) / taste["scale"].numpy()
    logits = standard @ taste["coef"].numpy().T.astype(np.float64) + taste["intercept"].numpy()
    if logits.shape[1] == 1:  # two classes: scikit-learn keeps one row of weights
        logits = np.concatenate([np.zeros_like(logits), logits], axis=1)
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return (probabilities @ taste["centres"].numpy()).astype(np.float32)


def predict(taste: dict, mel: np.ndarray) -> np.ndarray:
    """Factors of log-mel excerpts (tracks, bands, frames); see predict_features."""
    return predict_features(taste, statistics(mel))
