"""Where every file lives on disk: stages write here, readers and tasks look here.

    <data root>/
        catalogue.parquet, plays.parquet     the user's inputs (or [paths] in luigi.cfg)
        demo/                                DemoFiles: the built-in demo data
        mels/<params hash>/<run id>/         mels-*.parquet, dead_letters-*.parquet (the
                                             tagger's input too, under its own hash)
        runs/<run id>/<stage>-<fp>...        RunOutputs: one run's outputs (als, model, ...)
        published/<run id>/, latest          the published snapshots (jobs/publish.py)

Directories starting with "." are work in progress (see schemas.storage) and are
never read as outputs.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from schemas.config import MelParams

PARQUET = ".parquet"

# A run's name: one plain path component, so that it cannot lead out of its parent
# (no slashes, no leading dot, so no "..").
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_run_id(run_id: str) -> str:
    """``run_id`` itself; ValueError when it is not one plain path component."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise ValueError(f"run_id {run_id!r} must be letters, digits, '_', '-' and '.', "
                         "starting with a letter or digit")
    return run_id


# -- Spectrograms ---------------------------------------------------------------------

MELS_PREFIX = "mels"
DEAD_LETTERS_PREFIX = "dead_letters"
MEL_SHARD_GLOB = f"[!.]*/{MELS_PREFIX}-*{PARQUET}"
# Runs set aside under <run_id>.<state>-<time>: rejected (too many failures) or
# pending (the job stopped between finishing and deciding).
SET_ASIDE = re.compile(r"\.(pending|rejected)-\d{8}T\d{6}$")


def params_dir(mels_root: str | os.PathLike, params: MelParams) -> Path:
    """Directory holding every spectrogram run made with ``params``."""
    return Path(mels_root) / params.params_hash()


def params_lock(mels_root: str | os.PathLike, params: MelParams) -> Path:
    """The lock runs with ``params`` take turns on (beside their directory)."""
    return Path(mels_root) / f".{params.params_hash()}.lock"


def run_dir(mels_root: str | os.PathLike, params: MelParams, run_id: str) -> Path:
    """Directory of one finished spectrogram run: <mels root>/<params hash>/<run id>."""
    return params_dir(mels_root, params) / check_run_id(run_id)


def mel_shards(params_dir: str | os.PathLike) -> list[Path]:
    """Every mels-*.parquet of the finished runs under ``params_dir``, sorted.

    Runs still being written (hidden directories) never match; a run that had
    nothing new to do holds a shard without rows.
    """
    return sorted(Path(params_dir).glob(MEL_SHARD_GLOB))


def mel_shard_files(run_dir: str | os.PathLike) -> list[Path]:
    """The mels-*.parquet of one spectrogram run, sorted."""
    return sorted(Path(run_dir).glob(f"{MELS_PREFIX}-*{PARQUET}"))


def heard_file(shard: str | os.PathLike, taggers: str) -> Path:
    """What the pretrained taggers of version ``taggers`` heard in a tagger-input shard
    (model/frontend.py): beside the shard, in a hidden folder of its run, so that it
    goes when the run goes and no shard listing sees it."""
    shard = Path(shard)
    return shard.parent / f".heard-{taggers}" / shard.name


def statistics_file(shard: str | os.PathLike, version: str) -> Path:
    """The taste classifier's statistics (version ``version``) of every track of a
    spectrogram shard (model/taste.py), kept beside it as heard_file keeps the taggers'."""
    shard = Path(shard)
    return shard.parent / f".statistics-{version}" / shard.name


def dead_letter_files(run_dir: str | os.PathLike) -> list[Path]:
    return sorted(Path(run_dir).glob(f"{DEAD_LETTERS_PREFIX}-*{PARQUET}"))


def dead_letter_history(params_dir: str | os.PathLike) -> Path:
    """The table of every track still failing under ``params_dir`` (DEAD_LETTER_HISTORY)."""
    return Path(params_dir) / f"{DEAD_LETTERS_PREFIX}{PARQUET}"


def final_dead_letter_files(params_dir: str | os.PathLike) -> list[Path]:
    """Dead letters of the published runs under ``params_dir``: failures taken as final.

    Runs set aside as rejected or pending, and runs still being written, are left out.
    """
    runs = [path for path in sorted(Path(params_dir).glob("[!.]*"))
            if path.is_dir() and not SET_ASIDE.search(path.name)]
    return [path for run in runs for path in dead_letter_files(run)]


# -- ALS output directory (tables written by jobs/als/job.py) ----------------------------

USER_FACTORS = "user_factors"
ITEM_FACTORS = "item_factors"
USER_IDS = "user_ids"
TRACK_IDS = "track_ids"
QUARANTINE = "quarantine"
HELDOUT_PLAYS = "heldout_plays"  # only with a track hold-out: every play of those tracks
TRACK_PLAYS = "track_plays"  # listeners and plays of every track learned from
SPARSE_PLAYS = "sparse_plays"  # every play of the semi-cold tracks (few listeners)
USER_DIGESTS = "user_digests"  # a refit's plays per user and per track (jobs/als/foldin.py)
TRACK_DIGESTS = "track_digests"

# -- Scoring output directory (jobs/score.py) -------------------------------------------

PREDICTED_FACTORS = f"predicted_factors{PARQUET}"
TRACK_FACTORS = f"track_factors{PARQUET}"
UNSCORED = f"unscored{PARQUET}"
UNLISTED = f"unlisted{PARQUET}"


# -- Published snapshots (jobs/publish.py) ----------------------------------------------

SNAPSHOT_USERS = f"user_factors{PARQUET}"
# the same users' factors as one float32 NumPy matrix, in the table's row order: a query
# that scores every user reads it in large slices instead of decoding Parquet
SNAPSHOT_USER_MATRIX = "user_factors.npy"
SNAPSHOT_PLAYED = "played"  # who played what, by row numbers (schemas/played.py)
SNAPSHOT_TRACKS = f"track_factors{PARQUET}"
SNAPSHOT_MANIFEST = "snapshot.json"
SNAPSHOT_CATALOGUE = f"catalogue{PARQUET}"  # title and artist of every track of the snapshot
AUDIENCE_NAME = "audience"  # the audience table (jobs/audience.py), in a run and a snapshot
AUDIENCE = f"{AUDIENCE_NAME}{PARQUET}"
TAGS = "tags"  # every track's top tags from the pretrained taggers (jobs/tags.py), in a run
INDEX = "similar"  # the similar-track index directory (jobs/index.py), in a run and a snapshot
INDEX_FILE = "tracks.voy"  # an index of one shard; of several, index_shard() names them
INDEX_IDS = f"track_ids{PARQUET}"  # row i: the track of index id i
INDEX_MANIFEST = "index.json"


def index_shard(number: int, count: int) -> str:
    """The file of shard ``number`` of an index of ``count`` shards."""
    return INDEX_FILE if count == 1 else f"tracks-{number:05d}-of-{count:05d}.voy"

# In a run's directory: one JSON line per stage the run ran (task, output, seconds),
# appended by the workflow; and the run's report (jobs/report): index.html and report.md
# under report/ (by hand) or report-<fingerprint>/ (by the workflow).
STAGE_LOG = "stages.jsonl"
REPORT = "report"
REPORT_HTML = "index.html"
REPORT_MARKDOWN = "report.md"

# The rest of a run's outputs, each named <name>-<fingerprint><suffix> (RunOutputs).
PREFLIGHT = "preflight"
ALS = "als"
HELDOUT_ALS = "als-heldout"  # the evaluation's ALS, without the held-out tracks' plays
MODEL = "model"
CHOSEN_MODEL = "model-chosen"
FACTORS = "factors"
EVALUATION = "evaluation"
JSON = ".json"
MODEL_FILE = ".pt"


def data_root() -> Path:
    """The pipeline's data root: COLDSTART_DATA_ROOT, default ./data."""
    return Path(os.environ.get("COLDSTART_DATA_ROOT", "data")).resolve()


def newest(paths: Iterable[Path]) -> Path | None:
    """The most recently modified of ``paths``, or None when there are none."""
    found = sorted(paths, key=lambda path: path.stat().st_mtime)
    return found[-1] if found else None


def snapshot_dir(published: str | os.PathLike, run_id: str) -> Path:
    """One night's published snapshot: <published>/<run id>."""
    return Path(published) / check_run_id(run_id)


def latest(published: str | os.PathLike) -> Path:
    """The link consumers read: always the newest complete snapshot."""
    return Path(published) / "latest"


@dataclass(frozen=True)
class DemoFiles:
    """The demo data's files under ``root`` (jobs/demo_catalogue.py writes them)."""
    root: Path

    @property
    def catalogue(self) -> Path:
        return self.root / f"catalogue{PARQUET}"

    @property
    def plays(self) -> Path:
        return self.root / f"plays{PARQUET}"

    @property
    def heldout_plays(self) -> Path:
        return self.root / f"heldout_plays{PARQUET}"

    @property
    def truth(self) -> Path:
        return self.root / f"truth{PARQUET}"

    @property
    def audio(self) -> Path:
        return self.root / "audio"


@dataclass(frozen=True)
class DataRoot:
    """The pipeline's data root and what lives in it."""
    path: Path

    @property
    def catalogue(self) -> Path:
        return self.path / f"catalogue{PARQUET}"

    @property
    def plays(self) -> Path:
        return self.path / f"plays{PARQUET}"

    @property
    def demo(self) -> DemoFiles:
        return DemoFiles(self.path / "demo")

    @property
    def mels(self) -> Path:
        return self.path / "mels"

    @property
    def published(self) -> Path:
        return self.path / "published"

    @property
    def runs(self) -> Path:
        """runs/: one directory per pipeline run."""
        return self.path / "runs"

    def run(self, run_id: str) -> Path:
        """runs/<run id>: every output of one pipeline run."""
        return self.runs / check_run_id(run_id)

    def outputs(self, run_id: str) -> RunOutputs:
        """The outputs of one pipeline run, by name."""
        return RunOutputs(self.run(run_id))

    def outputs_named(self, name: str) -> list[Path]:
        """Every run's output called ``name`` (runs/*/<name>): the same fingerprint."""
        return list(self.runs.glob(f"*/{name}"))

    def every_als(self) -> list[Path]:
        """Every run's ALS output (runs/*/als-<fingerprint>), the evaluation's aside."""
        return list(self.runs.glob(f"*/{ALS}-[0-9a-f]*"))


@dataclass(frozen=True)
class RunOutputs:
    """runs/<run id>/: one run's outputs, each named by its stage and the fingerprint of
    what it depends on (workflows/fingerprints.py), so that a run finds an output
    another run computed, and the run report finds them whatever their fingerprints."""
    path: Path

    @property
    def data_root(self) -> DataRoot:
        """The data root holding this run (<data root>/runs/<run id>)."""
        return DataRoot(self.path.parent.parent)

    @property
    def stage_log(self) -> Path:
        return self.path / STAGE_LOG

    def output(self, name: str, fingerprint: str, suffix: str = "") -> Path:
        return self.path / f"{name}-{fingerprint}{suffix}"

    def preflight(self, fingerprint: str) -> Path:
        return self.output(PREFLIGHT, fingerprint, JSON)

    def als(self, fingerprint: str, heldout: bool = False) -> Path:
        return self.output(HELDOUT_ALS if heldout else ALS, fingerprint)

    def model(self, fingerprint: str, arch: str, loss: str, metadata: bool = False,
              heldout: bool = False) -> Path:
        """A trained CNN: model-[heldout-]<arch>-<loss>[-meta]-<fingerprint>.pt."""
        name = (f"{MODEL}-{'heldout-' if heldout else ''}{arch}-{loss}"
                f"{'-meta' if metadata else ''}")
        return self.output(name, fingerprint, MODEL_FILE)

    def chosen_model(self, fingerprint: str) -> Path:
        return self.output(CHOSEN_MODEL, fingerprint, MODEL_FILE)

    def factors(self, fingerprint: str) -> Path:
        return self.output(FACTORS, fingerprint)

    def evaluation(self, fingerprint: str) -> Path:
        return self.output(EVALUATION, fingerprint, JSON)

    def audience(self, fingerprint: str) -> Path:
        return self.output(AUDIENCE_NAME, fingerprint, PARQUET)

    def tags(self, fingerprint: str) -> Path:
        return self.output(TAGS, fingerprint, PARQUET)

    def index(self, fingerprint: str) -> Path:
        return self.output(INDEX, fingerprint)

    def report(self, fingerprint: str) -> Path:
        return self.output(REPORT, fingerprint)

    # Found again whatever their fingerprints (the run report reads them).

    def newest_als(self, heldout: bool = False) -> Path | None:
        # A fingerprint is hex, so als-[0-9a-f]* never matches als-heldout-*.
        return newest(self.path.glob(f"{HELDOUT_ALS}-*" if heldout else f"{ALS}-[0-9a-f]*"))

    def newest_chosen_model(self) -> Path | None:
        return newest(self.path.glob(f"{CHOSEN_MODEL}-*{MODEL_FILE}"))

    def newest_factors(self) -> Path | None:
        return newest(self.path.glob(f"{FACTORS}-*"))

    def newest_evaluation(self) -> Path | None:
        return newest(self.path.glob(f"{EVALUATION}-*{JSON}"))

    def newest_tags(self) -> Path | None:
        return newest(self.path.glob(f"{TAGS}-*{PARQUET}"))

    def trained_models(self) -> list[Path]:
        """Every CNN the run trained, the evaluation's included; not the chosen model."""
        return sorted(path for path in self.path.glob(f"{MODEL}-*{MODEL_FILE}")
                      if not path.name.startswith(f"{CHOSEN_MODEL}-"))

    def preflights(self) -> list[Path]:
        return list(self.path.glob(f"{PREFLIGHT}-*{JSON}"))

    def audiences(self) -> list[Path]:
        return list(self.path.glob(f"{AUDIENCE_NAME}-*{PARQUET}"))

    def indexes(self) -> list[Path]:
        return list(self.path.glob(f"{INDEX}-*"))


def model_companions(model: str | os.PathLike) -> tuple[Path, Path]:
    """(snapshot file, TensorBoard directory) kept beside a model file."""
    model = Path(model)
    return model.with_suffix(".snapshot"), model.with_suffix(".tensorboard")
