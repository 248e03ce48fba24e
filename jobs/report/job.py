"""Build and write a run's report, and print its one-screen summary."""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Sequence

import pyarrow.parquet as pq

from jobs.report import __doc__ as DOC
from jobs.report import gather, render, sections
from jobs.report.network import network_section
from schemas import cli, layout, storage

logger = logging.getLogger("jobs.report")


def key_figures(files: gather.RunFiles) -> dict[str, str]:
    """Output name (or, for outputs named by the run id alone, the task) -> its key
    figure, for the outputs the sections do not describe."""
    figures = {"PublishFactors": f"snapshot {files.published}"}
    written = []  # this run's spectrograms, and the tagger's input beside
    for params_dir, what in ((files.mels, "spectrograms"), (files.frontend_mels, "tagger inputs")):
        run = params_dir / files.run.name if params_dir else None
        if run is not None and run.is_dir():
            written.append(
                f"{sum(pq.read_metadata(p).num_rows for p in layout.mel_shard_files(run))} {what}, "
                f"{sum(pq.read_metadata(p).num_rows for p in layout.dead_letter_files(run))} "
                "dead letters")
    if written:
        figures["MelSpectrograms"] = "; ".join(written)
    for path in files.outputs.preflights():
        checks = json.loads(path.read_text())
        figures[path.name] = f"{sum(c['ok'] for c in checks)} of {len(checks)} checks passed"
    if files.tags:
        figures[files.tags.name] = f"{len(files.track_tags)} tracks tagged"
    for path in files.outputs.audiences():
        figures[path.name] = f"{pq.read_metadata(path).num_rows} (track, user) rows"
    for path in files.outputs.indexes():
        manifest = path / layout.INDEX_MANIFEST
        if manifest.exists():
            figures[path.name] = f"{json.loads(manifest.read_text())['tracks']} tracks indexed"
    return figures


def stage_label(task: str, output: str) -> str:
    """A stage by its task, the evaluation's own (trained without the held-out tracks'
    plays) marked as such: otherwise they read like the chain's."""
    return f"{task} (evaluation)" if "heldout" in output else task


def stages_section(files: gather.RunFiles, figures: dict[str, str]) -> tuple[render.Section, list]:
    section = render.Section("Stages")
    rows = [[stage_label(s["task"], s["output"]), s["output"], round(s["seconds"], 1),
             figures.get(s["output"]) or figures.get(s["task"], "")]
            for s in sections.stage_seconds(files)]
    if rows:
        section.table(["stage", "output", "seconds", "key figure"], rows)
    else:
        section.text("No stage of this run was timed (they were made by an earlier run, "
                     "or by hand).")
    return section, rows


def summary(rows: list, report: Path, evaluation: dict | None = None) -> str:
    """The one-screen summary: each stage, its time and key figure, the evaluation's
    table (where the run was evaluated) and the report."""
    lines = [f"{'stage':<26} {'seconds':>8}  key figure"]
    lines += [f"{task:<26} {seconds:>8.1f}  {figure}"[:110] for task, _, seconds, figure in rows]
    if evaluation:
        k = evaluation["k"]
        lines += ["", f"evaluation: {evaluation['heldout_tracks']} held-out tracks, "
                      f"{evaluation['users']} users",
                  f"{'method':<58} {'AUC':>6} {f'mAP@{k}':>8}"]
        lines += [f"{m['method'][:58]:<58} {m['auc']:>6.3f} {m[f'map@{k}']:>8.3f}"
                  for m in evaluation["methods"]]
    lines.append(f"report: {report / layout.REPORT_HTML}")
    return "\n".join(lines)


def build(run: Path, catalogue: Path | None = None, plays: Path | None = None,
          labels: Sequence[tuple[Path, str]] = (), out: Path | None = None) -> Path:
    files = gather.find(run, catalogue, plays)
    evaluation = json.loads(files.evaluation.read_text()) if files.evaluation else None
    labelled = sections.labels_of(files, labels)
    names = sections.Names(files.catalogue, [label_of for _, label_of in labelled] if labels else ())
    figures = key_figures(files)
    makers = [lambda: sections.data_section(files, figures),
              lambda: sections.als_section(files, evaluation, figures),
              lambda: sections.training_section(files, figures),
              lambda: sections.evaluation_section(evaluation, files, figures),
              lambda: sections.map_section(files, labelled),
              lambda: sections.similar_section(files, names),
              lambda: network_section(files, names)]
    progress = cli.Progress(logger, "report sections", len(makers), every_s=0.0)
    parts = []
    for make in makers:  # the map and the network's filters take minutes on a big run
        parts.append(make())
        progress.add()
    stages, rows = stages_section(files, figures)
    out = out or run / layout.REPORT
    shutil.rmtree(out, ignore_errors=True)  # a rebuild replaces the report
    with storage.atomic_dir(out) as tmp:
        render.write(tmp, f"Run {run.name}", [stages] + parts)
    rows.append(["report (this job)", layout.REPORT, round(time.monotonic() - progress.started, 1),
                 f"{len(parts) + 1} sections"])
    print(summary(rows, out, evaluation), flush=True)
    return out


def parse_labels(text: str) -> tuple[Path, str]:
    path, _, column = text.rpartition(":")
    if not path or not column:
        raise argparse.ArgumentTypeError(f"{text!r}: give FILE:COLUMN")
    return Path(path), column


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.report", description=DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="the run's directory")
    parser.add_argument("--catalogue", type=Path, help="catalogue Parquet (schemas.CATALOGUE)")
    parser.add_argument("--plays", type=Path, help="plays Parquet (schemas.PLAYS)")
    parser.add_argument("--labels", type=parse_labels, action="append", default=[],
                        help="FILE:COLUMN, a Parquet table with track_id whose COLUMN colours a "
                             "map of the factors (repeat for one map per column); default: "
                             "the catalogue's artist")
    parser.add_argument("--out", type=Path, help="the report's directory (default RUN/report)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    args = parse_args(argv)
    return cli.run_job(lambda: build(args.run, args.catalogue, args.plays, args.labels, args.out) and None,
                       logger, FileNotFoundError, ValueError)
