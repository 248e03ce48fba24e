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

import functools
import hashlib
import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression

from model.data import read_mels, unit_rows
from model.member import Member
from schemas import layout, mels, storage

logger = logging.getLogger(__name__)

CEPSTRA = 20
CHUNK = 256  # excerpts turned into statistics at a time
# Rhythm: the onset envelope (summed rise in level) of each of ONSET_GROUPS groups of
# adjacent bands, autocorrelated and averaged over frame lags between these edges, log
# spaced from 1 to 64 frames (1.5 s at the default hop): beat periods of 40 bpm and up.
ONSET_GROUPS = 4
LAG_EDGES = (1, 2, 3, 5, 8, 14, 23, 39, 65)


def rhythm(mel: torch.Tensor) -> torch.Tensor:
    """(tracks, ONSET_GROUPS * (len(LAG_EDGES) - 1)): the onset envelopes' autocorrelation
    (1 at lag 0) averaged within each lag bin; mel (tracks, bands, frames) float32."""
    out = []
    for bands in torch.arange(mel.shape[1]).tensor_split(ONSET_GROUPS):
        onsets = mel[:, bands].diff(dim=2).clamp(min=0).sum(dim=1)
        onsets = onsets - onsets.mean(dim=1, keepdim=True)
        n = onsets.shape[1]
        power = torch.fft.rfft(onsets, 2 * n, dim=1).abs() ** 2  # padded: no wrap-around
        acf = torch.fft.irfft(power, 2 * n, dim=1)[:, :LAG_EDGES[-1]]
        acf = acf / acf[:, :1].clamp(min=1e-12)
        if acf.shape[1] < LAG_EDGES[-1]:  # an excerpt shorter than the longest lag
            acf = F.pad(acf, (0, LAG_EDGES[-1] - acf.shape[1]))
        out += [acf[:, lo:hi].mean(dim=1) for lo, hi in zip(LAG_EDGES[:-1], LAG_EDGES[1:])]
    return torch.stack(out, dim=1)


@torch.no_grad()
def statistics(mel: torch.Tensor) -> torch.Tensor:
    """(tracks, features) float32 from log-mel excerpts (tracks, bands, frames) of any
    float dtype, computed where ``mel`` is: beside the network on a scoring GPU rather
    than on its host's CPU (about 6 ms per 30-second excerpt on one CPU core)."""
    mel = mel.float()
    cepstra = torch.einsum("nbt,bc->nct", mel, cepstrum_matrix(mel.shape[1]).to(mel.device))
    parts = []
    for x in (mel, cepstra):
        parts += [x.mean(dim=2), x.std(dim=2, correction=0), x.diff(dim=2).abs().mean(dim=2)]
    return torch.cat(parts + list(deciles(mel)) + [rhythm(mel)], dim=1)


def deciles(mel: torch.Tensor) -> torch.Tensor:
    """(2, tracks, bands): each band's 10th and 90th percentile over the frames."""
    if mel.device.type == "cpu":  # torch sorts every band to find them; numpy selects, 3x faster
        return torch.from_numpy(np.percentile(mel.numpy(), (10, 90), axis=2)).float()
    return torch.quantile(mel, torch.tensor([0.1, 0.9], device=mel.device), dim=2)


def cepstrum_matrix(bands: int) -> torch.Tensor:
    """(bands, CEPSTRA or fewer): the orthonormal DCT-II, cepstra from log-mel bands."""
    return AF.create_dct(min(CEPSTRA, bands), bands, norm="ortho")


def clusters_for(tracks: int) -> int:
    return int(round(np.sqrt(tracks / 2)))


# Statistics are computed once per track and spectrogram shard: each stage that needs
# a track's (the classifier's fit, choosing, scoring, the evaluation) takes them from
# the file kept beside its shard (layout.statistics_file), and computes and adds there
# only those of tracks no stage computed before. Tracks' statistics known to this
# process, by a digest of their excerpt (as model/frontend.py keeps what the taggers heard):
_MEMO: dict[bytes, np.ndarray] = {}
_MEMO_TRACKS = 20_000
computed = 0  # tracks whose statistics this process computed rather than read


@functools.lru_cache(maxsize=1)
def version() -> str:
    """A digest of what :func:`statistics` gives for a fixed excerpt: kept statistics
    of another definition are not read."""
    probe = torch.linspace(-4.0, 4.0, 2 * 64 * 300).reshape(2, 64, 300).sin()
    return hashlib.sha1(statistics(probe).numpy().round(4).tobytes()).hexdigest()[:12]


def _digest(excerpt: np.ndarray) -> bytes:
    # in float32 (float16 widens exactly): the same excerpt, the same key, as read or given
    return hashlib.sha1(np.ascontiguousarray(excerpt, np.float32).tobytes()).digest()


def _remember(keys: list[bytes], rows: np.ndarray) -> None:
    if len(_MEMO) + len(keys) > _MEMO_TRACKS:
        _MEMO.clear()
    _MEMO.update(zip(keys, rows))


def _compute(mel: torch.Tensor) -> np.ndarray:
    """:func:`statistics` of ``mel`` on the host, counted in ``computed``."""
    global computed
    computed += len(mel)
    return statistics(mel).cpu().numpy()


def known_statistics(mel: torch.Tensor) -> torch.Tensor:
    """:func:`statistics` of ``mel``, taking the tracks already known to this process
    (recalled from beside their shard, or computed before) from memory."""
    keys = [_digest(row) for row in mel.detach().cpu().numpy()]
    todo = [i for i, key in enumerate(keys) if key not in _MEMO]
    if todo:
        _remember([keys[i] for i in todo], _compute(mel[todo]))
    if not keys:
        return statistics(mel)
    return torch.from_numpy(np.stack([_MEMO[key] for key in keys])).to(mel.device)


def kept(shard: Path) -> dict[str, np.ndarray]:
    """The statistics kept beside ``shard``, by track id (none yet: empty)."""
    path = layout.statistics_file(shard, version())
    try:
        stat = path.stat()
    except FileNotFoundError:
        return {}
    return _read_kept(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _read_kept(path: str, mtime_ns: int, size: int) -> dict[str, np.ndarray]:
    """A kept file, read once per version of it in this process."""
    table = pq.read_table(path)
    width = table.schema.field("statistics").type.list_size
    whole = table.column("statistics").combine_chunks().flatten().to_numpy().reshape(-1, width)
    return dict(zip(table.column("track_id").to_pylist(), whole))


def keep(shard: Path, new: dict[str, np.ndarray]) -> None:
    """Add ``new`` statistics (track id -> row) to those kept beside ``shard``. Stages
    that add at the same time may lose each other's rows, which are then computed
    again later: never wrong, only slower."""
    rows = {**kept(shard), **new}
    matrix = np.stack(list(rows.values())).astype(np.float32)
    table = pa.table({"track_id": pa.array(list(rows), pa.string()), "statistics":
                      pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), matrix.shape[1])})
    with storage.atomic_file(layout.statistics_file(shard, version())) as tmp:
        pq.write_table(table, tmp)


def of_rows(shard: Path, table: pa.Table, device: torch.device = torch.device("cpu")
            ) -> np.ndarray:
    """Statistics (rows, features) float32 of ``table``'s rows (conformed rows of the
    spectrogram ``shard``): those kept beside the shard read, the others computed on
    ``device`` CHUNK excerpts at a time and kept there."""
    known, ids = kept(shard), table.column("track_id").to_pylist()
    if not ids:
        return np.zeros((0, 0), np.float32)
    todo = [i for i, track in enumerate(ids) if track not in known]
    new = {}
    for start in range(0, len(todo), CHUNK):
        rows = todo[start:start + CHUNK]
        values = mels.values(table.take(rows)).astype(np.float32)
        new.update(zip((ids[i] for i in rows), _compute(torch.from_numpy(values).to(device))))
    if new:
        keep(shard, new)
        logger.info("taste statistics of %d tracks computed, kept beside %s", len(new), shard)
    return np.stack([known.get(t, new.get(t)) for t in ids])


def recall(shard: Path, table: pa.Table) -> None:
    """Before predicting ``table`` (conformed rows of the spectrogram ``shard``): its
    statistics from beside the shard, those not kept there yet computed and added, all
    put where :func:`known_statistics` finds them."""
    rows = of_rows(shard, table)
    values = mels.values(table)
    _remember([_digest(values[i]) for i in range(len(rows))], rows)


def features_of(shards: Sequence[Path], track_ids: Iterable[str],
                device: torch.device = torch.device("cpu")) -> tuple[list[str], np.ndarray]:
    """(ids in the order found, their statistics as float64, for scikit-learn), each
    track once (its first shard): one shard's wanted excerpts at a time, their
    statistics read from beside it or computed on ``device`` and kept there."""
    wanted, ids, parts = set(track_ids), [], []
    for shard in shards:
        if not wanted:
            break
        names = pq.read_table(shard, columns=["track_id"]).column("track_id").to_pylist()
        here = [t for t in dict.fromkeys(names) if t in wanted]
        if not here:
            continue
        known = kept(shard)
        table = read_mels([shard], [t for t in here if t not in known])
        computed_here = dict(zip(table.column("track_id").to_pylist(),
                                 of_rows(shard, table, device))) if table.num_rows else {}
        parts.append(np.stack([known.get(t, computed_here.get(t)) for t in here]))
        ids += here
        wanted -= set(here)
    return ids, (np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, 0)))


def fit(features: np.ndarray, factors: np.ndarray, c: float, seed: int,
        labels: np.ndarray | None = None, bags: int = 1) -> dict | None:
    """The classifier's arrays (as tensors, for the model file) fitted on warm tracks'
    ``features`` (statistics) and their ALS ``factors``; None when the tracks are too
    few for two clusters. ``labels``: classes to learn instead of taste clusters.

    ``bags``: k-means clusterings (seeds ``seed``, ``seed`` + 1, ...) each with its own
    classifier, whose predictions are averaged. One clustering of a hundred tracks is
    one draw among many about as good: on held-out real music the AUC of single seeds
    spread over 0.07, and their average beat most of them (benchmarks/real_music.py)."""
    if labels is not None:
        bags = 1
    k = clusters_for(len(features))
    if labels is None and k < 2:
        logger.info("taste classifier: %d tracks are too few for two clusters; none kept",
                    len(features))
        return None
    mean, scale = features.mean(axis=0), features.std(axis=0)
    scale[scale == 0] = 1.0
    standard = (features - mean) / scale
    # With more features than tracks (the taggers' 3,244 for a few hundred tracks), the
    # L2-penalised optimum lies in the span of the tracks' rows: fitting on their
    # coordinates in it gives the same classifier, several times faster.
    basis = np.linalg.svd(standard, full_matrices=False)[2] \
        if standard.shape[1] > standard.shape[0] else None
    inputs = standard if basis is None else standard @ basis.T
    coefs, intercepts, centres = [], [], []
    for bag in range(bags):
        found = labels if labels is not None else KMeans(
            k, n_init=10, random_state=seed + bag).fit_predict(unit_rows(factors))
        classifier = LogisticRegression(C=c, max_iter=5000).fit(inputs, found)
        coefs.append(classifier.coef_ if basis is None else classifier.coef_ @ basis)
        intercepts.append(classifier.intercept_)
        centres.append(np.stack([factors[found == label].mean(axis=0)
                                 for label in classifier.classes_]))
    logger.info("taste classifier: %d clustering(s) of %d classes of %d tracks, training "
                "accuracy of the last %.2f", bags, len(centres[0]), len(features),
                classifier.score(inputs, found))
    arrays = {"mean": mean, "scale": scale, "coef": np.stack(coefs),
              "intercept": np.stack(intercepts), "centres": np.stack(centres)}
    return {name: torch.from_numpy(np.asarray(a, np.float32)) for name, a in arrays.items()}


@torch.no_grad()
def predict_features(taste: dict, features: torch.Tensor) -> torch.Tensor:
    """(tracks, rank) float32 on the features' device: the classes' mean factors weighted
    by their probabilities, averaged over the clusterings."""
    if taste["mean"].shape[0] != features.shape[1]:
        raise ValueError(f"the taste classifier was fitted on {taste['mean'].shape[0]} "
                         f"statistics, these excerpts give {features.shape[1]}: it reads "
                         "other statistics than this version computes; retrain the model")
    mean, scale, coef, intercept, centres = (taste[name].to(features.device, torch.float32)
                                             for name in ("mean", "scale", "coef",
                                                          "intercept", "centres"))
    if coef.dim() == 2:  # one clustering, as written before there were several
        coef, intercept, centres = coef[None], intercept[None], centres[None]
    standard = (features.float() - mean) / scale
    out = torch.zeros(len(features), centres.shape[2], device=features.device)
    for bag in range(len(coef)):
        logits = standard @ coef[bag].T + intercept[bag]
        if logits.shape[1] == 1:  # two classes: scikit-learn keeps one row of weights
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        out += logits.softmax(dim=1) @ centres[bag]
    return out / len(coef)


def predict(taste: dict, mel: torch.Tensor) -> torch.Tensor:
    """Factors (tracks, rank) float32 of log-mel excerpts (tracks, bands, frames), computed
    where ``mel`` is; see predict_features."""
    return predict_features(taste, known_statistics(mel))


class Taste(Member):
    """The classifier as a member of a shipped predictor (model/predictor.py): its
    arrays fitted on every warm track, and ``held_out``, the same fitted without
    training's validation tracks (None when those were too few), which is what is
    judged on them; ``folds[i]``, where fitted, without fold i of the warm tracks."""

    kind = "taste"

    def __init__(self, arrays: dict, held_out: dict | None = None, folds: list | None = None):
        self.arrays, self.held_out_arrays, self.folds = arrays, held_out, list(folds or [])

    @property
    def n_factors(self) -> int:
        return int(self.arrays["centres"].shape[-1])

    def predict(self, mel: torch.Tensor, tokens: torch.Tensor | None) -> np.ndarray:
        # statistics in float32 where the excerpts are (a scoring GPU)
        return predict(self.arrays, mel).cpu().numpy()

    def recall(self, shard: Path, table: pa.Table) -> None:
        recall(shard, table)  # statistics kept beside the shard, or computed and kept

    def held_out(self) -> "Taste | None":
        return None if self.held_out_arrays is None else Taste(self.held_out_arrays)

    def fold(self, index: int) -> "Taste | None":
        arrays = self.folds[index] if index < len(self.folds) else None
        return None if arrays is None else Taste(arrays)

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.arrays)

    def state(self) -> dict:
        return {"arrays": self.arrays, "held_out": self.held_out_arrays, "folds": self.folds}

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> "Taste":
        return cls(state["arrays"], state.get("held_out"), state.get("folds"))
