"""Decode the middle excerpt of a track with PyAV.

No Beam here: these functions are what the spectrogram job runs per track, and are
usable on their own (scoring a single file, notebooks, tests). This module imports
no torch: the child processes of jobs.spectrograms.pool import it, and load only what
their per-track function needs.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlparse

import av
import numpy as np

from schemas.config import MelParams

logger = logging.getLogger(__name__)

# Decoding starts this long before the excerpt, for the decoder to settle.
_PREROLL_S = 0.5

# The resampler hands out audio in frames of this many samples. Codecs with short
# frames (Vorbis: ~80 per second) otherwise cost more in per-frame Python calls
# than in decoding.
_RESAMPLED_FRAME = 4096

# An excerpt that decodes to less than this fraction of what the container's
# duration promised, and to more than _TRUNCATED_SLACK_S less, is reported as
# truncated instead of being padded. (Codec delays make tiny files come short.)
_TRUNCATED_BELOW = 0.9
_TRUNCATED_SLACK_S = 0.1

# Packets FFmpeg cannot decode are skipped, as its command line does, unless they
# are more than this fraction of the packets read (and more than two).
_BAD_PACKETS = 0.05

# With pad="reject", a track this much shorter than the excerpt is still accepted
# (and padded with silence): a 30 s preview clip may decode to 29.98 s.
_REJECT_SLACK_S = 0.1

# A file may fall this much short of the catalogue's duration whatever the tolerance:
# catalogues round durations to the second, and encoders add or trim a few frames.
_CATALOGUE_SLACK_S = 1.0


class DecodeError(RuntimeError):
    """A track could not be decoded; the message starts with its URI."""
    stage = "decode"  # the dead letters' stage


class MelError(DecodeError):
    """A track decoded, but its spectrogram could not be computed."""
    stage = "mel"


class SystemicError(RuntimeError):
    """The environment is broken, not one track: a library that does not load, no
    memory, no disk space, a decoder process that cannot start. Stops the job."""


# OS errors that say the machine, not the file, is at fault.
_SYSTEMIC_ERRNOS = frozenset({errno.ENOSPC, errno.ENOMEM, errno.EDQUOT, errno.EMFILE,
                              errno.ENFILE, errno.EROFS})


def is_systemic(err: BaseException) -> bool:
    """Whether ``err`` would hit every track alike, so it must stop the job instead
    of sending each track to the dead letters."""
    if isinstance(err, (SystemicError, ImportError, MemoryError)):
        return True
    return isinstance(err, OSError) and err.errno in _SYSTEMIC_ERRNOS


def systemic_message(err: BaseException) -> str:
    """What a systemic error says: its own message, or its type and message."""
    return str(err) if isinstance(err, SystemicError) else f"{type(err).__name__}: {err}"


def decode_excerpt(uri: str, params: MelParams, catalogue_s: float | None = None, *,
                   min_duration_s: float = 0.0, max_bytes: int | None = None,
                   max_duration_s: float | None = None, silence_dbfs: float | None = None,
                   duration_tolerance: float | None = None) -> np.ndarray:
    """Decode the middle ``params.excerpt_s`` seconds of ``uri``.

    Returns samples: (n_samples,) float32 at ``params.sample_rate`` Hz, mono (the
    mean of the channels), full scale 1.0. The excerpt is found by seeking, so
    only about excerpt_s of audio is decoded however long the track is. A track
    shorter than the excerpt is padded, or rejected, as ``params.pad`` says. With
    ``params.excerpt_s`` None the whole track is decoded. ``uri`` is a local path,
    a file:// URI, or any URI fsspec can open (s3://, gs://, memory://...).

    Raises DecodeError naming ``uri`` when the file is missing, empty, unreadable,
    larger than ``max_bytes``, holds no audio stream or one FFmpeg cannot decode,
    is truncated, holds less than ``min_duration_s`` or more than
    ``max_duration_s`` seconds of audio, or is shorter than the excerpt under
    pad="reject". Also when the loudest second of the excerpt stays below
    ``silence_dbfs`` (RMS, dB relative to full scale: "silent"), and when the file
    holds less than ``catalogue_s`` (the catalogue's duration_s of the track, if known)
    by more than ``duration_tolerance`` of it and more than a second ("truncated").
    """
    rate = params.sample_rate
    max_samples = round(max_duration_s * rate) if max_duration_s else None
    try:
        with _open(uri, max_bytes) as source, av.open(source, mode="r") as container:
            stream = _audio_stream(uri, container)
            duration_s = _duration_s(container, stream)
            if max_duration_s and duration_s is not None and duration_s > max_duration_s:
                raise DecodeError(f"{uri}: too long: {duration_s:.0f} s > {max_duration_s:g} s")
            samples, expected = _decode_middle(container, stream, params, duration_s, max_samples)
    except DecodeError:
        raise
    except Exception as err:  # FFmpeg, I/O and format errors alike: name the file.
        if is_systemic(err):
            raise
        raise DecodeError(f"{uri}: {type(err).__name__}: {err}") from err

    decoded_s = len(samples) / rate
    if expected and len(samples) < min(_TRUNCATED_BELOW * expected,
                                       expected - _TRUNCATED_SLACK_S * rate):
        raise DecodeError(f"{uri}: truncated: decoded {decoded_s:.2f} s of the "
                          f"{expected / rate:.2f} s the container declares")
    if len(samples) == 0:
        raise DecodeError(f"{uri}: no audio decoded")
    if max_samples is not None and len(samples) > max_samples:
        raise DecodeError(f"{uri}: too long: more than {max_duration_s:g} s of audio")
    if decoded_s < min_duration_s:
        raise DecodeError(f"{uri}: too short: {decoded_s:.2f} s < {min_duration_s:g} s")
    if (params.pad == "reject" and params.excerpt_s
            and decoded_s < params.excerpt_s - _REJECT_SLACK_S):
        raise DecodeError(f"{uri}: too short for the excerpt: {decoded_s:.2f} s < "
                          f"{params.excerpt_s:g} s (pad=reject)")
    if catalogue_s and catalogue_s > 0 and duration_tolerance is not None:
        # The container's word for how long the file is, or what decoding found where it
        # reached the end: a file cut short may declare its own, shorter, length.
        held_s = duration_s
        if params.excerpt_samples is None or len(samples) < params.excerpt_samples:
            held_s = decoded_s if held_s is None else min(held_s, decoded_s)
        if held_s is not None and catalogue_s - held_s > max(duration_tolerance * catalogue_s,
                                                              _CATALOGUE_SLACK_S):
            raise DecodeError(f"{uri}: truncated: the file holds {held_s:.2f} s of the "
                              f"{catalogue_s:.2f} s the catalogue gives")
    if silence_dbfs is not None:
        level = loudest_second_dbfs(samples, params.sample_rate)
        if level < silence_dbfs:
            raise DecodeError(f"{uri}: silent: the excerpt's loudest second is at "
                              f"{level:.1f} dBFS, below {silence_dbfs:g} dBFS")
    return _pad(samples, params)


def loudest_second_dbfs(samples: np.ndarray, rate: int) -> float:
    """The RMS level of the loudest whole second of ``samples`` (all of them when shorter),
    in dB relative to full scale (a full-scale square wave: 0; digital silence: -inf)."""
    window = min(rate, len(samples))
    usable = len(samples) - len(samples) % window
    power = np.square(samples[:usable], dtype=np.float64).reshape(-1, window).mean(axis=1)
    with np.errstate(divide="ignore"):
        return float(10 * np.log10(power.max()))


def _audio_stream(uri: str, container: av.container.InputContainer) -> av.AudioStream:
    """The first audio stream; DecodeError when there is none or FFmpeg cannot decode it."""
    if not container.streams.audio:
        kinds = sorted({stream.type for stream in container.streams}) or ["none"]
        raise DecodeError(f"{uri}: no audio stream (streams: {', '.join(kinds)})")
    stream = container.streams.audio[0]
    if stream.codec_context is None:  # the demuxer knows the stream, no decoder does
        raise DecodeError(f"{uri}: unsupported audio codec: FFmpeg has no decoder for it "
                          f"(container {container.format.name})")
    return stream


def _open(uri: str, max_bytes: int | None):
    """A context manager giving what av.open accepts: a local path or a binary file."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") or len(parsed.scheme) == 1:  # "C:\..." is a path
        path = parsed.path if parsed.scheme == "file" else uri
        _check_size(uri, os.path.getsize(path), max_bytes)
        return contextlib.nullcontext(path)
    import fsspec  # only for remote URIs

    opened = fsspec.open(uri, "rb")
    _check_size(uri, opened.fs.size(opened.path), max_bytes)
    return opened


def _check_size(uri: str, size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise DecodeError(f"{uri}: file too large: {size} bytes > {max_bytes}")
    if size == 0:
        raise DecodeError(f"{uri}: empty file")


def _decode_middle(container: av.container.InputContainer, stream: av.AudioStream,
                   params: MelParams, duration_s: float | None,
                   max_samples: int | None) -> tuple[np.ndarray, int | None]:
    """Samples of the excerpt, unpadded, and how many the container's duration promised.

    ``duration_s`` is what the container declares (None if it does not say).
    Decoding starts a little before the excerpt (see :func:`_frames_from`); samples
    before its start are dropped using the first frame's timestamp. Decoding stops
    once more than ``max_samples`` are decoded, whatever the container declared.
    """
    rate = params.sample_rate
    want = params.excerpt_samples
    origin_s = float(stream.start_time * stream.time_base) if stream.start_time else 0.0

    start_s = 0.0
    if want is not None and duration_s is not None and duration_s > params.excerpt_s:
        start_s = (duration_s - params.excerpt_s) / 2
    expected = None
    if duration_s is not None:
        expected = int(duration_s * rate) if want is None else min(want, int(duration_s * rate))

    # Resample every channel, then average them: FFmpeg's own mono downmix weighs
    # each channel by 1/sqrt(2), making stereo 3 dB louder than the same mono track.
    resampler = av.AudioResampler(format="fltp", rate=rate, frame_size=_RESAMPLED_FRAME)
    chunks: list[np.ndarray] = []
    n_decoded = 0
    skip = 0
    tally = _PacketTally()
    frames = (_frames_from(container, stream, origin_s + start_s, tally) if start_s > 0
              else _decoded_frames(container, stream, tally))
    for index, frame in enumerate(frames):
        if index == 0 and start_s > 0 and frame.time is not None:
            skip = max(0, round((origin_s + start_s - frame.time) * rate))
        for out in resampler.resample(frame):
            chunks.append(out.to_ndarray().mean(axis=0))
            n_decoded += out.samples
        if want is not None and n_decoded >= skip + want:
            break
        if want is None and max_samples is not None and n_decoded > max_samples:
            break  # a container that understates its duration: stop, report too long
    else:
        for out in resampler.resample(None):  # flush what the resampler holds back
            chunks.append(out.to_ndarray().mean(axis=0))
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    end = None if want is None else skip + want
    if tally.bad:
        logger.debug("skipped %d of %d packets that could not be decoded: %s",
                     tally.bad, tally.packets, tally.last_error)
    return samples[skip:end].astype(np.float32, copy=False), expected


@dataclass
class _PacketTally:
    """Packets read and packets that failed to decode, for :func:`_decoded_frames`."""

    packets: int = 0
    bad: int = 0
    last_error: str = ""


def _decoded_frames(container: av.container.InputContainer, stream: av.AudioStream,
                    tally: _PacketTally, from_s: float | None = None) -> Iterator[av.AudioFrame]:
    """Frames of ``stream`` from the container's current position.

    Packets that end before ``from_s`` (seconds, stream clock) are read but not
    decoded: reading is cheap, decoding is not, should a seek land early or a
    late one make us read again from the start.

    A packet FFmpeg finds invalid is skipped, so that a glitch (or the seam of
    two concatenated MP3s) does not lose the track; ValueError once more than
    _BAD_PACKETS of the packets read, and more than two, were invalid. A file
    cut short usually fails on its last packet, then is reported as truncated.
    """
    time_base = float(stream.time_base) if stream.time_base else None
    for packet in container.demux(stream):
        if (from_s is not None and time_base and packet.pts is not None
                and (packet.pts + (packet.duration or 0)) * time_base < from_s):
            continue
        tally.packets += 1
        try:
            frames = packet.decode()
        except av.error.InvalidDataError as err:
            tally.bad += 1
            tally.last_error = str(err)
            if tally.bad > max(2, _BAD_PACKETS * tally.packets):
                raise ValueError(f"{tally.bad} of {tally.packets} packets could not be "
                                 f"decoded: {err}") from err
            continue
        yield from frames


def _frames_from(container: av.container.InputContainer, stream: av.AudioStream,
                 start_s: float, tally: _PacketTally) -> Iterator[av.AudioFrame]:
    """Decoded frames beginning at or before ``start_s`` (seconds, stream clock).

    Decodes from _PREROLL_S before ``start_s``: seeks land on packet boundaries,
    and the first packets after a seek may decode to nothing (Vorbis) or to a
    settling decoder (Opus). Should the first frame still begin late, reads again
    from the start.
    """
    for seek_s in (start_s - _PREROLL_S, None):
        if seek_s is None:
            container.seek(stream.start_time or 0, stream=stream)
        elif seek_s > 0:
            container.seek(int(seek_s / stream.time_base), stream=stream)
        frames = _decoded_frames(container, stream, tally, from_s=start_s - _PREROLL_S)
        first = next(frames, None)
        if first is None:
            return
        if seek_s is None or first.time is None or first.time <= start_s:
            yield first
            yield from frames
            return
        logger.debug("seek to %.3f s gave a first frame at %.3f s; decoding from the start",
                     seek_s, first.time)


def _duration_s(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _pad(samples: np.ndarray, params: MelParams) -> np.ndarray:
    want = params.excerpt_samples
    if want is None or len(samples) >= want or params.pad == "none":
        return samples
    mode = "wrap" if params.pad == "wrap" else "constant"  # zeros, or what reject lets by
    return np.pad(samples, (0, want - len(samples)), mode=mode)


# Codecs FFmpeg must decode for the formats the job claims: mp3, ogg (Vorbis, Opus),
# flac, wav, m4a (AAC, ALAC).
CLAIMED_DECODERS = ("mp3", "vorbis", "opus", "flac", "pcm_s16le", "pcm_f32le", "aac", "alac")


def missing_decoders() -> list[str]:
    """The CLAIMED_DECODERS that PyAV's FFmpeg build lacks."""
    missing = []
    for name in CLAIMED_DECODERS:
        try:
            av.codec.Codec(name, "r")
        except Exception:
            missing.append(name)
    return missing
