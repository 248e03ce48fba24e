"""Check the environment and the inputs before a long run, in seconds.

    python -m jobs.doctor [--catalogue catalogue.parquet] [--plays plays.parquet]

Prints a table of what is present and what is wrong, and exits 1 when anything is
wrong (0 otherwise, 2 on bad usage). It checks that Java is recent enough for Spark,
that Spark and Beam import, that torch and torchaudio load together and compute a
spectrogram, that PyAV's FFmpeg decodes the formats the pipeline reads, and that
the catalogue and the plays exist and have the columns their readers need (only
the files' footers or first lines are read). The workflow runs it before any
expensive stage (the Preflight task) and keeps its report as JSON.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

import schemas
from schemas import cli, inputs, storage
from schemas.config import InputOptions, MelParams
from schemas.inputs import PlaysInputError, plays_format

logger = logging.getLogger(__name__)

# pyspark 4 runs on Java 17 and later.
MIN_JAVA = 17


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, whether it is fine, and what was found."""
    name: str
    ok: bool
    detail: str


def java_major(version: str) -> int:
    """17 of "17.0.15", 8 of "1.8.0_392", 21 of "21"."""
    parts = [int(part) for part in re.findall(r"\d+", version)[:2]]
    return parts[1] if parts[0] == 1 and len(parts) > 1 else parts[0]


def check_java() -> Check:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        return Check("java", False, f"no java found ({'JAVA_HOME=' + home if home else 'PATH'}); "
                                    f"Spark needs Java {MIN_JAVA} or later")
    result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    found = re.search(r'version "([^"]+)"', result.stderr + result.stdout)
    if result.returncode != 0 or not found:
        return Check("java", False, f"{java} -version failed: {result.stderr.strip()[:200]}")
    major = java_major(found.group(1))
    return Check("java", major >= MIN_JAVA,
                 f"{found.group(1)} ({java})" + ("" if major >= MIN_JAVA else
                                                 f"; Spark needs Java {MIN_JAVA} or later"))


def check_import(name: str) -> Check:
    try:
        module = importlib.import_module(name)
    except Exception as err:
        return Check(name, False, f"does not import: {type(err).__name__}: {err}")
    return Check(name, True, getattr(module, "__version__", "imported"))


def check_spectrogram() -> Check:
    """torch and torchaudio load together and compute a log-mel spectrogram."""
    from jobs.spectrograms.mel import log_mel

    name = "torch + torchaudio"
    try:
        mel = log_mel(np.zeros(22050, np.float32), MelParams())
        import torch
        import torchaudio
    except Exception as err:
        return Check(name, False, f"{type(err).__name__}: {err}")
    return Check(name, True, f"torch {torch.__version__}, torchaudio {torchaudio.__version__}; "
                             f"a spectrogram of shape {mel.shape}")


def check_decoders() -> Check:
    import av

    from jobs.spectrograms.decode import CLAIMED_DECODERS, missing_decoders

    missing = missing_decoders()
    return Check("PyAV decoders", not missing,
                 f"PyAV {av.__version__}: " + (f"lacks {', '.join(missing)}" if missing
                                               else ", ".join(CLAIMED_DECODERS)))


def parquet_columns(path: Path) -> list[str]:
    """Column names from the footer of a Parquet file, or of the first file of a directory."""
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise ValueError("a directory without .parquet files")
        path = files[0]
    return pq.read_schema(path).names


def check_catalogue(path: Path) -> Check:
    name = f"catalogue {path}"
    if not path.exists():
        return Check(name, False, "does not exist")
    try:
        names = parquet_columns(path)
    except Exception as err:
        return Check(name, False, f"is not readable Parquet: {err}")
    missing = [column for column in schemas.CATALOGUE.names if column not in names]
    if missing:
        return Check(name, False, f"lacks columns {missing} (has {names})")
    repeated = duplicate_ids(path)
    if repeated:
        shown = ", ".join(repr(track) for track in repeated[:5])
        return Check(name, False, f"{len(repeated)} track ids appear more than once, e.g. "
                                  f"{shown}: each would take another track's audio")
    return Check(name, True, f"columns {schemas.CATALOGUE.names}, track ids unique")


def duplicate_ids(path: Path) -> list[str]:
    """Track ids listed more than once in the catalogue at ``path``, sorted."""
    ids = pq.read_table(path, columns=["track_id"]).column("track_id")
    counts = pc.value_counts(ids)
    return sorted(str(value) for value, count in zip(counts.field("values").to_pylist(),
                                                      counts.field("counts").to_pylist())
                  if count > 1)


def first_line(path: Path) -> str:
    """The first line of a text file, or of the first visible file of a directory."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(("_", ".")))
        if not files:
            raise ValueError("an empty directory")
        path = files[0]
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.readline().rstrip("\r\n")


def check_plays(path: Path, fmt: str, columns: Sequence[str], delimiter: str) -> Check:
    """The plays exist and have the user, track and plays columns (``columns``)."""
    name = f"plays {path}"
    if not path.exists():
        return Check(name, False, "does not exist")
    try:
        fmt = plays_format(str(path), fmt)
        if fmt == "parquet":
            names = parquet_columns(path)
        elif fmt == "csv":
            names = first_line(path).split(delimiter)
        else:
            fields = first_line(path).split("\t")
            return Check(name, len(fields) == 3, f"triplets: first line has {len(fields)} "
                         "tab-separated fields" + ("" if len(fields) == 3 else ", not 3"))
    except (OSError, ValueError, PlaysInputError) as err:
        return Check(name, False, f"cannot read as {fmt}: {err}")
    missing = [column for column in columns if column not in names]
    return Check(name, not missing, f"{fmt} lacks columns {missing} (has {names})" if missing
                 else f"{fmt}, columns {list(columns)}")


def played_track_ids(path: Path, fmt: str, track_column: str, delimiter: str) -> pa.Array:
    """The track id of every play row (only that column is read)."""
    fmt = plays_format(str(path), fmt)
    if fmt == "parquet":
        return ds.dataset(path, format="parquet").to_table(columns=[track_column]).column(0)
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.is_file() and not p.name.startswith(("_", ".")))
    # One thread: the reader calls back into Python for bad rows, and a failed read must
    # leave no reader thread behind at exit.
    if fmt == "csv":
        options = dict(read_options=pcsv.ReadOptions(use_threads=False),
                       parse_options=pcsv.ParseOptions(delimiter=delimiter,
                                                       invalid_row_handler=lambda row: "skip"),
                       convert_options=pcsv.ConvertOptions(include_columns=[track_column],
                                                           column_types={track_column: pa.string()}))
    else:
        options = dict(read_options=pcsv.ReadOptions(column_names=list(schemas.PLAYS.names),
                                                     use_threads=False),
                       parse_options=pcsv.ParseOptions(delimiter="\t",
                                                       invalid_row_handler=lambda row: "skip"),
                       convert_options=pcsv.ConvertOptions(include_columns=["track_id"],
                                                           column_types={"track_id": pa.string()}))
    return pa.chunked_array([pcsv.read_csv(file, **options).column(0) for file in files],
                            pa.string())


def check_overlap(catalogue: Path, plays: Path, fmt: str, track_column: str,
                  delimiter: str) -> Check:
    """How many play rows name tracks the catalogue lists: none is an error (the two
    files are not of one service); some outside is a warning (they get no factors)."""
    name = "plays vs catalogue"
    try:
        played = played_track_ids(plays, fmt, track_column, delimiter)
        listed = pq.read_table(catalogue, columns=["track_id"]).column("track_id")
    except (OSError, ValueError, PlaysInputError, pa.ArrowException) as err:
        return Check(name, False, f"cannot compare: {err}")
    inside = pc.sum(pc.is_in(played, value_set=listed)).as_py() or 0
    if inside == 0:
        return Check(name, False, f"no play of {plays} names a track of the catalogue "
                                  f"{catalogue}: are they from the same service?")
    outside = len(played) - inside
    return Check(name, True, f"{outside} of {len(played)} play rows name tracks the catalogue "
                             "does not list; they get no served factors" if outside
                 else f"all {len(played)} play rows name catalogue tracks")


def run_checks(catalogue: Path | None = None, plays: Path | None = None,
               fmt: str = "auto", plays_columns: Sequence[str] = schemas.PLAYS.names,
               delimiter: str = ",") -> list[Check]:
    checks: list[Callable[[], Check]] = [
        check_java, lambda: check_import("pyspark"), lambda: check_import("apache_beam"),
        check_spectrogram, check_decoders]
    if catalogue is not None:
        checks.append(lambda: check_catalogue(catalogue))
    if plays is not None:
        checks.append(lambda: check_plays(plays, fmt, plays_columns, delimiter))
    if catalogue is not None and plays is not None:
        checks.append(lambda: check_overlap(catalogue, plays, fmt, plays_columns[1], delimiter))
    return [Check("python", True, f"{sys.version.split()[0]} ({sys.executable})")] + [
        check() for check in checks]


def table(checks: Sequence[Check]) -> str:
    width = max(len(check.name) for check in checks)
    return "\n".join(f"{check.name:<{width}}  {'ok' if check.ok else 'WRONG':<5}  {check.detail}"
                     for check in checks)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.doctor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalogue", type=Path, help="catalogue Parquet file or directory")
    parser.add_argument("--plays", type=Path,
                        help="play counts: Parquet, CSV or triplets, a file or a directory")
    # How ALS will read the plays; the doctor has no rows to quarantine.
    cli.add_settings(parser, InputOptions, skip=("max_bad_fraction",))
    parser.add_argument("--report", type=Path, help="also write the checks here as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    cli.setup_logging()
    args = parse_args(argv)
    checks = run_checks(args.catalogue, args.plays, args.plays_format,
                        [args.user_column, args.track_column, args.plays_column],
                        inputs.delimiter(args.delimiter))
    print(table(checks), flush=True)
    wrong = [check for check in checks if not check.ok]
    if args.report is not None:
        storage.write_text(args.report, json.dumps([asdict(check) for check in checks], indent=2))
    if wrong:  # the first is what to mend first; the table above lists the others
        others = f" (and {len(wrong) - 1} more wrong above)" if len(wrong) > 1 else ""
        cli.record_failure(logger, f"{wrong[0].name}: {wrong[0].detail}{others}")
        return cli.FAILED
    return cli.OK


if __name__ == "__main__":
    sys.exit(main())
