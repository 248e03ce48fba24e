"""The report's sections, each from the run's own outputs (see gather.RunFiles)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sklearn.manifold import TSNE

import schemas
from schemas import factor_matrix, layout, storage
from model.predictor import Predictor
from schemas.metrics import unit_rows
from jobs.report.gather import RunFiles
from jobs.report.render import Section

MAP_TRACKS = 1500  # the t-SNE map: every cold track and warm ones up to this many
COLOURS = 10  # labels coloured on the map; the rest are "other"
COMMON_TAGS = 10  # tags counted among cold and warm tracks in the similar-tracks section


class Names:
    """Title and artist of each track, from the catalogue, and its label (the map's
    colour, such as the demo's style) where one is given."""

    def __init__(self, catalogue: Path | None, labels: Sequence[dict[str, str]] = ()):
        table = pq.read_table(catalogue, columns=["track_id", "title", "artist"]) \
            if catalogue and Path(catalogue).exists() else None
        self.rows = {} if table is None else {
            t: (title, artist) for t, title, artist in zip(*(table[c].to_pylist() for c in table.column_names))}
        self.labels = list(labels)

    def __call__(self, track_id: str) -> str:
        title, artist = self.rows.get(track_id, (None, None))
        given = [labels[track_id] for labels in self.labels if track_id in labels]
        label = f" [{', '.join(given)}]" if given else ""
        return f"{title or track_id} ({artist or 'unknown artist'}){label}"


def data_section(files: RunFiles, figures: dict[str, str]) -> Section:
    section = Section("Data")
    rows = []
    if files.catalogue and Path(files.catalogue).exists():
        rows.append(["tracks in the catalogue", pq.read_metadata(files.catalogue).num_rows])
    if files.plays and Path(files.plays).exists():
        plays = pq.read_table(files.plays, columns=["user_id", "track_id", "plays"])
        rows += [["users", pc.count_distinct(plays["user_id"]).as_py()],
                 ["play rows (user, track)", plays.num_rows],
                 ["plays", pc.sum(plays["plays"]).as_py()]]
        listeners = plays.group_by("track_id").aggregate([("user_id", "count_distinct")])
        counts = np.sort(listeners["user_id_count_distinct"].to_numpy())[::-1]
        figure, ax = plt.subplots(figsize=(6, 4))
        ax.loglog(np.arange(1, len(counts) + 1), counts, marker=".", linestyle="none")
        ax.set(xlabel="track rank by listeners", ylabel="listeners", title="Popularity")
        section.figure("popularity.png", "listeners per track against rank, log-log", figure)
    if files.track_factors is not None:
        sources = sorted(Counter(files.track_factors["source"].to_pylist()).items())
        rows += [[f"tracks with factors from {source}", n] for source, n in sources]
        figures[files.factors.name] = ", ".join(f"{n} {source}" for source, n in sources)
    if files.tags:
        rows.append(["tracks with tags from the pretrained taggers", len(files.track_tags)])
    section.table(["what", "count"], rows)
    letters = dead_letters(files)
    section.text("Inputs set aside, with the reason (none is dropped silently):" if letters
                 else "No input was set aside.")
    if letters:
        section.table(["where", "reason", "count"], letters)
    return section


def dead_letters(files: RunFiles) -> list[list[object]]:
    """(where, reason, count) of everything the run set aside."""
    found: list[tuple[str, pa.Table, str]] = []
    for params_dir, where in ((files.mels, "spectrograms"), (files.frontend_mels, "tagger inputs")):
        for path in layout.final_dead_letter_files(params_dir) if params_dir else []:
            found.append((where, pq.read_table(path), "error"))
    if files.als and (files.als / layout.QUARANTINE).exists():
        found.append(("ALS play rows", pq.read_table(files.als / layout.QUARANTINE), "reason"))
    if files.factors:
        for name in (layout.UNSCORED, layout.UNLISTED):
            if (files.factors / name).exists():
                found.append(("scoring", pq.read_table(files.factors / name), "error"))
    rows = []
    for where, table, column in found:
        if table.num_rows:
            # the first clause of a reason: the rest names the file or row
            reasons = Counter(str(r).split(":")[0][:80] for r in table[column].to_pylist())
            rows += [[where, reason, n] for reason, n in reasons.most_common()]
    return rows


def stage_seconds(files: RunFiles) -> list[dict]:
    if not files.stages.exists():
        return []
    return [json.loads(line) for line in files.stages.read_text().splitlines() if line.strip()]


def als_section(files: RunFiles, evaluation: dict | None, figures: dict[str, str]) -> Section:
    section = Section("ALS")
    if not files.als:
        section.text("This run has no ALS output.")
        return section
    params = storage.read_params(files.als / layout.ITEM_FACTORS)
    items = storage.read_table(files.als / layout.ITEM_FACTORS, schemas.ITEM_FACTORS).num_rows
    figures[files.als.name] = f"{items} tracks, rank {params.get('rank', '?')}"
    section.table(["setting", "value"], [[k, v] for k, v in sorted(params.items())])
    seconds = [s["seconds"] for s in stage_seconds(files) if s["output"] == files.als.name]
    section.text(f"ALS learned factors for {items} tracks"
                 + (f" in {seconds[-1]:.0f} s." if seconds
                    else " (time not recorded: an earlier run made it)."))
    bound = next((m for m in (evaluation or {}).get("methods", [])
                  if m["method"].startswith("upper bound")), None)
    if bound:
        section.text(f"Held out: ALS trained with the held-out tracks' plays ranks them at "
                     f"AUC {bound['auc']:.3f} (the upper bound of the evaluation below).")
    return section


def training_section(files: RunFiles, figures: dict[str, str]) -> Section:
    section = Section("Training")
    rows = []
    for path in ([files.chosen] if files.chosen else []) + files.models:
        metrics = Predictor.load(path).metrics
        history = metrics.get("history") or []
        name = path.stem.rsplit("-", 1)[0]
        rows.append([name, metrics.get("epochs"), metrics.get("validation_score"),
                     metrics.get("validation_spread"), metrics.get("train_tracks")])
        score = metrics.get("validation_score")
        figures[path.name] = (f"validation score {score:.3f}" if score is not None
                              else f"fitted on {metrics.get('train_tracks', '?')} warm tracks")
        if path == files.chosen:
            chosen = metrics.get("selection", {})
            if chosen:
                section.text(f"Shipped: {chosen.get('chosen')}: {chosen.get('why', '')}.")
                figures[path.name] = str(chosen.get("chosen"))
            continue
        if history:
            figure, ax = plt.subplots(figsize=(6, 3.5))
            epochs = [h["epoch"] for h in history]
            ax.plot(epochs, [h["train_loss"] for h in history], label="train")
            ax.plot(epochs, [h["validation_loss"] for h in history], label="validation")
            ax.set(xlabel="epoch", ylabel="loss", title=name)
            ax.legend()
            section.figure(f"training-{path.stem}.png", f"loss per epoch, {name}", figure)
    section.table(["model", "epochs", "validation score", "validation spread", "training tracks"],
                  rows)
    return section


def evaluation_section(evaluation: dict | None, files: RunFiles, figures: dict[str, str]) -> Section:
    section = Section("Evaluation")
    if evaluation is None:
        section.text("This run was not evaluated (the workflow evaluates on demo data; "
                     "`luigi --module workflows EvaluateColdStart` on your own).")
        return section
    k, rk, n = evaluation["k"], evaluation["recall_k"], evaluation["neighbours"]
    section.text(f"{evaluation['heldout_tracks']} held-out tracks, {evaluation['users']} users; "
                 "the tracks' plays were withheld from ALS and from training.")
    section.text("Which models: the evaluation trains its own, without the held-out tracks' "
                 "plays (rows named by kind; an ensemble row averages the kinds that choosing "
                 "combines). The shipped model was trained on every warm track, so it cannot "
                 "be judged on them itself; the row of its kind stands for it. "
                 + shipped_line(files))
    section.text(
        f"Measures. AUC: for each listener of the held-out tracks, the chance that a held-out "
        f"track they played ranks above one they did not (ranked by user factors · predicted "
        f"track factors), averaged over listeners; 0.5 is chance. mAP@{k}: the mean over "
        f"listeners of the average precision of their top {k} held-out tracks. recall@{rk}: "
        f"the share of a listener's held-out tracks found in their top {rk}. Cosine distance: "
        f"1 - cosine between predicted and ALS factors, averaged over tracks (0 is perfect). "
        f"Same artist @{n}: the share of each held-out track's {n} nearest warm tracks that "
        f"share its artist.")
    methods = evaluation["methods"]
    section.table(["method", "AUC", f"mAP@{k}", f"recall@{rk}", "cosine distance",
                   f"same artist @{n}"],
                  [[m["method"], m["auc"], m[f"map@{k}"], m[f"recall@{rk}"],
                    m["cosine_distance"], m[f"same_artist@{n}"]] for m in methods])
    slices = list(methods[0]["slices"]) if methods else []
    if slices:
        section.text("AUC by slice of the held-out tracks (tracks in the slice):")
        section.table(["method"] + [f"{s} ({methods[0]['slices'][s]['tracks']})" for s in slices],
                      [[m["method"]] + [m["slices"][s]["auc"] for s in slices] for m in methods])
    cnn = [m for m in methods if "network" in m.get("members", ())]
    if cnn:
        best = max(cnn, key=lambda m: np.nan_to_num(m["auc"], nan=-1))
        figures[files.evaluation.name] = f"best CNN AUC {best['auc']:.3f}"
    semi = evaluation.get("semi_cold")
    if semi and semi.get("buckets"):
        section.text(f"Semi-cold tracks (audio from {semi['audio']}): AUC with some plays "
                     f"revealed, the blend as scoring serves it (fewer than "
                     f"{semi.get('min_listeners')} listeners keep the audio, the others are "
                     f"held toward it with strength {semi.get('reg')}).")
        section.table(["revealed plays", "tracks", "ALS alone", "audio alone", "blend"],
                      [[b["revealed"], b["tracks"], b["als"]["auc"], b["audio"]["auc"],
                        b["blend"]["auc"]] for b in semi["buckets"]])
    return section


def shipped_line(files: RunFiles) -> str:
    """What this run shipped and why, in a sentence."""
    if not files.chosen:
        return "This run shipped no model."
    chosen = Predictor.load(files.chosen).metrics.get("selection", {})
    if not chosen:
        return f"Shipped: {files.chosen.name}."
    return f"Shipped: {chosen.get('chosen')}, because {chosen.get('why', 'it was chosen')}."


def labels_of(files: RunFiles, labels: Sequence[tuple[Path, str]]) -> list[tuple[str, dict[str, str]]]:
    """(what colours a map, track -> label) for each given column, else the artist."""
    if labels:
        out = []
        for path, column in labels:
            table = pq.read_table(path, columns=["track_id", column])
            out.append((column, dict(zip(table["track_id"].to_pylist(),
                                         map(str, table[column].to_pylist())))))
        return out
    if files.catalogue and Path(files.catalogue).exists():
        table = pq.read_table(files.catalogue, columns=["track_id", "artist"])
        return [("artist", dict(zip(table["track_id"].to_pylist(), table["artist"].to_pylist())))]
    return [("source", {})]


def map_section(files: RunFiles, labelled: Sequence[tuple[str, dict[str, str]]],
                seed: int = 0) -> Section:
    """The t-SNE map of the factors, once per labelling (labels_of)."""
    section = Section("Map of the factors")
    table = files.track_factors
    if table is None:
        section.text("This run has no factors.")
        return section
    rng = np.random.default_rng(seed)
    is_als = np.array(table["source"].to_pylist()) == "als"
    cold, warm = np.flatnonzero(~is_als), np.flatnonzero(is_als)
    keep = np.concatenate([cold, rng.permutation(warm)[:max(MAP_TRACKS - len(cold), 0)]])
    ids = [table["track_id"][int(i)].as_py() for i in keep]
    x = unit_rows(factor_matrix(table)[keep])
    if len(ids) < 5:
        section.text("Too few tracks for a map.")
        return section
    xy = TSNE(perplexity=min(30.0, (len(ids) - 1) / 3), init="pca", random_state=seed).fit_transform(x)
    is_cold = np.isin(keep, cold)
    for what, label_of in labelled:
        label = np.array([label_of.get(t) or "unknown" for t in ids])
        top = [name for name, _ in Counter(label).most_common(COLOURS)]
        figure, ax = plt.subplots(figsize=(9.5, 7), constrained_layout=True)
        for i, name in enumerate(top + ["other"]):
            mine = np.isin(label, top, invert=True) if name == "other" else label == name
            if not mine.any():
                continue
            colour = "lightgrey" if name == "other" else plt.cm.tab10(i % 10)
            ax.scatter(*xy[mine & ~is_cold].T, s=12, color=colour, label=name)
            ax.scatter(*xy[mine & is_cold].T, s=40, color=colour, marker="x")
        ax.scatter([], [], s=40, color="black", marker="x", label="cold (predicted from audio)")
        # beside the map, not over it: a legend inside hides points
        ax.legend(fontsize=7, title=what, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set(title=f"t-SNE of the track factors (cosine), coloured by {what}", xticks=[], yticks=[])
        name = "map.png" if what == labelled[0][0] else f"map-{what}.png"
        section.figure(name, f"t-SNE map of warm (dots) and predicted cold (crosses) factors "
                       f"by {what}", figure)
    section.text(f"{is_cold.sum()} cold and {len(ids) - is_cold.sum()} warm tracks.")
    return section


def common_tags(tags: dict[str, list[str]], ids: list[str], sources: list[str]) -> list[list]:
    """(tag, cold tracks, warm tracks whose top tags hold it) of the COMMON_TAGS tags most
    often among the top tags, most often first."""
    cold, warm = Counter(), Counter()
    for track, source in zip(ids, sources):
        (warm if source == "als" else cold).update(tags.get(track, ()))
    return [[tag, cold[tag], warm[tag]] for tag, _ in (cold + warm).most_common(COMMON_TAGS)]


def similar_section(files: RunFiles, names: Names, n_queries: int = 3, n: int = 5) -> Section:
    section = Section("Similar tracks")
    table = files.track_factors
    if table is None:
        return section
    ids, sources = table["track_id"].to_pylist(), table["source"].to_pylist()
    tags = files.track_tags

    def shown(track: str) -> str:
        return ", ".join(tags[track]) if track in tags else "not heard"

    if tags:
        section.text("Every track's top tags come from the pretrained taggers (musicnn, MTT "
                     "and MSD), which heard its audio; its factors played no part. The tags "
                     "most often among them:")
        section.table(["tag", "cold tracks", "warm tracks"], common_tags(tags, ids, sources))
    x = unit_rows(factor_matrix(table))
    is_warm = np.array([s != "audio" for s in sources])  # with plays, as jobs.query's "warm"
    cold = np.flatnonzero(~is_warm)[:n_queries]
    if not len(cold):
        section.text("No cold track in this run.")
    else:
        section.text("Each cold track's nearest warm tracks by cosine of the factors, as "
                     "`python -m jobs.query similar` answers by default: the tracks a listener "
                     "already knows. Predicted factors of cold tracks crowd together (they come "
                     "from one model), so their cold neighbours are listed apart.")
    for i in cold:
        cosine = x @ x[i]
        cosine[i] = -np.inf
        warm = [j for j in np.argsort(-np.where(is_warm, cosine, -np.inf))[:n] if is_warm[j]]
        heard = f" (tags: {shown(ids[i])})" if tags else ""
        section.text(f"Nearest to {names(ids[i])}, a cold track{heard}:")
        section.table(["track", "from", "cosine"] + (["tags"] if tags else []),
                      [[names(ids[j]), sources[j], float(cosine[j])]
                       + ([shown(ids[j])] if tags else []) for j in warm])
        others = [j for j in np.argsort(-np.where(is_warm, -np.inf, cosine))[:3]
                  if not is_warm[j] and np.isfinite(cosine[j])]
        if others:
            section.text("Its nearest cold tracks: " + "; ".join(
                f"{names(ids[j])} ({cosine[j]:.3f})" for j in others) + ".")
    return section

