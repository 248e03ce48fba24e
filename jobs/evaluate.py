"""How well predicted factors of held-out tracks rank each user's real plays of them.

For every user with held-out plays, every held-out track i gets the score
x_u . y_i; the user's played tracks should rank first. Reported per the paper
(van den Oord et al. 2013, section 5.2): mean per-user AUC and mAP@K.

    python -m jobs.evaluate --user-factors DATA/als/user_factors \\
        --track-factors predicted_factors.parquet --heldout-plays heldout.parquet \\
        --out report.json
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
from sklearn.metrics import roc_auc_score

import schemas
from jobs import storage
from model.data import factor_matrix

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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jobs.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--user-factors", required=True, type=Path,
                        help="ALS user factors (schemas.USER_FACTORS)")
    parser.add_argument("--track-factors", required=True, type=Path,
                        help="factors of the held-out tracks (schemas.PREDICTED_FACTORS)")
    parser.add_argument("--heldout-plays", required=True, type=Path,
                        help="plays of the held-out tracks that ALS never saw (schemas.PLAYS)")
    parser.add_argument("--k", type=int, default=500, help="cut-off of mAP@k (default %(default)s)")
    parser.add_argument("--out", required=True, type=Path, help="JSON report to write")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    report = rank_metrics(storage.read_table(args.user_factors, schemas.USER_FACTORS),
                          storage.read_table(args.track_factors, schemas.ITEM_FACTORS),
                          storage.read_table(args.heldout_plays, schemas.PLAYS), args.k)
    tmp = storage.atomic_file(args.out)
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, args.out)
    logger.info("%s", json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
