"""The log-mel spectrograms of decoded samples, and a check that they can be computed.

One decoded excerpt makes every output of a track: the main spectrograms at the
decoding's sample rate and the pretrained tagger's input (MelParams.frontend), from the
same samples resampled. torch and torchaudio are imported on first use, and a failure
to load them is reported as a broken environment.
"""
from __future__ import annotations

import functools
import importlib
import math
from typing import Sequence

import numpy as np

from jobs.spectrograms.decode import (MelError, SystemicError, decode_excerpt, is_systemic,
                                      missing_decoders)
from schemas.config import LOG10_1P_SCALE, MelParams


def log_mel(samples: np.ndarray, params: MelParams) -> np.ndarray:
    """Compressed mel power spectrogram of mono ``samples``.

    samples: (n_samples,) float32 at ``params.sample_rate``. Returns mel:
    (n_mels, n_frames) float32, with n_frames = 1 + n_samples // hop_length (frames are
    centred, reflection-padded), through ``params.filterbank`` and compressed as
    ``params.compression`` says: log(power + log_offset), or log10(1 + 10000 power).
    """
    torch = _import("torch")
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(f"expected non-empty mono samples, got shape {samples.shape}")
    if not samples.flags.writeable:  # torch.from_numpy warns on read-only arrays
        samples = samples.copy()
    stft, mel_scale = _transforms(params.sample_rate, params.n_fft, params.hop_length,
                                  params.n_mels, params.filterbank)
    with torch.inference_mode():
        spectrum = stft(torch.from_numpy(samples))
        # |z|^2 as re^2 + im^2: abs() takes a square root that squaring undoes, and costs
        # more than the STFT itself
        mel = mel_scale(spectrum.real.square() + spectrum.imag.square())
        if params.compression == "log10_1p":
            return (torch.log1p(mel * LOG10_1P_SCALE) / math.log(10)).numpy()
        return torch.log(mel + params.log_offset).numpy()


@functools.lru_cache(maxsize=8)
def _transforms(sample_rate: int, n_fft: int, hop_length: int, n_mels: int, filterbank: str):
    """(complex STFT, mel filterbank): torchaudio's MelSpectrogram in two steps."""
    torchaudio = _import("torchaudio")
    norm = "slaney" if filterbank == "slaney" else None
    return (torchaudio.transforms.Spectrogram(n_fft=n_fft, hop_length=hop_length, power=None),
            torchaudio.transforms.MelScale(n_mels=n_mels, sample_rate=sample_rate,
                                           n_stft=n_fft // 2 + 1, norm=norm,
                                           mel_scale=filterbank))


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """samples: (n,) float32 at ``from_rate`` Hz -> (ceil(n * to_rate / from_rate),)
    float32 at ``to_rate`` Hz, by band-limited (windowed sinc) interpolation."""
    torch = _import("torch")
    samples = np.asarray(samples, dtype=np.float32)
    if not samples.flags.writeable:
        samples = samples.copy()
    with torch.inference_mode():
        return _resampler(from_rate, to_rate)(torch.from_numpy(samples)).numpy()


@functools.lru_cache(maxsize=4)
def _resampler(from_rate: int, to_rate: int):
    # the transform computes its filter once; the functional form, at every call
    return _import("torchaudio").transforms.Resample(from_rate, to_rate)


def _import(name: str):
    """Import ``name``; a failure (a native library that does not load) is systemic."""
    try:
        return importlib.import_module(name)
    except Exception as err:
        raise SystemicError(f"{name} does not load: {type(err).__name__}: {err}") from err


def check_environment(params: MelParams, outputs: Sequence[MelParams] = ()) -> None:
    """Raise SystemicError unless this process can decode the claimed codecs and
    compute every output from audio decoded with ``params`` (default: ``params``'
    spectrogram alone): a cheap test before any track is touched."""
    missing = missing_decoders()
    if missing:
        raise SystemicError(f"PyAV's FFmpeg build lacks decoders for {', '.join(missing)}")
    outputs = tuple(outputs) or (params,)
    # silence at the decoding's rate, two STFT windows long at every output's rate
    seconds = max(output.n_fft / output.sample_rate for output in (params, *outputs))
    silence = np.zeros(math.ceil(2 * seconds * params.sample_rate), np.float32)
    for output in outputs:
        log_mel(_at_rate(silence, params.sample_rate, output), output)


def _at_rate(samples: np.ndarray, rate: int, output: MelParams) -> np.ndarray:
    """``samples`` at ``rate`` Hz, at ``output``'s sample rate."""
    return samples if rate == output.sample_rate else resample(samples, rate, output.sample_rate)


def spectrograms(uri: str, params: MelParams, outputs: Sequence[MelParams] = (),
                 **limits) -> tuple[np.ndarray | MelError, ...]:
    """The stored spectrograms of ``uri`` for each of ``outputs`` (default: ``params``
    alone), all made from one decoding of its excerpt with ``params`` (decode_excerpt,
    with ``limits``); an output at another sample rate from those samples resampled.

    Each is (n_mels, n_frames) in its output's dtype, or the MelError that says why
    it could not be computed (so that one output can fail alone). Raises DecodeError
    when the audio is at fault: every output fails alike.
    """
    samples = decode_excerpt(uri, params, **limits)
    return tuple(_stored(uri, samples, params.sample_rate, output)
                 for output in outputs or (params,))


def _stored(uri: str, samples: np.ndarray, rate: int,
            output: MelParams) -> np.ndarray | MelError:
    try:
        mel = log_mel(_at_rate(samples, rate, output), output)
        if not np.isfinite(mel).all():
            raise ValueError("spectrogram has non-finite values")
    except Exception as err:
        if is_systemic(err):
            raise
        return MelError(f"{uri}: {type(err).__name__}: {err}")
    return mel.astype(output.dtype)


def prepare(params: MelParams, torch_threads: int = 1,
            outputs: Sequence[MelParams] = ()) -> None:
    """Make this process ready to compute ``outputs`` from audio decoded with ``params``:
    check_environment, then limit torch to ``torch_threads`` threads (0: torch's default,
    one per core). Workers are the parallelism: several OpenMP pools sharing the cores
    spin against each other and make each transform many times slower."""
    check_environment(params, outputs)
    if torch_threads > 0:
        _import("torch").set_num_threads(torch_threads)
