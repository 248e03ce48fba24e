"""The paper's evaluation of predicted factors for held-out tracks (NIPS 2013, 5.2).

ALS was trained without the held-out tracks' plays. For every user with held-out
plays, each held-out track i is scored x_u . y_i; the tracks the user played should
rank first. Reported over users: mean AUC and mAP@K, and over tracks the mean cosine
distance to the upper bound's factors; also by the held-out tracks' popularity and,
where the catalogue has artists, by whether the artist has warm tracks (known) or not
(new). Always on the same split, for:

- random: Gaussian factors;
- bag-of-words: 13 MFCC + deltas, k-means words, PCA, linear regression (model/bow.py);
- each CNN model given (one per loss and architecture); one with a metadata branch
  (late fusion) twice: with the catalogue's metadata, and with the artist withheld,
  as for a track of an artist never seen; one with a taste classifier (model/taste.py)
  also as the network alone, to show what the classifier adds;
- upper bound: the factors ALS gives the held-out tracks when it sees their plays,
  i.e. the exact ALS item step (same alpha, eps and regularisation as the run) against
  the trained user factors, so they live in the same space as the predictions.

Then semi-cold tracks (jobs/evaluate_semicold.py): 1, 2, 5 and 10 plays of each
held-out track revealed, ALS on them against the best CNN's audio alone and the blend.

    python -m jobs.evaluate --user-factors ALS/user_factors --item-factors ALS/item_factors \\
        --mels DATA/mels/<hash> --heldout-plays heldout.parquet --model m1.pt --model m2.pt \\
        --out report.json

Writes the JSON report and the same numbers as a markdown table (report.md).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import schemas
from model.artefact import load_model
from model import bow, metadata
from model.bow import BagOfWords
from model.data import mel_array, read_mels, unit_rows
from model.predict import predict_tracks, vocabulary
from jobs.evaluate_semicold import evaluate_semicold, markdown as semicold_markdown
from schemas import cli, layout, metrics, model_file, storage
from schemas import factor_matrix, factors_column
from schemas.config import BowConfig, EvaluateConfig
from schemas.metrics import rank_metrics
from schemas.feedback import als_settings, fold_in, plays_matrix

logger = logging.getLogger(__name__)

NETWORK_ALONE = "network alone"  # the row of a CNN without its taste classifier


def cosine_distance(pred: np.ndarray, reference: np.ndarray) -> float:
    """Mean over tracks of 1 - cos(pred_i, reference_i)."""
    return float(np.mean(1 - np.sum(unit_rows(pred) * unit_rows(reference), axis=1)))


def same_artist(pred: np.ndarray, artists: list[str | None], warm: np.ndarray,
                warm_artists: list[str | None], n: int) -> float:
    """How often a track's ``n`` nearest warm tracks (cosine) share its artist; NaN
    without artists."""
    known = [i for i, a in enumerate(artists) if a is not None]
    if not known or not any(a is not None for a in warm_artists):
        return float("nan")
    similar = unit_rows(pred[known]) @ unit_rows(warm).T
    nearest = np.argsort(-similar, axis=1, kind="stable")[:, :n]
    labels = np.array(warm_artists, dtype=object)
    return float(np.mean(labels[nearest] == np.array([artists[i] for i in known],
                                                     dtype=object)[:, None]))


def artist_oracle(track_ids: list[str], artist_of: dict[str, str | None], items: pa.Table,
                  fallback: np.ndarray) -> tuple[np.ndarray, int]:
    """The mean ALS factor of each track's artist's warm tracks; ``fallback`` (the mean
    of all warm factors) for a track whose artist has none. Returns (factors, known)."""
    warm = factor_matrix(items)
    rows: dict[str, list[int]] = {}
    for j, track in enumerate(items.column("track_id").to_pylist()):
        if artist_of.get(track) is not None:
            rows.setdefault(artist_of[track], []).append(j)
    out = np.tile(fallback, (len(track_ids), 1)).astype(np.float32)
    known = 0
    for i, track in enumerate(track_ids):
        mine = rows.get(artist_of.get(track))
        if mine:
            out[i], known = warm[mine].mean(axis=0), known + 1
    return out, known


def popularity_slices(heldout: pa.Table, track_ids: list[str], n: int = 3) -> dict[str, list[str]]:
    """The held-out tracks in ``n`` equal parts by their number of listeners."""
    listeners = Counter(heldout.column("track_id").to_pylist())
    ordered = sorted(track_ids, key=lambda t: (listeners[t], t))
    names = ("least popular", "middle", "most popular") if n == 3 else \
        tuple(f"popularity {i + 1}/{n}" for i in range(n))
    return {name: list(part) for name, part in zip(names, np.array_split(ordered, n))}


def artist_slices(track_ids: list[str], artist_of: dict[str, str | None],
                  warm_ids: list[str]) -> dict[str, list[str]]:
    """The held-out tracks whose artist has warm tracks, and those of a new artist
    (tracks without an artist are in neither); empty parts are left out."""
    known = {artist_of.get(t) for t in warm_ids} - {None}
    parts = {"known artist": [t for t in track_ids if artist_of.get(t) in known],
             "new artist": [t for t in track_ids
                            if artist_of.get(t) is not None and artist_of[t] not in known]}
    return {name: ids for name, ids in parts.items() if ids}


def model_name(artefact: dict) -> str:
    config = artefact["net_config"]
    if config["arch"] == bow.ARCH:
        return "bag-of-words + linear regression (model file)"
    fused = " + metadata" if config.get("metadata_vocab") else ""
    return f"CNN {config['arch']}, {artefact['metrics']['loss']} loss{fused}"


def baselines(items: pa.Table, shards: list[Path], held_mels: np.ndarray, bow: BowConfig,
              config: EvaluateConfig) -> dict[str, np.ndarray]:
    """The paper's bag-of-words baselines (section 4.1), fitted on a seeded sample of
    warm tracks: linear regression and a multilayer perceptron on the same words."""
    rng = np.random.default_rng(config.seed)
    warm_ids = items.column("track_id").to_pylist()
    train_ids = list(rng.choice(warm_ids, min(config.bow_train_tracks, len(warm_ids)),
                                replace=False))
    train = read_mels(shards, train_ids)
    row_of = {t: i for i, t in enumerate(warm_ids)}
    targets = factor_matrix(items)[[row_of[t] for t in train.column("track_id").to_pylist()]]
    words = BagOfWords(bow).fit(mel_array(train), targets)
    return {"bag-of-words + linear regression": words.predict(held_mels, "linear"),
            "bag-of-words + MLP": words.predict(held_mels, "mlp")}


def evaluate(users: pa.Table, items: pa.Table, als: dict[str, float], heldout: pa.Table,
             shards: list[Path], models: list[Path], bow: BowConfig,
             config: EvaluateConfig = EvaluateConfig(), factor_space: str | None = None,
             catalogue: pa.Table | None = None, tokens: metadata.Tokens | None = None) -> dict:
    """Every method's metrics on the same held-out tracks; see the module docstring.

    ``als`` holds the ALS run's alpha, eps and reg (schemas.feedback.als_settings);
    with ``factor_space`` (the ALS factors' id) every model must have learned it.
    With a ``catalogue`` that names artists, the artist oracle, same_artist@n and the
    artist slices; models with a metadata branch read the catalogue's ``tokens``.
    """
    k, seed = config.k, config.seed
    warm = set(items.column("track_id").to_pylist())
    wanted = sorted(set(heldout.column("track_id").to_pylist()) - warm)
    held_mels = read_mels(shards, wanted)
    track_ids = held_mels.column("track_id").to_pylist()
    logger.info("%d held-out tracks, %d of them with spectrograms", len(wanted), len(track_ids))
    user_x = factor_matrix(users)
    user_index = {u: j for j, u in enumerate(users.column("user_id").to_pylist())}
    truth = fold_in(user_x, plays_matrix(heldout, {t: i for i, t in enumerate(track_ids)},
                                         user_index), als["alpha"], als["eps"], als["reg"])
    rank = user_x.shape[1]
    artist_of = {} if catalogue is None or "artist" not in catalogue.column_names else dict(
        zip(catalogue.column("track_id").to_pylist(), catalogue.column("artist").to_pylist()))

    methods: dict[str, np.ndarray] = {}
    methods["random"] = np.random.default_rng(seed).normal(size=(len(track_ids), rank)).astype(np.float32)
    methods.update(baselines(items, shards, mel_array(held_mels), bow, config))
    for path in models:
        model, artefact = load_model(path)
        if factor_space is not None:
            model_file.check_factor_space(artefact, path, {model_file.FACTOR_SPACE: factor_space},
                                          "the ALS factors evaluated")
        name = model_name(artefact)
        if name in methods:  # two models of the same kind: each keeps its own row
            name = f"{name} ({Path(path).name})"
        if vocabulary(model) and tokens is None:
            raise ValueError(f"{path}: the model reads catalogue metadata: give the catalogue")
        variants = {name: ((), artefact)}
        if vocabulary(model):
            variants[f"{name}, artist withheld (as if new)"] = (("artist",), artefact)
        if artefact.get("taste"):  # what the taste classifier adds (model/taste.py)
            variants[f"{name}, {NETWORK_ALONE}"] = ((), {**artefact, "taste": None})
        for variant, (withhold, used) in variants.items():
            ids, predicted = predict_tracks(model, used, shards, track_ids, tokens, withhold)
            order = {t: i for i, t in enumerate(ids)}
            methods[variant] = predicted[[order[t] for t in track_ids]]
    known_artists = 0
    if any(a is not None for a in artist_of.values()):
        methods["artist oracle (mean factor of the artist's warm tracks)"], known_artists = \
            artist_oracle(track_ids, artist_of, items, factor_matrix(items).mean(axis=0))
    methods["upper bound (ALS sees the plays)"] = truth

    warm_ids = items.column("track_id").to_pylist()
    warm_artists = [artist_of.get(t) for t in warm_ids]
    held_artists = [artist_of.get(t) for t in track_ids]
    slices = {**popularity_slices(heldout, track_ids),
              **artist_slices(track_ids, artist_of, warm_ids)}
    results = []
    for name, factors in methods.items():
        table = pa.table({"track_id": track_ids, "factors": factors_column(factors)})
        ranked = rank_metrics(users, table, heldout, k, config.recall_k)
        row = {"method": name, **{key: ranked[key] for key in
                                  ("auc", f"map@{k}", f"recall@{config.recall_k}")},
               "cosine_distance": cosine_distance(factors, truth),
               "spread": metrics.spread(factors),
               f"same_artist@{config.neighbours}": same_artist(
                   factors, held_artists, factor_matrix(items), warm_artists, config.neighbours),
               "slices": {}}
        for slice_name, ids in slices.items():
            part = rank_metrics(users, table.filter(pc.is_in(table["track_id"], pa.array(ids))),
                                heldout, k, config.recall_k)
            row["slices"][slice_name] = {"tracks": len(ids), "auc": part["auc"],
                                         f"map@{k}": part[f"map@{k}"]}
        results.append(row)
        logger.info("%s: %s", name, {key: value for key, value in row.items() if key != "slices"})
    report = {"users": ranked["users"], "heldout_tracks": len(track_ids), "k": k,
              "recall_k": config.recall_k, "neighbours": config.neighbours,
              "tracks_with_known_artist": known_artists, "methods": results}
    cnns = [row for row in results if row["method"].startswith("CNN")
            and "+ metadata" not in row["method"] and NETWORK_ALONE not in row["method"]
            and np.isfinite(row["auc"])]
    if cnns:  # semi-cold tracks: a few plays revealed, with the best audio-only model
        best = max(cnns, key=lambda row: row["auc"])["method"]
        report["semi_cold"] = {"audio": best, **evaluate_semicold(
            users, heldout, track_ids, methods[best], als, k, config.recall_k, seed)}
    return report


def markdown(report: dict) -> str:
    """The report's table; the columns a report lacks are left out."""
    k = report["k"]
    columns = [(f"map@{k}", f"mAP@{k}"), ("auc", "AUC"),
               (f"recall@{report.get('recall_k')}", f"recall@{report.get('recall_k')}"),
               ("cosine_distance", "cosine distance"), ("spread", "spread"),
               (f"same_artist@{report.get('neighbours')}",
                f"same artist @{report.get('neighbours')}")]
    columns = [(key, title) for key, title in columns if key in report["methods"][0]]
    lines = [f"Held-out tracks: {report['heldout_tracks']}, users: {report['users']}", "",
             "| method | " + " | ".join(title for _, title in columns) + " |",
             "|---|" + "---|" * len(columns)]
    lines += ["| " + " | ".join([m["method"]] + [f"{m[key]:.4f}" for key, _ in columns]) + " |"
              for m in report["methods"]]
    slices = list(report["methods"][0].get("slices", {}))
    if slices:
        first = report["methods"][0]["slices"]
        lines += ["", "AUC by slice of the held-out tracks (tracks in each):", "",
                  "| method | " + " | ".join(f"{s} ({first[s]['tracks']})" for s in slices) + " |",
                  "|---|" + "---|" * len(slices)]
        lines += ["| " + " | ".join([m["method"]] + [f"{m['slices'][s]['auc']:.4f}"
                                                     for s in slices]) + " |"
                  for m in report["methods"]]
    if "semi_cold" in report:
        lines += ["", semicold_markdown(report["semi_cold"], k)]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = EvaluateConfig()
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__,
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
    parser.add_argument("--catalogue", type=Path,
                        help="the catalogue (schemas.CATALOGUE); with artists, adds the artist "
                             "oracle, how often a track's nearest warm tracks share its artist "
                             "and the known/new artist slices; models with a metadata branch "
                             "need it")
    parser.add_argument("--k", type=int, default=defaults.k,
                        help="cut-off of mAP@k (default %(default)s)")
    parser.add_argument("--recall-k", type=int, default=defaults.recall_k,
                        help="cut-off of recall@k (default %(default)s)")
    parser.add_argument("--bow-codebook", type=int, default=BowConfig.codebook,
                        help="k-means words of the bag-of-words baseline (default %(default)s)")
    parser.add_argument("--bow-train-tracks", type=int, default=defaults.bow_train_tracks,
                        help="warm tracks sampled to fit the baseline (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="random seed (default %(default)s)")
    parser.add_argument("--out", required=True, type=Path,
                        help="JSON report to write; the markdown table goes beside it (.md)")
    return parser.parse_args(argv)


def run_job(args: argparse.Namespace) -> None:
    factors_params = storage.read_params(args.item_factors)
    report = evaluate(storage.read_table(args.user_factors, schemas.USER_FACTORS),
                      storage.read_table(args.item_factors, schemas.ITEM_FACTORS),
                      als_settings(factors_params, args.item_factors),
                      storage.read_table(args.heldout_plays, schemas.PLAYS),
                      layout.mel_shards(args.mels), args.model,
                      BowConfig(codebook=args.bow_codebook, seed=args.seed),
                      EvaluateConfig(k=args.k, recall_k=args.recall_k,
                                     bow_train_tracks=args.bow_train_tracks, seed=args.seed),
                      factors_params.get(model_file.FACTOR_SPACE),
                      storage.read_table(args.catalogue, schemas.CATALOGUE) if args.catalogue
                      else None,
                      metadata.read_tokens(args.catalogue) if args.catalogue else None)
    storage.write_text(args.out.with_suffix(".md"), markdown(report))
    storage.write_text(args.out, json.dumps(report, indent=2) + "\n")  # last: marks completion
    print(markdown(report))


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    args = parse_args(argv)
    return cli.run_job(lambda: run_job(args), logger, ValueError)


if __name__ == "__main__":
    sys.exit(main())
