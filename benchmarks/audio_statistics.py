"""The taste classifier the CNN is averaged with (model/taste.py), alone, on real music.

    python benchmarks/real_music.py --work /tmp/real-music --seeds 0 1 2   # first
    python benchmarks/audio_statistics.py --work /tmp/real-music --seeds 0 1 2

The model's taste classifier (a logistic regression on summary statistics of the
log-mel excerpt) fitted on the warm tracks, with two kinds of class:

- sources told: the catalogue's artist, which in the real-music benchmark is the
  source its listeners choose by. The CNN is never told it, so this is a reference
  for how much of the source the audio statistics carry, not a method.
- taste clusters: k-means (k = --clusters) on the warm tracks' unit ALS factors, as
  training does with k = sqrt(tracks / 2): nothing but the plays and the audio.

It reads what EvaluateColdStart left in each data root (the newest held-out ALS run
and the spectrograms of the default mel settings) and prints, per seed and on average,
the held-out mean per-user AUC and how often the 5 nearest warm tracks share the
source, beside the artist oracle (the mean ALS factor of the track's source). Asserts
nothing; not part of the test suite.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from sklearn.cluster import KMeans

import schemas
from jobs.evaluate.judge import same_artist
from model.data import mel_array, read_mels
from model import taste
from schemas import factor_matrix, factors_column, layout, storage
from schemas.config import MelParams, TrainConfig
from schemas.metrics import rank_metrics, unit_rows


def classified(train: np.ndarray, labels: np.ndarray, factors: np.ndarray,
               test: np.ndarray) -> np.ndarray:
    """Factors of the ``test`` rows from the model's taste classifier fitted to learn
    ``labels`` from the ``train`` rows."""
    fitted = taste.fit(train, factors, TrainConfig().taste_c, seed=0, labels=labels)
    return taste.predict_features(fitted, torch.from_numpy(test)).numpy()


def one_seed(data: Path, clusters: list[int]) -> dict[str, tuple[float, float]]:
    als = layout.DataRoot(data).outputs("backfill").newest_als(heldout=True)
    if als is None:
        raise FileNotFoundError(f"{data}: no held-out ALS output; run real_music.py first")
    users = storage.read_table(als / "user_factors", schemas.USER_FACTORS)
    items = storage.read_table(als / "item_factors", schemas.ITEM_FACTORS)
    heldout = storage.read_table(als / "heldout_plays", schemas.PLAYS)
    # real_music.py's spectrograms: the default mel settings (not the tagger's input)
    mels = read_mels(layout.mel_shards(layout.params_dir(layout.DataRoot(data).mels, MelParams())))
    catalogue = pq.read_table(data / "catalogue.parquet", columns=["track_id", "artist"])
    source = dict(zip(catalogue["track_id"].to_pylist(), catalogue["artist"].to_pylist()))

    row = {t: i for i, t in enumerate(mels["track_id"].to_pylist())}
    features = taste.statistics(torch.from_numpy(mel_array(mels))).double().numpy()
    warm_ids = items["track_id"].to_pylist()
    warm_sources = np.array([source.get(t) for t in warm_ids], dtype=object)
    factors = factor_matrix(items)
    with_audio = np.array([t in row for t in warm_ids])
    train = features[[row[t] for t in np.array(warm_ids)[with_audio]]]
    cold = sorted(set(heldout["track_id"].to_pylist()) & row.keys())
    test = features[[row[t] for t in cold]]

    # the oracle as the evaluation's: the mean factor of the source's warm tracks
    means = {s: factors[warm_sources == s].mean(axis=0) for s in set(warm_sources)}
    predictions = {
        "artist oracle": np.stack([means[source[t]] for t in cold]),
        "sources told": classified(train, warm_sources[with_audio], factors[with_audio], test)}
    for k in clusters:
        clusters = KMeans(k, n_init=10, random_state=0).fit_predict(unit_rows(factors))
        predictions[f"taste clusters, k={k}"] = classified(train, clusters[with_audio],
                                                           factors[with_audio], test)
    out = {}
    for name, pred in predictions.items():
        table = pa.table({"track_id": cold, "factors": factors_column(pred.astype(np.float32))})
        out[name] = (rank_metrics(users, table, heldout, 500, 10)["auc"],
                     same_artist(pred, [source[t] for t in cold], factors, list(warm_sources), 5))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="real_music.py's --work")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--clusters", type=int, nargs="+", default=[4, 6, 8, 12, 16])
    args = parser.parse_args()
    results = [one_seed(args.work / f"data-{seed}", args.clusters) for seed in args.seeds]
    print(f"Seeds {args.seeds}: AUC per seed, mean AUC, mean same source@5")
    print("| method | AUC by seed | mean AUC | same source@5 |\n|---|---|---|---|")
    for name in results[0]:
        auc = [r[name][0] for r in results]
        same = np.mean([r[name][1] for r in results])
        print(f"| {name} | {' '.join(f'{a:.3f}' for a in auc)} | {np.mean(auc):.3f} | "
              f"{same:.3f} |")


if __name__ == "__main__":
    main()
