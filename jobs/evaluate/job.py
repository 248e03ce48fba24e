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

Every method is judged by jobs/evaluate/judge.py, as choosing judges its candidates.
Then semi-cold tracks (jobs/evaluate/semicold.py): 1, 2, 5 and 10 plays of each
held-out track revealed, ALS on them against the best CNN's audio alone and the blend
that scoring serves.

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
from typing import Sequence
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

import schemas
from jobs.evaluate.judge import HeldOut, judge
from jobs.evaluate.semicold import evaluate_semicold, markdown as semicold_markdown
from model import metadata
from model.bow import BagOfWords
from model.data import mel_array, read_mels, shard_track_ids
from model.predictor import FactorSpace, Predictor
from schemas import cli, factor_matrix, layout, model_file, storage
from schemas.config import BowConfig, EvaluateConfig, SemiColdConfig
from schemas.feedback import als_settings, fold_in, plays_matrix

logger = logging.getLogger(__name__)

NETWORK_ALONE = "network alone"  # the row of a CNN without its taste classifier
HEAD_ALONE = "head alone"  # the pretrained front end without its taste classifier
ENSEMBLE = "ensemble of the shipped candidates"  # what choosing combines

# What each row is, recorded with it, so that readers pick rows without parsing names:
REFERENCE = "reference"  # random, the artist oracle, the upper bound
BASELINE = "baseline"    # the bag-of-words baselines fitted here
MODEL = "model"          # a model file as it would ship
VARIANT = "variant"      # a model file less a member, or with a column withheld


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


def model_name(predictor: Predictor) -> str:
    network = predictor.member("network")
    if predictor.member("pretrained") is not None:
        return f"pretrained musicnn taggers, {predictor.metrics['loss']}"
    if network is None:
        return "bag-of-words + linear regression (model file)"
    fused = " + metadata" if predictor.vocabulary else ""
    return f"CNN {network.module.config.arch}, {predictor.metrics['loss']} loss{fused}"


def baselines(items: pa.Table, shards: list[Path], held_mels: np.ndarray, bow: BowConfig,
              config: EvaluateConfig) -> dict[str, np.ndarray]:
    """The paper's bag-of-words baselines (section 4.1), fitted on a seeded sample of
    warm tracks: linear regression and a multilayer perceptron on the same words."""
    rng = np.random.default_rng(config.seed)
    warm_ids = items.column("track_id").to_pylist()
    train_ids = list(rng.choice(warm_ids, min(config.bow_train_tracks, len(warm_ids)),
                                replace=False))
    logger.info("fitting the bag-of-words baselines on %d warm tracks", len(train_ids))
    train = read_mels(shards, train_ids)
    row_of = {t: i for i, t in enumerate(warm_ids)}
    targets = factor_matrix(items)[[row_of[t] for t in train.column("track_id").to_pylist()]]
    words = BagOfWords(bow).fit(mel_array(train), targets)
    return {"bag-of-words + linear regression": words.predict(held_mels, "linear"),
            "bag-of-words + MLP": words.predict(held_mels, "mlp")}


def candidates(models: list[Path], together: Sequence[Path] = ()
               ) -> dict[str, tuple[str, Predictor]]:
    """Each model file as it ships and its variants, by row name: (role, predictor).
    One with a metadata branch also with the artist withheld, as for a track of an
    artist never seen; one with a taste classifier also as the network alone; and the
    ensemble of the models ``together`` (those choosing combines, ChooseConfig.combine)."""
    out: dict[str, tuple[str, Predictor]] = {}
    shipped = []
    for path in models:
        predictor = Predictor.load(path)
        name = model_name(predictor)
        if name in out:  # two models of the same kind: each keeps its own row
            name = f"{name} ({Path(path).name})"
        out[name] = (MODEL, predictor)
        if Path(path) in set(map(Path, together)):
            shipped.append(predictor)
        if predictor.vocabulary:
            out[f"{name}, artist withheld (as if new)"] = (VARIANT,
                                                          predictor.withholding(("artist",)))
        if predictor.member("taste") is not None:  # what the classifier adds (model/taste.py)
            alone = HEAD_ALONE if predictor.member("pretrained") is not None else NETWORK_ALONE
            out[f"{name}, {alone}"] = (VARIANT, predictor.without("taste"))
    if len(shipped) > 1:
        out[ENSEMBLE] = (MODEL, Predictor.combined(shipped, ENSEMBLE))
    return out


def evaluate(users: pa.Table, items: pa.Table, als: dict[str, float], heldout: pa.Table,
             shards: list[Path], models: list[Path], bow: BowConfig,
             config: EvaluateConfig = EvaluateConfig(), factor_space: str | None = None,
             catalogue: pa.Table | None = None, tokens: metadata.Tokens | None = None,
             semi_cold: SemiColdConfig = SemiColdConfig(),
             tagger_shards: Sequence[Path] = (), together: Sequence[Path] = ()) -> dict:
    """Every method's metrics on the same held-out tracks; see the module docstring.

    ``als`` holds the ALS run's alpha, eps and reg (schemas.feedback.als_settings);
    with ``factor_space`` (the ALS factors' id) every model must have learned it.
    With a ``catalogue`` that names artists, the artist oracle, same_artist@n and the
    artist slices; models with a metadata branch read the catalogue's ``tokens``.
    ``semi_cold``: scoring's settings for tracks with a few plays. ``tagger_shards``: the
    pretrained taggers' input, for models that read it; a track is judged when it has
    both kinds of spectrogram. ``together``: the models choosing would combine.
    """
    warm = set(items.column("track_id").to_pylist())
    wanted = sorted(set(heldout.column("track_id").to_pylist()) - warm)
    if tagger_shards:
        wanted = sorted(set(wanted) & set(shard_track_ids(tagger_shards)))
    held_mels = read_mels(shards, wanted)
    track_ids = held_mels.column("track_id").to_pylist()
    logger.info("%d held-out tracks, %d of them with spectrograms", len(wanted), len(track_ids))
    user_x = factor_matrix(users)
    user_index = {u: j for j, u in enumerate(users.column("user_id").to_pylist())}
    truth = fold_in(user_x, plays_matrix(heldout, {t: i for i, t in enumerate(track_ids)},
                                         user_index), als["alpha"], als["eps"], als["reg"])
    artist_of = {} if catalogue is None or "artist" not in catalogue.column_names else dict(
        zip(catalogue.column("track_id").to_pylist(), catalogue.column("artist").to_pylist()))
    warm_ids = items.column("track_id").to_pylist()
    space = FactorSpace(factor_space, "the ALS factors evaluated")

    role: dict[str, str] = {}
    methods: dict[str, Predictor | np.ndarray] = {}
    methods["random"] = np.random.default_rng(config.seed).normal(
        size=(len(track_ids), user_x.shape[1])).astype(np.float32)
    methods.update(baselines(items, shards, mel_array(held_mels), bow, config))
    role.update({name: BASELINE for name in methods if name != "random"})
    for name, (kind, predictor) in candidates(models, together).items():
        methods[name], role[name] = predictor, kind
    known_artists = 0
    if any(a is not None for a in artist_of.values()):
        methods["artist oracle (mean factor of the artist's warm tracks)"], known_artists = \
            artist_oracle(track_ids, artist_of, items, factor_matrix(items).mean(axis=0))
    methods["upper bound (ALS sees the plays)"] = truth

    held = HeldOut(users, heldout, track_ids, truth, items, [*shards, *tagger_shards], space,
                   tokens, artist_of,
                   {**popularity_slices(heldout, track_ids),
                    **artist_slices(track_ids, artist_of, warm_ids)})
    rows, predictions = judge(methods, held, config)
    results = [{**row, "role": role.get(row["method"], REFERENCE)} for row in rows]
    report = {"users": results[-1]["users"], "heldout_tracks": len(track_ids), "k": config.k,
              "recall_k": config.recall_k, "neighbours": config.neighbours,
              "tracks_with_known_artist": known_artists, "methods": results}
    # semi-cold tracks: a few plays revealed, with the best audio-only model as it ships
    audio_only = [row for row in results if row["role"] == MODEL and np.isfinite(row["auc"])
                  and not methods[row["method"]].vocabulary
                  and any(methods[row["method"]].member(kind) is not None
                          for kind in ("network", "pretrained"))]
    if audio_only:
        best = max(audio_only, key=lambda row: row["auc"])["method"]
        report["semi_cold"] = {"audio": best, "model": methods[best].source, **evaluate_semicold(
            users, heldout, track_ids, predictions[best], als,
            config.k, config.recall_k, config.seed, semi_cold)}
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
    parser.add_argument("--frontend-mels", type=Path,
                        help="the pretrained taggers' input (DATA/mels/<tagger hash>); needed by "
                             "models with a pretrained front end")
    parser.add_argument("--model", type=Path, action="append", default=[],
                        help="a trained model file; repeat for each loss/architecture")
    parser.add_argument("--together", type=Path, action="append", default=[],
                        help="a --model that choosing would combine with the others given so; "
                             "with two or more, the ensemble is judged too")
    parser.add_argument("--catalogue", type=Path,
                        help="the catalogue (schemas.CATALOGUE); with artists, adds the artist "
                             "oracle, how often a track's nearest warm tracks share its artist "
                             "and the known/new artist slices; models with a metadata branch "
                             "need it")
    cli.add_settings(parser, EvaluateConfig, skip=("models",))
    cli.add_settings(parser, BowConfig, only=("codebook",))
    cli.add_settings(parser, SemiColdConfig, only=("min_listeners", "reg"))
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
                      cli.settings_from(EvaluateConfig, args, skip=("models",)),
                      factors_params.get(model_file.FACTOR_SPACE),
                      storage.read_table(args.catalogue, schemas.CATALOGUE) if args.catalogue
                      else None,
                      metadata.read_tokens(args.catalogue) if args.catalogue else None,
                      cli.settings_from(SemiColdConfig, args, only=("min_listeners", "reg")),
                      layout.mel_shards(args.frontend_mels) if args.frontend_mels else [],
                      args.together)
    storage.write_text(args.out.with_suffix(".md"), markdown(report))
    storage.write_text(args.out, json.dumps(report, indent=2) + "\n")  # last: marks completion
    print(markdown(report))


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    args = parse_args(argv)
    return cli.run_job(lambda: run_job(args), logger, ValueError, FileNotFoundError)


if __name__ == "__main__":
    sys.exit(main())
