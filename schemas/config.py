"""Every stage's settings and their defaults, stated once.

Jobs build these from their command lines and pass them to their core functions;
the Luigi tasks take their parameter defaults from them; luigi.cfg and deploy/ only
override. Plain Python: importing this module loads no engine.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

# -- ALS (jobs/als/) ---------------------------------------------------------------------

@dataclass(frozen=True)
class AlsParams:
    """Hyper-parameters of the factorisation; all of them change the result.

    ``blocks`` (user and item blocks of Spark's ALS) also fixes the random
    initialisation; None means one block per core (Spark's default parallelism),
    and the number used is recorded with the factors.
    """
    rank: int = 32
    reg: float = 0.1
    alpha: float = 10.0
    eps: float = 1.0
    iterations: int = 15
    seed: int = 42
    checkpoint_interval: int = 5
    blocks: int | None = None


@dataclass(frozen=True)
class AlsTuning:
    """Settings that change speed and memory use, never the factors."""
    intermediate_storage: str = "MEMORY_AND_DISK"
    final_storage: str = "MEMORY_AND_DISK"
    cache_ratings: bool = True


@dataclass(frozen=True)
class InputOptions:
    """How to read and validate the play-count table.

    ``format`` is one of FORMATS or "auto" (by extension; Parquet when there is
    none). The column names apply to Parquet and CSV; triplets are positional.
    """
    format: str = "auto"
    user_column: str = "user_id"
    track_column: str = "track_id"
    plays_column: str = "plays"
    delimiter: str = ","
    max_bad_fraction: float = 0.01


STORAGE_LEVELS = ("MEMORY_ONLY", "MEMORY_ONLY_SER", "MEMORY_AND_DISK", "MEMORY_AND_DISK_SER",
                  "DISK_ONLY")


# -- Spectrograms (jobs/spectrograms) ---------------------------------------------------

# How a track shorter than the excerpt is brought to full length:
# "zeros" appends silence, "wrap" loops the audio, "none" keeps it short
# (its spectrogram then has fewer frames), "reject" refuses it (DecodeError).
PAD_MODES = ("zeros", "wrap", "none", "reject")

# How spectrogram values are stored. float16 halves what training reads for a loss of
# at most 0.004 (mean 0.0006) on log-mel values that span about -14..11, a few ten
# thousandths of their spread (benchmarks/mel_reader.py).
MEL_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class MelParams:
    """Everything that determines a spectrogram's values.

    sample_rate: Hz after resampling. n_fft, hop_length: STFT window and hop, in
    samples. n_mels: mel bands. excerpt_s: seconds taken from the middle of the
    track; None (or 0) keeps the whole track. log_offset: added before the log,
    log(mel + log_offset). pad: how a track shorter than the excerpt is padded,
    one of PAD_MODES. dtype: how the values are stored, one of MEL_DTYPES.
    """

    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 128
    # 30 s: three times the audio of 10 s, which on real music lifts the CNN's held-out
    # AUC by about 0.05 (benchmarks/real_music.py); a shorter track is looped to length.
    excerpt_s: float | None = 30.0
    log_offset: float = 1e-6
    pad: str = "wrap"
    dtype: str = "float16"

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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MelParams:
        """Inverse of :meth:`to_dict`; raises ValueError on unknown keys. Settings
        without a dtype were stored before it existed, as float32."""
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


@dataclass(frozen=True)
class SpectrogramOptions:
    """How the spectrogram job treats its inputs; none of these change a spectrogram.

    Tracks with less audio than ``min_duration_s``, more than ``max_duration_s``
    (None: no limit), files over ``max_file_mb`` MiB (None: no limit) and decodes
    slower than ``decode_timeout_s`` are dead letters. The job fails when more than
    ``max_bad_fraction`` of the catalogue's tracks are failing. A track that failed is
    tried again ``retry_after_days`` after its first failure, then after twice as
    long each time (all at once with ``retry_dead_letters``). ``row_group_mb`` sizes
    the Parquet row groups readers load one at a time; a shard is closed once it holds
    ``shard_mb`` (one row group more at most) and the worker starts another, so a shard
    never grows with the catalogue. With ``isolate_decoding`` each worker computes in
    ``decoders`` child processes (0: one per CPU). A catalogue is done in parts
    of about ``tracks_per_part`` tracks, each published when done, so a killed run
    keeps what it finished.
    """
    min_duration_s: float = 1.0
    max_duration_s: float | None = 3 * 3600.0
    max_file_mb: float | None = 1024.0
    decode_timeout_s: float = 120.0
    isolate_decoding: bool = True
    decoders: int = 0
    torch_threads: int = 1
    max_bad_fraction: float = 0.05
    retry_dead_letters: bool = False
    retry_after_days: float = 1.0
    row_group_mb: float = 32.0
    shard_mb: float = 256.0
    tracks_per_part: int = 10_000

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
                "max_duration_s": self.duration_limit_s}

    @property
    def decoder_count(self) -> int:
        """Child processes per worker: ``decoders``, or one per CPU."""
        return self.decoders if self.decoders > 0 else (os.cpu_count() or 1)


# -- Training (model/train.py) ----------------------------------------------------------

# The networks and losses training offers; the first of each is the default.
ARCHS = ("dieleman2014", "vandenoord2013")
# wpe is the default: it ranked held-out real music at least as well as mse (0.729 against
# 0.710 AUC over 3 seeds with the taste classifier, 0.676 against 0.668 without) and more
# steadily across seeds (benchmarks/real_music.py), and the demo at least as well.
LOSSES = ("wpe", "mse", "cosine")
DEFAULT_ARCH, DEFAULT_LOSS = ARCHS[0], LOSSES[0]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings."""
    # A small catalogue gives a few dozen steps an epoch: a lower rate trained longer
    # beat 1e-3 for 40 epochs by 0.02-0.03 AUC on real music (benchmarks/real_music.py).
    epochs: int = 100
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-4
    crop_frames: int = 256  # random time crop (frames of hop 512 at 22050 Hz: ~6 s)
    clips_per_track: int = 8  # random crops of each training track per epoch
    val_fraction: float = 0.1
    patience: int = 15  # epochs without validation improvement before stopping
    seed: int = 0
    loader_workers: int = 0  # data-loader processes per rank
    # Training fails when the best model's validation predictions spread less than
    # this (1 - mean pairwise cosine): a model that says the same for every track.
    min_spread: float = 0.05
    # The taste classifier averaged with the network (model/taste.py): fitted on at
    # most this many warm tracks (0: none), with this inverse L2 strength.
    taste_tracks: int = 20_000
    taste_c: float = 0.1


@dataclass(frozen=True)
class ChooseConfig:
    """The trained CNNs (architecture:loss, or architecture:loss:meta for one with a
    metadata branch) that compete to be shipped, with the bag-of-words baseline
    (model/choose.py)."""
    candidates: tuple[str, ...] = (f"{DEFAULT_ARCH}:{DEFAULT_LOSS}",)


# -- Evaluation (jobs/evaluate.py, jobs/als/holdout.py) ---------------------------------

@dataclass(frozen=True)
class BowConfig:
    n_mfcc: int = 13
    codebook: int = 4000  # the paper's size; small catalogues want far fewer words
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
    k: int = 500
    models: tuple[str, ...] = ("dieleman2014:mse", "dieleman2014:cosine", "dieleman2014:wpe",
                               "vandenoord2013:mse", "dieleman2014:wpe:meta")
    bow_train_tracks: int = 5000
    seed: int = 0
    recall_k: int = 10
    neighbours: int = 5  # warm neighbours compared by artist (same_artist@n)


@dataclass(frozen=True)
class TrackHoldout:
    """The evaluation's split (the paper's protocol): ``fraction`` of the warm tracks,
    stratified by artist and popularity, chosen by ``seed``, lose all their plays to
    the evaluation; ALS and the models are trained on the rest. 0 holds out nothing."""
    fraction: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class HoldoutOptions:
    """Which plays to hold out and how to score them.

    ``max_users`` evaluates a seeded sample of that many users (None: all); the
    scoring runs on the driver, so sample when there are millions of users.
    """
    fraction: float = 0.2
    k: int = 500
    seed: int = 0
    max_users: int | None = None


# -- Publishing (jobs/publish.py) --------------------------------------------------------

@dataclass(frozen=True)
class PublishConfig:
    """How many published snapshots (nights) are kept; older ones, and their runs'
    outputs, are removed, never the latest."""
    keep: int = 7


@dataclass(frozen=True)
class SemiColdConfig:
    """Tracks with at most ``max_listeners`` listeners are semi-cold: their factors
    are the ALS item step held toward their audio prediction with strength ``reg``
    rather than toward zero, at the prediction's length (schemas.feedback.blend_toward);
    those with fewer than ``min_listeners`` keep their audio prediction as it is.
    jobs/evaluate_semicold.py validates the pair on held-out tracks; on real music
    (benchmarks/real_music.py, ALS's default alpha 10) it keeps the audio alone in most
    folds of two seeds, and on the third blends from 5 revealed plays, mostly with
    lambda 100. With 57 held-out tracks a seed (--more) it blends in most folds of two
    seeds, from 1 to 5 plays, mostly with lambda 100."""
    max_listeners: int = 10
    min_listeners: int = 3
    reg: float = 100.0


@dataclass(frozen=True)
class IndexConfig:
    """The similar-track index (jobs/index.py): HNSW links per node (``m``), search
    depth when building and when querying. On 100,000 random 32-dimensional vectors
    these give recall@10 0.995 against exact search (benchmarks/similar.py)."""
    m: int = 16
    ef_construction: int = 200
    query_ef: int = 100


@dataclass(frozen=True)
class QueryConfig:
    """The factors at work (jobs/audience.py, jobs/query.py): users kept per new
    release, rows of a query's answer, the share of cold tracks in a user's
    recommendations, and how many users are scored at once (memory stays flat)."""
    audience: int = 100
    top: int = 10
    cold_share: float = 0.2
    user_batch: int = 8192


# -- Demo data (jobs/demo_catalogue.py) -------------------------------------------------

@dataclass(frozen=True)
class DemoConfig:
    """Everything that determines the demo catalogue; equal configs give equal outputs."""

    n_tracks: int = 400
    """Number of tracks, warm and cold together."""
    n_users: int = 3000
    """Number of simulated listeners."""
    duration_s: float = 12.0
    """Length of every track, seconds."""
    cold_fraction: float = 0.2
    """Fraction of tracks, chosen at random, whose plays are held out (cold tracks)."""
    seed: int = 0
    """Seed of every random choice: styles, audio, popularity, tastes and plays."""
    mean_tracks_per_user: float = 30.0
    """Mean number of distinct tracks a user plays (geometric distribution)."""
    min_tracks_per_user: int = 3
    """Fewest distinct tracks a user plays."""
    min_listeners_per_track: int = 5
    """Fewest distinct users who play each track, so every track has some plays."""
    popularity_exponent: float = 1.0
    """Zipf exponent of track popularity: the r-th most popular track has weight r^-a."""
    taste_concentration: float = 0.1
    """Dirichlet concentration of a user's taste over kinds (style and tempo); small
    means 1-2 kinds."""
    taste_noise: float = 0.05
    """Share of a user's choices that follow popularity alone, ignoring style."""
    play_count_exponent: float = 2.2
    """Zipf exponent of the play count of one (user, track) pair; counts are >= 1."""
    max_play_count: int = 500
    """Largest play count of one (user, track) pair."""

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
