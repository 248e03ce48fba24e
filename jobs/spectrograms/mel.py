"""The log-mel spectrogram of decoded samples, and a check that it can be computed.

torch and torchaudio are imported on first use, and a failure to load them is
reported as a broken environment.
"""
from __future__ import annotations

import functools
import importlib

import numpy as np

from jobs.spectrograms.decode import (MelError, SystemicError, decode_excerpt, is_systemic,
                                      missing_decoders)
from schemas.config import MelParams


def log_mel(samples: np.ndarray, params: MelParams) -> np.ndarray:
    """Log-compressed mel power spectrogram of mono ``samples``.

    samples: (n_samples,) float32 at ``params.sample_rate``. Returns mel:
    (n_mels, n_frames) float32, log(power + log_offset), with
    n_frames = 1 + n_samples // hop_length (frames are centred).
    """
    torch = _import("torch")
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(f"expected non-empty mono samples, got shape {samples.shape}")
    if not samples.flags.writeable:  # torch.from_numpy warns on read-only arrays
        samples = samples.copy()
    transform = _mel_transform(params.sample_rate, params.n_fft, params.hop_length, params.n_mels)
    with torch.inference_mode():
        mel = transform(torch.from_numpy(samples))
        return torch.log(mel + params.log_offset).numpy()


@functools.lru_cache(maxsize=8)
def _mel_transform(sample_rate: int, n_fft: int, hop_length: int, n_mels: int):
    torchaudio = _import("torchaudio")
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, power=2.0)


def _import(name: str):
    """Import ``name``; a failure (a native library that does not load) is systemic."""
    try:
        return importlib.import_module(name)
    except Exception as err:
        raise SystemicError(f"{name} does not load: {type(err).__name__}: {err}") from err


def check_environment(params: MelParams) -> None:
    """Raise SystemicError unless this process can decode the claimed codecs and
    compute a spectrogram: a cheap test before any track is touched."""
    missing = missing_decoders()
    if missing:
        raise SystemicError(f"PyAV's FFmpeg build lacks decoders for {', '.join(missing)}")
    log_mel(np.zeros(params.n_fft, np.float32), params)


def spectrogram(uri: str, params: MelParams, **limits) -> np.ndarray:
    """The stored spectrogram of ``uri``: its decoded excerpt (decode_excerpt, with
    ``limits``), log-mel, in ``params.dtype``; (n_mels, n_frames).

    Raises DecodeError when the audio is at fault, MelError when the spectrogram is.
    """
    samples = decode_excerpt(uri, params, **limits)
    try:
        mel = log_mel(samples, params)
        if not np.isfinite(mel).all():
            raise ValueError("spectrogram has non-finite values")
    except Exception as err:
        if is_systemic(err):
            raise
        raise MelError(f"{uri}: {type(err).__name__}: {err}") from err
    return mel.astype(params.dtype)


def prepare(params: MelParams, torch_threads: int = 1) -> None:
    """Make this process ready to compute spectrograms: check_environment, then limit
    torch to ``torch_threads`` threads (0: torch's default, one per core). Workers are
    the parallelism: several OpenMP pools sharing the cores spin against each other and
    make each transform many times slower."""
    check_environment(params)
    if torch_threads > 0:
        _import("torch").set_num_threads(torch_threads)
