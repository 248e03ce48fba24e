"""Every stage's settings and their defaults, stated once.

Each field carries its help text (``setting``): the jobs derive their flags from the
fields (schemas.cli.add_settings) and the Luigi tasks their parameters
(workflows.settings), so a setting is one field here; luigi.cfg and deploy/ only
override. Plain Python: importing this module loads no engine.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from schemas.inputs import FORMATS


def setting(default: Any, help: str, *, choices: Sequence[Any] | None = None,
            significant: bool = True, name: str | None = None) -> Any:
    """A config field with what its flag and its task parameter say: ``help``, the
    allowed ``choices``, whether it changes results (``significant``; outputs are
    fingerprinted by the significant ones) and ``name``, when command lines and
    luigi.cfg call it something other than the field."""
    return dataclasses.field(default=default, metadata={
        "help": help, "choices": tuple(choices) if choices else None,
        "significant": significant, "name": name})

# -- ALS (jobs/als/) ---------------------------------------------------------------------

@dataclass(frozen=True)
class AlsParams:
    """Hyper-parameters of the factorisation; all of them change the result.

    ``blocks`` (user and item blocks of Spark's ALS) also fixes the random
    initialisation; None means one block per core (Spark's default parallelism),
    and the number used is recorded with the factors.
    """
    rank: int = setting(32, "number of latent factors")
    reg: float = setting(0.1, "L2 regularisation per play: row u is regularised by reg * n_u, "
                              "its number of plays (Spark's ALS-WR)")
    alpha: float = setting(10.0, "confidence scale alpha in c = 1 + alpha*log(1 + r/eps)")
    eps: float = setting(1.0, "play-count scale eps in the confidence")
    iterations: int = setting(15, "ALS sweeps")
    seed: int = setting(42, "random seed of the factor initialisation")
    checkpoint_interval: int = setting(
        5, "iterations between RDD checkpoints, which keep lineage short")
    blocks: int | None = setting(
        None, "user and item blocks of Spark's ALS; they also fix the random initialisation, "
              "so pin them to reproduce factors on another cluster (none: one per core, "
              "Spark's default parallelism)")


STORAGE_LEVELS = ("MEMORY_ONLY", "MEMORY_ONLY_SER", "MEMORY_AND_DISK", "MEMORY_AND_DISK_SER",
                  "DISK_ONLY")


@dataclass(frozen=True)
class AlsTuning:
    """Settings that change speed and memory use, never the factors."""
    intermediate_storage: str = setting(
        "MEMORY_AND_DISK", "storage level of ALS's blocks during the iterations",
        choices=STORAGE_LEVELS, significant=False)
    final_storage: str = setting("MEMORY_AND_DISK", "storage level of the final factors",
                                 choices=STORAGE_LEVELS, significant=False)
    cache_ratings: bool = setting(True, "cache the indexed ratings before the fit",
                                  significant=False)


@dataclass(frozen=True)
class FoldInConfig:
    """When a night refits ALS in full. The nights between keep the last refit's factor
    space (and the network that learned it): its item factors stay, the users and
    tracks whose plays changed are solved against them (jobs/als/foldin.py)."""
    refit_every: int = setting(
        7, "nights from one full ALS refit to the next, the refit's own included; the nights "
           "between fold their plays into its factor space (1: a full refit every night)",
        significant=False)
    max_new_share: float = setting(
        0.1, "refit early when more than this share of tonight's plays (by count) is new, "
             "or gone, since the last refit", significant=False)


@dataclass(frozen=True)
class InputOptions:
    """How to read and validate the play-count table.

    The column names apply to Parquet and CSV; triplets are positional. None of these
    change what is computed from the plays read.
    """
    format: str = setting(
        "auto", "input format; auto: by extension (.parquet/.pq, .csv, .tsv/.txt/.triplets, "
                "optionally compressed), Parquet when there is none. CSV needs a header line; "
                "triplets are the MSD Taste Profile's user<TAB>song<TAB>count, no header",
        choices=("auto", *FORMATS), significant=False, name="plays_format")
    user_column: str = setting("user_id", "user id column of Parquet/CSV input",
                               significant=False)
    track_column: str = setting("track_id", "track id column of Parquet/CSV input",
                                significant=False)
    plays_column: str = setting("plays", "play count column of Parquet/CSV input",
                                significant=False)
    delimiter: str = setting(",", "field delimiter of CSV input; \\t for tab",
                             significant=False)
    max_bad_fraction: float = setting(
        0.01, "fail when more than this fraction of input rows cannot be used",
        significant=False)


# -- Spectrograms (jobs/spectrograms) ---------------------------------------------------

# How a track shorter than the excerpt is brought to full length:
# "zeros" appends silence, "wrap" loops the audio, "none" keeps it short
# (its spectrogram then has fewer frames), "reject" refuses it (DecodeError).
PAD_MODES = ("zeros", "wrap", "none", "reject")

# How spectrogram values are stored. float16 halves what training reads for a loss of
# at most 0.004 (mean 0.0006) on log-mel values that span about -14..11, a few ten
# thousandths of their spread (benchmarks/mel_reader.py).
MEL_DTYPES = ("float16", "float32")

# Mel filterbanks: "htk", HTK's mel scale with triangles of peak 1 (torchaudio's default,
# the seeds' spectrograms); "slaney", Slaney's mel scale with triangles of unit area
# (librosa's default, what pretrained music taggers were trained on).
FILTERBANKS = ("htk", "slaney")
# How mel power becomes a spectrogram value: "log", log(power + log_offset); "log10_1p",
# log10(1 + LOG10_1P_SCALE * power), musicnn's compression.
COMPRESSIONS = ("log", "log10_1p")
LOG10_1P_SCALE = 10000.0

# The input of the pretrained tagger (musicnn: Pons and Serra 2019), fixed by the weights
# it was trained with: 16 kHz audio, a 512-sample STFT with a 256-sample hop, 96 Slaney mel
# bands of power, log10_1p. MelParams.frontend gives it for the main spectrograms.
MUSICNN_SAMPLE_RATE = 16000
MUSICNN_N_FFT = 512
MUSICNN_HOP_LENGTH = 256
MUSICNN_N_MELS = 96

# Settings that MelParams gained after spectrograms were first written: at their defaults
# they are left out of to_dict, so the parameter hashes (directory names), the parameters
# stored in shards and model files, and every fingerprint made from them stay as they were.
_ADDED_MEL_SETTINGS = ("filterbank", "compression")


@dataclass(frozen=True)
class MelParams:
    """Everything that determines a spectrogram's values."""

    sample_rate: int = setting(22050, "sample rate (Hz) audio is resampled to")
    n_fft: int = setting(1024, "STFT window length in samples")
    hop_length: int = setting(512, "STFT hop in samples (one spectrogram frame per hop)")
    n_mels: int = setting(128, "number of mel bands")
    # 30 s: three times the audio of 10 s, which on real music lifts the CNN's held-out
    # AUC by about 0.05 (benchmarks/real_music.py); a shorter track is looped to length.
    excerpt_s: float | None = setting(
        30.0, "seconds of audio taken from the middle of each track; 0 (or none) keeps whole "
              "tracks")
    log_offset: float = setting(1e-6, "spectrograms are log(mel power + offset) (compression "
                                      "log)")
    pad: str = setting(
        "wrap", "what happens to tracks shorter than the excerpt: zeros appends silence, wrap "
                "loops the audio, none keeps them short (fewer frames), reject sends them to "
                "the dead letters", choices=PAD_MODES)
    dtype: str = setting("float16", "how spectrogram values are stored: float16 halves what "
                                    "training reads", choices=MEL_DTYPES)
    filterbank: str = setting(
        "htk", "mel filterbank: htk (HTK's mel scale, triangles of peak 1) or slaney (Slaney's "
               "mel scale, triangles of unit area: librosa's default)", choices=FILTERBANKS)
    compression: str = setting(
        "log", "how mel power becomes a value: log, log(power + log offset); log10_1p, "
               f"log10(1 + {LOG10_1P_SCALE:g} power) as musicnn reads it", choices=COMPRESSIONS)

    def __post_init__(self) -> None:
        # Normalise types so that equal settings always hash equally (10 vs 10.0).
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels"):
            value = int(getattr(self, name))
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
            object.__setattr__(self, name, value)
        excerpt = float(self.excerpt_s) if self.excerpt_s else None
        if excerpt is not None and excerpt < 0:
            raise ValueError(f"excerpt_s must be >= 0, got {excerpt}")
        object.__setattr__(self, "excerpt_s", excerpt)
        offset = float(self.log_offset)
        if offset <= 0:
            raise ValueError(f"log_offset must be positive, got {offset}")
        object.__setattr__(self, "log_offset", offset)
        if self.pad not in PAD_MODES:
            raise ValueError(f"pad must be one of {PAD_MODES}, got {self.pad!r}")
        if self.dtype not in MEL_DTYPES:
            raise ValueError(f"dtype must be one of {MEL_DTYPES}, got {self.dtype!r}")
        if self.filterbank not in FILTERBANKS:
            raise ValueError(f"filterbank must be one of {FILTERBANKS}, got {self.filterbank!r}")
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, "
                             f"got {self.compression!r}")

    def to_dict(self) -> dict[str, Any]:
        """Every setting by name, but those MelParams gained later where they are at
        their defaults (see _ADDED_MEL_SETTINGS)."""
        values = dataclasses.asdict(self)
        defaults = {field.name: field.default for field in dataclasses.fields(self)}
        for name in _ADDED_MEL_SETTINGS:
            if values[name] == defaults[name]:
                del values[name]
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MelParams:
        """Inverse of :meth:`to_dict`; raises ValueError on unknown keys. Settings
        without a dtype were stored before it existed, as float32; the settings added
        later take their defaults."""
        unknown = set(values) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown mel parameters {sorted(unknown)}")
        return cls(**{"dtype": "float32", **values})

    def params_hash(self) -> str:
        """12 hex digits identifying these settings; part of every output path.

        float32 is hashed without its dtype, as before the dtype existed, so that
        spectrograms made then keep their directory."""
        values = self.to_dict()
        if values["dtype"] == "float32":
            del values["dtype"]
        payload = json.dumps(values, sort_keys=True).encode()
        return hashlib.sha1(payload).hexdigest()[:12]

    @property
    def excerpt_samples(self) -> int | None:
        """Length of the excerpt in samples, or None for whole tracks."""
        return round(self.excerpt_s * self.sample_rate) if self.excerpt_s else None

    def frontend(self) -> MelParams:
        """The pretrained tagger's input (musicnn's settings) made from the same excerpt of
        the same decoded audio as these spectrograms: their excerpt, padding and dtype."""
        return MelParams(sample_rate=MUSICNN_SAMPLE_RATE, n_fft=MUSICNN_N_FFT,
                         hop_length=MUSICNN_HOP_LENGTH, n_mels=MUSICNN_N_MELS,
                         filterbank="slaney", compression="log10_1p",
                         excerpt_s=self.excerpt_s, pad=self.pad, dtype=self.dtype)


@dataclass(frozen=True)
class SpectrogramOptions:
    """How the spectrogram job treats its inputs; none of these change a spectrogram.

    A shard never grows with the catalogue: it is closed at ``shard_mb``.
    """
    min_duration_s: float = setting(
        1.0, "tracks with less audio than this are dead letters ('too short')",
        significant=False)
    max_duration_s: float | None = setting(
        3 * 3600.0, "tracks longer than this many seconds are dead letters ('too long'), "
                    "whether the container says so or decoding finds it; 0 for no limit",
        significant=False)
    silence_dbfs: float = setting(
        -60.0, "tracks whose excerpt's loudest second stays below this RMS level, in dB "
               "relative to full scale, are dead letters ('silent'): digital silence is -inf, "
               "a hiss or hum left on a blank recording -70 to -90, quiet music -40 or above",
        significant=False)
    duration_tolerance: float = setting(
        0.05, "tracks whose file holds less audio than the catalogue's duration_s by more "
              "than this fraction of it (and more than a second) are dead letters "
              "('truncated'); catalogues without duration_s are not checked",
        significant=False)
    max_file_mb: float | None = setting(
        1024.0, "audio files larger than this many MiB are dead letters ('too large'); 0 for "
                "no limit", significant=False)
    decode_timeout_s: float = setting(
        120.0, "a track whose decoding and log-mel take longer is a dead letter",
        significant=False)
    isolate_decoding: bool = setting(
        True, "decode in child processes of each worker; without, decoding runs in the "
              "workers themselves, and a crash in FFmpeg kills the worker and the run",
        significant=False)
    decoders: int = setting(
        0, "child processes computing spectrograms in each worker; 0 for one per CPU. With a "
           "runner whose workers run several threads each (Dataflow, Flink), 1",
        significant=False)
    torch_threads: int = setting(
        1, "threads torch may use for the mel transform in each process computing "
           "spectrograms; 0 leaves torch's default (one per core)", significant=False)
    max_bad_fraction: float = setting(
        0.05, "fail (exit 1) when more than this fraction of the tracks processed become dead "
              "letters; outputs are kept", significant=False)
    retry_dead_letters: bool = setting(
        False, "retry now every track that a published earlier run sent to the dead letters "
               "with the same audio URI (otherwise each is retried after --retry-after-days, "
               "then after twice as long each time; tracks of rejected runs are always "
               "retried)", significant=False)
    retry_after_days: float = setting(
        1.0, "days before a track that failed is tried again; the wait doubles at each "
             "further failure", significant=False)
    row_group_mb: float = setting(
        32.0, "approximate size of a Parquet row group of spectrograms, in MiB (readers load "
              "one row group at a time)", significant=False)
    shard_mb: float = setting(
        256.0, "a shard of spectrograms is closed, and another begun, once it holds this many "
               "MiB (one row group more at most)", significant=False)
    frontend: bool = setting(
        True, "also write the pretrained tagger's input (musicnn's log-mels at 16 kHz) of every "
              "track, from the same decoded excerpt, under its own parameters' directory",
        significant=False)
    tracks_per_part: int = setting(
        10_000, "the catalogue is done in parts of about this many tracks, each published "
                "when done, so that a killed run keeps what it finished", significant=False)

    @property
    def max_bytes(self) -> int | None:
        """``max_file_mb`` in bytes; None (no limit) when it is None or not positive."""
        return int(self.max_file_mb * 2**20) if self.max_file_mb and self.max_file_mb > 0 else None

    @property
    def duration_limit_s(self) -> float | None:
        """``max_duration_s``; None (no limit) when it is None or not positive."""
        return self.max_duration_s if self.max_duration_s and self.max_duration_s > 0 else None

    @property
    def limits(self) -> dict:
        """The per-track limits, as decode_excerpt's keyword arguments."""
        return {"min_duration_s": self.min_duration_s, "max_bytes": self.max_bytes,
                "max_duration_s": self.duration_limit_s, "silence_dbfs": self.silence_dbfs,
                "duration_tolerance": self.duration_tolerance}

    @property
    def decoder_count(self) -> int:
        """Child processes per worker: ``decoders``, or one per CPU."""
        return self.decoders if self.decoders > 0 else (os.cpu_count() or 1)


# -- Training (model/train.py) ----------------------------------------------------------

# The networks and losses training offers; the first of each is the default.
# musicnn: the pretrained tagger fine-tuned (model/finetune.py), on the taggers' input.
ARCHS = ("dieleman2014", "vandenoord2013", "musicnn")
# wpe is the default: it ranked held-out real music at least as well as mse (0.729 against
# 0.710 AUC over 3 seeds with the taste classifier, 0.676 against 0.668 without) and more
# steadily across seeds (benchmarks/real_music.py), and the demo at least as well.
LOSSES = ("wpe", "mse", "cosine")
DEFAULT_ARCH, DEFAULT_LOSS = ARCHS[0], LOSSES[0]
# A model spec's architecture for the pretrained taggers with a fitted head
# (musicnn:ridge, musicnn:clusters; model/pretrained.py)
PRETRAINED_ARCH = "musicnn"
HEADS = ("ridge", "clusters")


@dataclass(frozen=True)
class NetworkChoice:
    """The network training builds and the loss it learns by."""
    arch: str = setting(DEFAULT_ARCH, "dieleman2014: 4 conv + global pooling; vandenoord2013: "
                                      "2 conv + 2 dense on 3 s windows, averaged; musicnn: the "
                                      "pretrained tagger fine-tuned (reads the taggers' input)",
                        choices=ARCHS)
    loss: str = setting(DEFAULT_LOSS, "mse on unit-normalised factors, cosine distance, or the "
                                      "weighted prediction error of WMF (paper eq. 5)",
                        choices=LOSSES)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings."""
    # A small catalogue gives a few dozen steps an epoch: a lower rate trained longer
    # beat 1e-3 for 40 epochs by 0.02-0.03 AUC on real music (benchmarks/real_music.py).
    epochs: int = setting(100, "maximum epochs")
    batch_size: int = setting(32, "examples per step and process")
    lr: float = setting(3e-4, "Adam learning rate")
    weight_decay: float = setting(1e-4, "L2 weight decay")
    # frames of hop 512 at 22050 Hz: 256 is about 6 s
    crop_frames: int = setting(256, "random time-crop length in frames, 0 for none")
    clips_per_track: int = setting(8, "random crops of each training track per epoch")
    val_fraction: float = setting(0.1, "fraction of tracks held out for validation")
    patience: int = setting(15, "epochs without validation improvement before stopping")
    warm_epochs: int = setting(10, "maximum epochs of a network warm-started from the last "
                                   "model (--init-from), which starts near its optimum; "
                                   "never more than epochs")
    seed: int = setting(0, "random seed")
    loader_workers: int = setting(0, "data-loader processes per rank", significant=False)
    min_spread: float = setting(
        0.05, "fail unless some epoch's validation predictions spread at least this much "
              "(1 - mean pairwise cosine): a model that predicts one direction for every "
              "track is refused")
    # The taste classifier averaged with the network (model/taste.py).
    taste_tracks: int = setting(20_000, "warm tracks the taste classifier averaged with the "
                                        "network is fitted on, 0 for none")
    taste_c: float = setting(0.1, "inverse L2 strength of the taste classifier")
    taste_bags: int = setting(8, "k-means clusterings the taste classifier (and the clusters "
                                 "head) averages, each with its own classifier")


@dataclass(frozen=True)
class HeadConfig:
    """The pretrained front end's head (model/pretrained.py, model/head.py)."""
    head: str = setting("clusters", "what learns the factors from the taggers' pooled features: "
                                 "ridge regression, or the taste classifier's clusters",
                        choices=HEADS)
    head_c: float = setting(0.1, "inverse L2 strength of the clusters head")
    folds: int = setting(5, "cross-validation folds of the warm tracks the head and the taste "
                            "classifier are also fitted without, for choosing to judge on every "
                            "warm track")


@dataclass(frozen=True)
class ChooseConfig:
    """The trained models that are combined or compete to be shipped, with the
    bag-of-words baseline (jobs/evaluate/choose.py): networks as architecture:loss (or
    architecture:loss:meta for one with a metadata branch), the pretrained taggers with
    a head as musicnn:clusters or musicnn:ridge.

    The default combines the taggers' clusters head and the network trained from scratch,
    each with the taste classifier (kept once). Chosen on half A of the real-music
    benchmark's packages: over its 3 seeds this ensemble ranked held-out tracks better
    than either alone; its figures on the other half are in the README."""
    candidates: tuple[str, ...] = setting(
        (f"{PRETRAINED_ARCH}:clusters", f"{DEFAULT_ARCH}:{DEFAULT_LOSS}"),
        "the trained models that are combined or compete with the baseline, as "
        "architecture:loss[:meta] or musicnn:clusters / musicnn:ridge")
    combine: bool = setting(
        True, "ship the ensemble of the trained candidates (their members averaged, one taste "
              "classifier), unless one candidate alone beats it by the margin")
    margin: float = setting(
        0.02, "AUC on the validation tracks by which a candidate must beat the incumbent (the "
              "ensemble, or else the best judged out of fold on every warm track) to be "
              "shipped instead")


# -- Evaluation (jobs/evaluate/, jobs/als/holdout.py) --------------------------------

@dataclass(frozen=True)
class BowConfig:
    n_mfcc: int = 13
    # the paper's size; small catalogues want far fewer words
    codebook: int = setting(4000, "k-means words of the bag-of-words baseline",
                            name="bow_codebook")
    pca_variance: float = 0.95
    frames_per_track: int = 200  # frames sampled per track to fit the codebook
    mlp_hidden: int = 1000  # the MLP head: one hidden layer of ReLUs
    mlp_l2: float = 1e-2
    mlp_epochs: int = 500
    seed: int = 0


@dataclass(frozen=True)
class EvaluateConfig:
    """The cold-start evaluation: mAP@``k`` and recall@``recall_k``, the CNNs to
    compare (architecture:loss[:meta]), how many warm tracks fit the bag-of-words baselines,
    and the seed."""
    k: int = setting(500, "cut-off of mAP@k")
    models: tuple[str, ...] = setting(
        ("dieleman2014:mse", "dieleman2014:cosine", "dieleman2014:wpe", "vandenoord2013:mse",
         "dieleman2014:wpe:meta", "musicnn:clusters"),
        "the CNNs to compare, as architecture:loss, or architecture:loss:meta with a metadata "
        "branch (late fusion)")
    bow_train_tracks: int = setting(5000, "warm tracks sampled to fit the baselines")
    seed: int = setting(0, "seed of the hold-out and the baselines")
    recall_k: int = setting(10, "cut-off of recall@k")
    neighbours: int = setting(5, "warm neighbours compared by artist (same_artist@n)")


@dataclass(frozen=True)
class TrackHoldout:
    """The evaluation's split (the paper's protocol): ``fraction`` of the warm tracks,
    stratified by artist and popularity, chosen by ``seed``, lose all their plays to
    the evaluation; ALS and the models are trained on the rest. 0 holds out nothing."""
    fraction: float = setting(
        0.2, "evaluation: the share of tracks whose plays are held out instead of learned "
             "from (stratified by the catalogue's artist, and by popularity); 0 for none",
        name="holdout")
    seed: int = setting(0, "seed of the track hold-out", name="holdout_seed")


# The production chain learns from every play; only the evaluation holds tracks out.
NO_HOLDOUT = TrackHoldout(fraction=0.0)


@dataclass(frozen=True)
class HoldoutOptions:
    """Which plays to hold out and how to score them.

    ``max_users`` evaluates a seeded sample of that many users (None: all); the
    scoring runs on the driver, so sample when there are millions of users.
    """
    fraction: float = setting(0.2, "fraction of each user's plays held out", name="holdout")
    k: int = setting(500, "cut-off of mAP@k and recall@k")
    seed: int = setting(0, "seed of the held-out selection and user sample", name="split_seed")
    max_users: int | None = setting(None, "score a seeded sample of this many users "
                                          "(none: all)")


# -- Tags (jobs/tags.py) -----------------------------------------------------------------

@dataclass(frozen=True)
class TagsConfig:
    """What the pretrained taggers say of each track (jobs/tags.py, model/frontend.py)."""
    top_tags: int = setting(5, "tags kept per track, the most probable over both taggers "
                               "first")


# -- Publishing (jobs/publish.py) --------------------------------------------------------

@dataclass(frozen=True)
class PublishConfig:
    """How many published snapshots (nights) are kept; older ones, and their runs'
    outputs, are removed, never the latest."""
    keep: int = setting(7, "snapshots kept, the newest; 0 keeps only the latest",
                        significant=False)


@dataclass(frozen=True)
class SemiColdConfig:
    """Tracks with at most ``max_listeners`` listeners are semi-cold: their factors
    are the ALS item step held toward their audio prediction with strength ``reg``
    rather than toward zero, at the prediction's length (schemas.feedback.blend_toward);
    those with fewer than ``min_listeners`` keep their audio prediction as it is.
    benchmarks/semicold_search.py validates the pair on held-out tracks; on real music
    (benchmarks/real_music.py, ALS's default alpha 10) it keeps the audio alone in most
    folds of two seeds, and on the third blends from 5 revealed plays, mostly with
    lambda 100. With 57 held-out tracks a seed (--more) it blends in most folds of two
    seeds, from 1 to 5 plays, mostly with lambda 100."""
    max_listeners: int = setting(
        10, "tracks with at most this many listeners are semi-cold: their factors are held "
            "toward their audio prediction", name="semi_cold_listeners")
    min_listeners: int = setting(
        3, "semi-cold tracks with fewer listeners keep their audio prediction as it is",
        name="semi_cold_min_listeners")
    reg: float = setting(100.0, "strength with which semi-cold factors are held toward their "
                                "audio prediction", name="semi_cold_reg")


@dataclass(frozen=True)
class IndexConfig:
    """The similar-track index (jobs/index.py): HNSW links per node (``m``), search
    depth when building and when querying. On 100,000 random 32-dimensional vectors
    these give recall@10 0.995 against exact search (benchmarks/similar.py)."""
    m: int = setting(16, "HNSW links per node")
    ef_construction: int = setting(200, "search depth while building")
    query_ef: int = setting(100, "search depth while querying")


@dataclass(frozen=True)
class QueryConfig:
    """The factors at work (jobs/audience.py, jobs/query.py): users kept per new
    release, rows of a query's answer, the share of cold tracks in a user's
    recommendations, and how many users the audience job scores at once (its memory
    stays flat)."""
    audience: int = setting(100, "users per track", name="k")
    top: int = setting(10, "rows")
    cold_share: float = setting(0.2, "share of cold tracks (factors from audio)")
    user_batch: int = setting(8192, "users scored at once", significant=False)


# -- Demo data (jobs/demo_catalogue.py) -------------------------------------------------

@dataclass(frozen=True)
class DemoConfig:
    """Everything that determines the demo catalogue; equal configs give equal outputs."""

    n_tracks: int = setting(400, "number of tracks, warm and cold")
    n_users: int = setting(3000, "number of simulated listeners")
    duration_s: float = setting(12.0, "length of every track in seconds")
    cold_fraction: float = setting(0.2, "fraction of tracks, chosen at random, whose plays are "
                                        "held out (cold tracks)")
    seed: int = setting(0, "seed of every random choice (styles, audio, popularity, tastes, "
                           "plays): the same seed gives the same catalogue")
    mean_tracks_per_user: float = setting(30.0, "mean number of distinct tracks a user plays "
                                                "(geometric distribution)")
    min_tracks_per_user: int = setting(3, "fewest distinct tracks a user plays")
    min_listeners_per_track: int = setting(5, "fewest distinct users who play each track, so "
                                              "every track has some plays")
    popularity_exponent: float = setting(1.0, "Zipf exponent of track popularity: the r-th most "
                                              "popular track has weight r^-a")
    taste_concentration: float = setting(0.1, "Dirichlet concentration of a user's taste over "
                                              "kinds (style and tempo); small means 1-2 kinds")
    taste_noise: float = setting(0.05, "share of a user's choices that follow popularity "
                                       "alone, ignoring style")
    play_count_exponent: float = setting(2.2, "Zipf exponent of the play count of one (user, "
                                              "track) pair; counts are >= 1")
    max_play_count: int = setting(500, "largest play count of one (user, track) pair")

    def __post_init__(self) -> None:
        if self.n_tracks < 1 or self.n_users < 1:
            raise ValueError("n_tracks and n_users must be positive")
        if self.duration_s <= 0:
            raise ValueError("duration_s must be positive")
        if not 0.0 <= self.cold_fraction < 1.0:
            raise ValueError("cold_fraction must be in [0, 1)")
        if self.mean_tracks_per_user < 1 or self.min_tracks_per_user < 1:
            raise ValueError("users must play at least one track")
        if self.taste_concentration <= 0 or not 0.0 <= self.taste_noise <= 1.0:
            raise ValueError("taste_concentration must be > 0 and taste_noise in [0, 1]")
        if self.play_count_exponent <= 1.0:
            raise ValueError("play_count_exponent must be > 1 (numpy's Zipf needs it)")
