"""Decode the middle excerpt of a track with PyAV, in-process or in a child process.

No Beam here: these functions are what the spectrogram job runs per track, and are
usable on their own (scoring a single file, notebooks, tests). This module imports
no torch: the child process of :class:`IsolatedDecoder` loads only what its per-track
function needs.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import functools
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

import av
import numpy as np

from schemas.config import MelParams, SpectrogramOptions

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


def decode_excerpt(uri: str, params: MelParams, *, min_duration_s: float = 0.0,
                   max_bytes: int | None = None,
                   max_duration_s: float | None = None) -> np.ndarray:
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
    pad="reject".
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
    return _pad(samples, params)


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


class IsolatedDecoder:
    """:func:`decode_excerpt`, or another per-track function, in a long-lived child process.

    FFmpeg can crash (segfault) or hang on broken input. Here that costs one track:
    its result raises DecodeError naming the URI and the signal or timeout, and a
    fresh child takes over the tracks queued behind it. Not thread-safe; use one per
    thread.

    The child is a new interpreter (``python -c``) that imports only this module:
    forking a process that runs threads is unsafe, and multiprocessing's "spawn"
    would re-import the parent's main module (all of Beam, in a Beam worker),
    seconds per start. ``decode`` is what the child runs instead of decode_excerpt,
    with the same arguments, returning an array of any shape and dtype; ``warm_up``,
    if given, runs once in the child before it takes a track (imports, checks), and
    its failure is systemic. Both must be importable by name.

    ``decoder(uri)`` returns one track's result. :meth:`send` and :meth:`receive`
    keep several tracks queued, so the child never waits for the parent between
    tracks; results come back in the order sent.
    """

    def __init__(self, params: MelParams, *,
                 timeout_s: float = SpectrogramOptions.decode_timeout_s,
                 min_duration_s: float = 0.0, max_bytes: int | None = None,
                 max_duration_s: float | None = None,
                 decode: Callable[..., np.ndarray] = decode_excerpt,
                 warm_up: Callable[[], None] | None = None) -> None:
        self.params = params
        self.timeout_s = timeout_s
        self._kwargs = {"min_duration_s": min_duration_s, "max_bytes": max_bytes,
                        "max_duration_s": max_duration_s}
        self._decode = decode
        self._warm_up = warm_up
        self._process: subprocess.Popen | None = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._ready = False
        self._queued: collections.deque[str] = collections.deque()  # sent, not yet received
        self._since = 0.0  # when the child began the oldest queued track

    @property
    def settings(self) -> tuple:
        """What decides the child's results: decoders with equal settings are interchangeable."""
        warm_up = self._warm_up
        if isinstance(warm_up, functools.partial):  # equal partials are not ==
            warm_up = (warm_up.func, warm_up.args, tuple(warm_up.keywords.items()))
        return (self.params, self.timeout_s, tuple(self._kwargs.items()), self._decode, warm_up)

    def __call__(self, uri: str) -> np.ndarray:
        self.send(uri)
        return self.receive()

    @property
    def queued(self) -> int:
        """Tracks sent whose results are not received yet."""
        return len(self._queued)

    @property
    def connection(self) -> multiprocessing.connection.Connection | None:
        """The pipe to the child, readable when the oldest queued result is there (for
        multiprocessing.connection.wait)."""
        return self._conn

    @property
    def deadline(self) -> float:
        """time.monotonic() by which the oldest queued track must be done."""
        return self._since + self.timeout_s

    def send(self, uri: str) -> None:
        """Queue ``uri``; its result comes from a later :meth:`receive`."""
        if self._process is None or (not self._queued and self._process.poll() is not None):
            self.start()
        self._wait_ready()
        if not self._queued:
            self._since = time.monotonic()
        self._queued.append(uri)
        try:
            self._conn.send(uri)
        except OSError:  # the child died; receive() says why
            pass

    def receive(self) -> np.ndarray:
        """The result of the oldest queued track; DecodeError (or MelError) when the
        track is at fault, SystemicError when the environment is."""
        uri = self._queued[0]
        try:
            if not self._conn.poll(max(0.0, self.deadline - time.monotonic())):
                self._restart()
                raise DecodeError(f"{uri}: decoding timed out after {self.timeout_s:g} s")
            status, result = self._conn.recv()
            if status == "ok":  # the values follow as raw bytes: no pickling, one copy less
                shape, dtype = result
                values = np.empty(int(np.prod(shape)), dtype)
                self._conn.recv_bytes_into(values)
        except (EOFError, OSError):  # the child died: broken pipe, reset, closed
            reason = self._exit_reason()
            self._restart()
            raise DecodeError(f"{uri}: decoder process died ({reason})") from None
        self._queued.popleft()
        self._since = time.monotonic()
        if status == "broken":
            self.close()
            raise SystemicError(result)
        if status != "ok":
            stage, message = result
            raise (MelError if stage == MelError.stage else DecodeError)(message)
        return values.reshape(shape)

    @property
    def pid(self) -> int | None:
        """Process id of the running child, if any."""
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the child, without waiting for it to be ready: it imports and warms up
        while the caller goes on. SystemicError when it cannot start."""
        self.close()
        self._conn, child_conn = multiprocessing.Pipe()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", "from jobs.spectrograms import decode; "
                 f"decode._serve({child_conn.fileno()})"],
                pass_fds=[child_conn.fileno()], stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(
                    filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))})
        except OSError as err:
            raise SystemicError(f"cannot start a decoder process: {err}") from err
        finally:
            child_conn.close()
        try:
            # The parent's import path first, so that the child can then unpickle ``decode``.
            self._conn.send(sys.path)
            self._conn.send((self._decode, self._warm_up, self.params.to_dict(), self._kwargs))
        except OSError:
            pass  # the child died at once; _wait_ready says so

    def _wait_ready(self) -> None:
        """SystemicError unless the child gets ready (its imports fail, say): that would
        fail every track alike."""
        if self._ready:
            return
        try:
            answer = self._conn.recv() if self._conn.poll(_START_TIMEOUT_S) else None
        except (EOFError, OSError):
            answer = None
        if answer != "ready":
            reason = answer[1] if isinstance(answer, tuple) else (
                f"the decoder process did not start ({self._exit_reason()}); its error, "
                "if any, is logged above")
            self.close()
            raise SystemicError(reason)
        self._ready = True

    def _restart(self) -> None:
        """Drop the oldest queued track, which failed, and give the tracks queued behind
        it to a fresh child in place of the dead or hung one."""
        behind = list(self._queued)[1:]
        self._queued.clear()
        self.start()
        for uri in behind:
            self.send(uri)

    def _exit_reason(self) -> str:
        process, self._process = self._process, None
        if process is None:
            return "not started"
        try:
            code = process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    def close(self) -> None:
        """Stop the child process; the next send starts a new one."""
        self._ready = False
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait()

    def __enter__(self) -> IsolatedDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Decoders started ahead of need by start_spares, for take_decoder to hand out.
_spares: list[IsolatedDecoder] = []
_spares_lock = threading.Lock()


def start_spares(count: int, params: MelParams, **settings) -> None:
    """Start ``count`` decoders (IsolatedDecoder's arguments) for :func:`take_decoder`
    in this process: their children import and warm up while the caller builds and
    starts its pipeline, instead of after."""
    decoders = [IsolatedDecoder(params, **settings) for _ in range(count)]
    for decoder in decoders:
        decoder.start()
    with _spares_lock:
        _spares.extend(decoders)


def take_decoder(params: MelParams, **settings) -> IsolatedDecoder:
    """A spare started with these arguments, if there is one; else a new decoder."""
    wanted = IsolatedDecoder(params, **settings)
    with _spares_lock:
        for i, spare in enumerate(_spares):
            if spare.settings == wanted.settings:
                return _spares.pop(i)
    return wanted


def close_spares() -> None:
    """Stop the spares nobody took."""
    with _spares_lock:
        while _spares:
            _spares.pop().close()


# Directory holding the ``jobs`` package, for the child's import path.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])

# Seconds a new decoder process has to import its modules and say it is ready.
_START_TIMEOUT_S = 60.0


def _serve(fd: int) -> None:
    """Child loop of IsolatedDecoder on connection ``fd``.

    Receives the parent's import path and its configuration, warms up and answers
    "ready", then receives URIs; answers each with ("ok", (shape, dtype)) and the
    values as raw bytes, ("bad", (stage, error message)) when the track is at fault,
    or ("broken", error message) when the environment is (see :func:`is_systemic`),
    which is also the answer instead of "ready" when warming up fails. Returns when
    the parent closes the pipe or dies.
    """
    conn = multiprocessing.connection.Connection(fd)
    try:
        sys.path.extend(path for path in conn.recv() if path not in sys.path)
        decode, warm_up, params, kwargs = conn.recv()
        params = MelParams.from_dict(params)
        if warm_up is not None:
            warm_up()
    except EOFError:
        return
    except Exception as err:  # nothing can be done in this environment
        conn.send(("broken", systemic_message(err)))
        return
    conn.send("ready")
    while True:
        try:
            uri = conn.recv()
        except (EOFError, OSError):  # the parent closed the pipe or died
            return
        try:
            values = np.ascontiguousarray(decode(uri, params, **kwargs))
        except Exception as err:
            if is_systemic(err):
                conn.send(("broken", systemic_message(err)))
            elif isinstance(err, DecodeError):
                conn.send(("bad", (err.stage, str(err))))
            else:
                conn.send(("bad", (DecodeError.stage, f"{uri}: {err!r}")))
            continue
        conn.send(("ok", (values.shape, values.dtype.str)))
        conn.send_bytes(values)
