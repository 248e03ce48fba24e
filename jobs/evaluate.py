"""The paper's evaluation of predicted factors for held-out tracks (NIPS 2013, 5.2).

ALS was trained without the held-out tracks' plays. For every user with held-out
plays, each held-out track i is scored x_u . y_i; the tracks the user played should
rank first. Reported over users: mean AUC and mAP@K, and over tracks the mean cosine
distance to the upper bound's factors. Always on the same split, for:

- random: Gaussian factors;
- bag-of-words: 13 MFCC + deltas, k-means words, PCA, linear regression (model/bow.py);
- each CNN model given (one per loss and architecture);
- upper bound: the factors ALS gives the held-out tracks when it sees their plays,
  i.e. the exact ALS item step (same alpha, eps and regularisation as the run) against
  the trained user factors, so they live in the same space as the predictions.

    python -m jobs.evaluate --user-factors ALS/user_factors --item-factors ALS/item_factors \\
        --mels DATA/mels/<hash> --heldout-plays heldout.parquet --model m1.pt --model m2.pt \\
        --out report.json

Writes the JSON report and the same numbers as a markdown table (report.md).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

import schemas
from jobs import storage
from jobs.mel import mel_shards
from jobs.score import factors_column, predict_tracks
from model.artefact import load_model
from model.bow import BagOfWords, BowConfig
from model.data import factor_matrix, mel_array, read_mels, unit_rows

logger = logging.getLogger(__name__)


def average_precision_at(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """AP@k of one user: scores (n,), relevant (n,) bool."""
    top = np.argsort(-scores, kind="stable")[:k]
    hits = relevant[top]
    if not hits.any():
        return 0.0
    precision = np.cumsum(hits) / np.arange(1, len(top) + 1)
    return float((precision * hits).sum() / min(relevant.sum(), k))


def rank_metrics(user_factors: pa.Table, track_factors: pa.Table, heldout: pa.Table,
                 k: int = 500) -> dict:
    """Mean per-user AUC and mAP@k over users with at least one held-out play.

    Only tracks present in ``track_factors`` are ranked; users unknown to
    ``user_factors`` (no warm plays) cannot be scored and are counted apart.
    """
    tracks = track_factors.column("track_id").to_pylist()
    col_of = {t: j for j, t in enumerate(tracks)}
    row_of = {u: i for i, u in enumerate(user_factors.column("user_id").to_pylist())}
    scores = factor_matrix(user_factors) @ factor_matrix(track_factors).T
    played: dict[int, list[int]] = {}
    unknown_users = set()
    for user, track in zip(heldout.column("user_id").to_pylist(), heldout.column("track_id").to_pylist()):
        if user not in row_of:
            unknown_users.add(user)
        elif track in col_of:
            played.setdefault(row_of[user], []).append(col_of[track])
    aucs, aps = [], []
    for row, cols in played.items():
        relevant = np.zeros(len(tracks), dtype=bool)
        relevant[cols] = True
        if relevant.all():
            continue  # AUC needs a track the user did not play
        aucs.append(roc_auc_score(relevant, scores[row]))
        aps.append(average_precision_at(scores[row], relevant, k))
    return {"users": len(aucs), "tracks": len(tracks), "unknown_users": len(unknown_users),
            "auc": float(np.mean(aucs)) if aucs else float("nan"),
            f"map@{k}": float(np.mean(aps)) if aps else float("nan")}


def fold_in(user_factors: np.ndarray, plays: sp.csr_matrix, alpha: float, eps: float,
            reg: float) -> np.ndarray:
    """The ALS item step for each row of ``plays`` (tracks x users) with users fixed.

    y_i = (X'X + X' (C_i - I) X + reg * n_i * I)^-1 X' C_i p_i, with
    c = 1 + alpha * log(1 + r / eps) and Spark's regularisation scaled by the
    track's number of plays n_i. Returns (n_tracks, k) float32.
    """
    x = user_factors.astype(np.float64)
    gram = x.T @ x
    out = np.zeros((plays.shape[0], x.shape[1]))
    for i in range(plays.shape[0]):
        users = plays.indices[plays.indptr[i]:plays.indptr[i + 1]]
        counts = plays.data[plays.indptr[i]:plays.indptr[i + 1]]
        c = 1 + alpha * np.log1p(counts / eps)
        xu = x[users]
        a = gram + xu.T @ ((c - 1)[:, None] * xu) + reg * max(len(users), 1) * np.eye(x.shape[1])
        out[i] = np.linalg.solve(a, xu.T @ c)
    return out.astype(np.float32)


def heldout_matrix(heldout: pa.Table, track_ids: list[str], user_ids: list[str]) -> sp.csr_matrix:
    """(tracks x users) summed play counts of the held-out plays."""
    col = {u: j for j, u in enumerate(user_ids)}
    row = {t: i for i, t in enumerate(track_ids)}
    triples = [(row[t], col[u], n) for u, t, n in zip(
        heldout.column("user_id").to_pylist(), heldout.column("track_id").to_pylist(),
        heldout.column("plays").to_pylist()) if t in row and u in col]
    rows, cols, counts = (np.array(v, dtype=np.float64) for v in zip(*triples)) if triples \
        else (np.zeros(0),) * 3
    return sp.csr_matrix((counts, (rows.astype(int), cols.astype(int))),
                         shape=(len(track_ids), len(user_ids)))


def cosine_distance(pred: np.ndarray, reference: np.ndarray) -> float:
    """Mean over tracks of 1 - cos(pred_i, reference_i)."""
    return float(np.mean(1 - np.sum(unit_rows(pred) * unit_rows(reference), axis=1)))


def model_name(artefact: dict) -> str:
    metrics = artefact["metrics"]
    return f"CNN {artefact['net_config'].get('arch', 'dieleman2014')}, {metrics.get('loss', 'mse')} loss"


def evaluate(users: pa.Table, items: pa.Table, als: dict, heldout: pa.Table, shards: list[Path],
             models: list[Path], bow: BowConfig, k: int = 500, bow_train_tracks: int = 5000,
             seed: int = 0) -> dict:
    """Every method's metrics on the same held-out tracks; see the module docstring.

    ``als`` holds the ALS run's alpha, eps and reg (the item factors' metadata).
    """
    warm = set(items.column("track_id").to_pylist())
    wanted = sorted(set(heldout.column("track_id").to_pylist()) - warm)
    held_mels = read_mels(shards, wanted)
    track_ids = held_mels.column("track_id").to_pylist()
    logger.info("%d held-out tracks, %d of them with spectrograms", len(wanted), len(track_ids))
    user_x = factor_matrix(users)
    truth = fold_in(user_x, heldout_matrix(heldout, track_ids, users.column("user_id").to_pylist()),
                    als.get("alpha", 1.0), als.get("eps", 1.0), als.get("reg", 0.1))
    rank = user_x.shape[1]

    methods: dict[str, np.ndarray] = {}
    methods["random"] = np.random.default_rng(seed).normal(size=(len(track_ids), rank)).astype(np.float32)
    rng = np.random.default_rng(seed)
    warm_ids = items.column("track_id").to_pylist()
    train_ids = list(rng.choice(warm_ids, min(bow_train_tracks, len(warm_ids)), replace=False))
    train = read_mels(shards, train_ids)
    row_of = {t: i for i, t in enumerate(warm_ids)}
    targets = factor_matrix(items)[[row_of[t] for t in train.column("track_id").to_pylist()]]
    methods["bag-of-words + linear regression"] = BagOfWords(bow).fit(
        mel_array(train), targets).predict(mel_array(held_mels))
    for path in models:
        model, artefact = load_model(path)
        ids, predicted = predict_tracks(model, artefact, shards, track_ids)
        order = {t: i for i, t in enumerate(ids)}
        methods[model_name(artefact)] = predicted[[order[t] for t in track_ids]]
    methods["upper bound (ALS sees the plays)"] = truth

    results = []
    for name, factors in methods.items():
        table = pa.table({"track_id": track_ids, "factors": factors_column(factors)})
        metrics = rank_metrics(users, table, heldout, k)
        results.append({"method": name, "auc": metrics["auc"], f"map@{k}": metrics[f"map@{k}"],
                        "cosine_distance": cosine_distance(factors, truth)})
        logger.info("%s: %s", name, results[-1])
    return {"users": metrics["users"], "heldout_tracks": len(track_ids), "k": k,
            "methods": results}


def markdown(report: dict) -> str:
    k = report["k"]
    lines = [f"Held-out tracks: {report['heldout_tracks']}, users: {report['users']}", "",
             f"| method | mAP@{k} | AUC | cosine distance |", "|---|---|---|---|"]
    lines += [f"| {m['method']} | {m[f'map@{k}']:.4f} | {m['auc']:.4f} | {m['cosine_distance']:.4f} |"
              for m in report["methods"]]
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> None:
    tmp = storage.atomic_file(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jobs.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--user-factors", required=True, type=Path,
                        help="ALS user factors (schemas.USER_FACTORS)")
    parser.add_argument("--item-factors", required=True, type=Path,
                        help="ALS item factors of the warm tracks (schemas.ITEM_FACTORS); their "
                             "metadata gives alpha, eps and reg for the upper bound")
    parser.add_argument("--heldout-plays", required=True, type=Path,
                        help="plays of the held-out tracks that ALS never saw (schemas.PLAYS)")
    parser.add_argument("--mels", required=True, type=Path,
                        help="mel-spectrogram directory of the models' parameter set")
    parser.add_argument("--model", type=Path, action="append", default=[],
                        help="a trained model file; repeat for each loss/architecture")
    parser.add_argument("--k", type=int, default=500, help="cut-off of mAP@k (default %(default)s)")
    parser.add_argument("--bow-codebook", type=int, default=BowConfig.codebook,
                        help="k-means words of the bag-of-words baseline (default %(default)s)")
    parser.add_argument("--bow-train-tracks", type=int, default=5000,
                        help="warm tracks sampled to fit the baseline (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    parser.add_argument("--out", required=True, type=Path,
                        help="JSON report to write; the markdown table goes beside it (.md)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    report = evaluate(storage.read_table(args.user_factors, schemas.USER_FACTORS),
                      storage.read_table(args.item_factors, schemas.ITEM_FACTORS),
                      storage.read_params(args.item_factors),
                      storage.read_table(args.heldout_plays, schemas.PLAYS),
                      mel_shards(args.mels), args.model,
                      BowConfig(codebook=args.bow_codebook, seed=args.seed), args.k,
                      args.bow_train_tracks, args.seed)
    write_text(args.out.with_suffix(".md"), markdown(report))
    write_text(args.out, json.dumps(report, indent=2) + "\n")  # last: it marks completion
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
