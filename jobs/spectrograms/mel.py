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
    with torch.inference_mode():
        return _log_mel(samples, params).contiguous().numpy()


def _log_mel(samples: np.ndarray, params: MelParams):
    """:func:`log_mel` as a torch tensor (a transposed view)."""
    torch = _import("torch")
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(f"expected non-empty mono samples, got shape {samples.shape}")
    if not samples.flags.writeable:  # torch.from_numpy warns on read-only arrays
        samples = samples.copy()
    stft, filterbank = _transforms(params.sample_rate, params.n_fft, params.hop_length,
                                   params.n_mels, params.filterbank)
    spectrum = stft(torch.from_numpy(samples)).T  # (frames, bins): how torch.stft lays it out
    # |z|^2 = re^2 + im^2, the sum done by the filterbank's matmul (each row twice, for the
    # interleaved re and im): abs() takes a square root that squaring undoes, and costs
    # more than the STFT itself. In place where the values are this function's own.
    squares = torch.view_as_real(spectrum).reshape(spectrum.shape[0], -1).square_()
    mel = torch.matmul(squares, filterbank).T
    if params.compression == "log10_1p":
        return mel.mul_(LOG10_1P_SCALE).log1p_().mul_(1 / math.log(10))
    return mel.add_(params.log_offset).log_()


@functools.lru_cache(maxsize=8)
def _transforms(sample_rate: int, n_fft: int, hop_length: int, n_mels: int, filterbank: str):
    """(complex STFT, (2 * bins, n_mels) filterbank): torchaudio's MelSpectrogram in two
    steps, its filterbank's rows doubled (see _log_mel)."""
    torchaudio = _import("torchaudio")
    norm = "slaney" if filterbank == "slaney" else None
    mel_scale = torchaudio.transforms.MelScale(n_mels=n_mels, sample_rate=sample_rate,
                                               n_stft=n_fft // 2 + 1, norm=norm,
                                               mel_scale=filterbank)
    return (torchaudio.transforms.Spectrogram(n_fft=n_fft, hop_length=hop_length, power=None),
            mel_scale.fb.repeat_interleave(2, dim=0).contiguous())


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """samples: (n,) float32 at ``from_rate`` Hz -> (ceil(n * to_rate / from_rate),)
    float32 at ``to_rate`` Hz: torchaudio's resampling (a Hann-windowed sinc filter)."""
    torch = _import("torch")
    samples = np.asarray(samples, dtype=np.float32)
    if not samples.flags.writeable:
        samples = samples.copy()
    with torch.inference_mode():
        return _resampler(from_rate, to_rate)(torch.from_numpy(samples)).numpy()


class _PhaseGroups:
    """torchaudio.transforms.Resample's filter, applied a group of output phases at a time.

    torchaudio convolves the input with one row of taps per output phase (320 of them
    from 22050 to 16000 Hz), each as long as the input's period (441 samples), though
    only about 17 taps of a row are not zero. Phases next to each other need input
    samples next to each other, so each group of GROUP phases multiplies only the span
    its taps cover: the same output (the transform's ``kernel`` and ``width``) in a
    fifth of the time, 1 ms instead of 4.5 for a 30 s excerpt on one core.
    """

    GROUP = 16

    def __init__(self, from_rate: int, to_rate: int) -> None:
        torch = _import("torch")
        resampling = _import("torchaudio").transforms.Resample(from_rate, to_rate)
        gcd = math.gcd(from_rate, to_rate)
        self.up, self.down, self.width = to_rate // gcd, from_rate // gcd, resampling.width
        taps = resampling.kernel[:, 0, :]  # (up, down + 2 width): row p makes phase p
        # the window's ends are zero but for rounding (cos^2 at pi/2)
        used = taps.abs() > 1e-9 * taps.abs().max()
        first = used.to(torch.int8).argmax(1)
        last = taps.shape[1] - 1 - used.flip(1).to(torch.int8).argmax(1)
        # (first tap, (taps, phases)) of each group, in phase order
        self.groups = [(int(first[p:p + self.GROUP].min()),
                        taps[p:p + self.GROUP, int(first[p:p + self.GROUP].min()):
                             int(last[p:p + self.GROUP].max()) + 1].T.contiguous())
                       for p in range(0, self.up, self.GROUP)]

    def __call__(self, samples):
        """(n,) float32 tensor -> its resampled (ceil(n * up / down),) tensor."""
        torch = _import("torch")
        length = math.ceil(self.up * samples.shape[0] / self.down)
        blocks = math.ceil(length / self.up)  # of ``up`` outputs from ``down`` inputs each
        reach = self.down * (blocks - 1) + max(start + taps.shape[0] for start, taps in self.groups)
        padded = torch.nn.functional.pad(  # as torchaudio pads: zeros before and after
            samples, (self.width, max(0, reach - self.width - samples.shape[0])))
        resampled = torch.empty(blocks, self.up)
        phase = 0
        for start, taps in self.groups:
            # every block's input span of this group, as a strided view: no copy
            spans = padded.as_strided((blocks, taps.shape[0]), (self.down, 1), start)
            torch.matmul(spans, taps, out=resampled[:, phase:phase + taps.shape[1]])
            phase += taps.shape[1]
        return resampled.reshape(-1)[:length]


@functools.lru_cache(maxsize=4)
def _resampler(from_rate: int, to_rate: int) -> _PhaseGroups:
    return _PhaseGroups(from_rate, to_rate)


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
                 catalogue_s: float | None = None,
                 **limits) -> tuple[np.ndarray | MelError, ...]:
    """The stored spectrograms of ``uri`` for each of ``outputs`` (default: ``params``
    alone), all made from one decoding of its excerpt with ``params`` (decode_excerpt,
    with the catalogue's duration ``catalogue_s`` and ``limits``); an output at another
    sample rate from those samples resampled.

    Each is (n_mels, n_frames) in its output's dtype, or the MelError that says why
    it could not be computed (so that one output can fail alone). Raises DecodeError
    when the audio is at fault: every output fails alike.
    """
    samples = decode_excerpt(uri, params, catalogue_s, **limits)
    return tuple(_stored(uri, samples, params.sample_rate, output)
                 for output in outputs or (params,))


def _stored(uri: str, samples: np.ndarray, rate: int,
            output: MelParams) -> np.ndarray | MelError:
    torch = _import("torch")
    try:
        with torch.inference_mode():
            mel = _log_mel(_at_rate(samples, rate, output), output)
            if not torch.isfinite(mel).all():
                raise ValueError("spectrogram has non-finite values")
            # torch rounds as NumPy does, several times faster
            return mel.to(getattr(torch, output.dtype),
                          memory_format=torch.contiguous_format).numpy()
    except Exception as err:
        if is_systemic(err):
            raise
        return MelError(f"{uri}: {type(err).__name__}: {err}")


def prepare(params: MelParams, torch_threads: int = 1,
            outputs: Sequence[MelParams] = ()) -> None:
    """Make this process ready to compute ``outputs`` from audio decoded with ``params``:
    check_environment, then limit torch to ``torch_threads`` threads (0: torch's default,
    one per core). Workers are the parallelism: several OpenMP pools sharing the cores
    spin against each other and make each transform many times slower."""
    check_environment(params, outputs)
    if torch_threads > 0:
        _import("torch").set_num_threads(torch_threads)
