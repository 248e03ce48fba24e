"""Per-track work in long-lived child processes, so that a crash or a hang costs one track.

:class:`IsolatedDecoder` runs :func:`jobs.spectrograms.decode.decode_excerpt`, or
another per-track function, in a child interpreter; :func:`start_spares` starts some
ahead of need and :func:`take_decoder` hands them out. This module imports no torch,
so a child loads only what its per-track function needs.
"""
from __future__ import annotations

import collections
import functools
import multiprocessing
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from jobs.spectrograms.decode import (DecodeError, MelError, SystemicError, decode_excerpt,
                                      is_systemic, systemic_message)
from schemas.config import MelParams, SpectrogramOptions


class IsolatedDecoder:
    """:func:`decode_excerpt`, or another per-track function, in a long-lived child process.

    FFmpeg can crash (segfault) or hang on broken input. Here that costs one track:
    its result raises DecodeError naming the URI and the signal or timeout, and a
    fresh child takes over the tracks queued behind it. Not thread-safe; use one per
    thread.

    The child is a new interpreter (``python -c``) that imports only this module
    and decode.py:
    forking a process that runs threads is unsafe, and multiprocessing's "spawn"
    would re-import the parent's main module (all of Beam, in a Beam worker),
    seconds per start. ``decode`` is what the child runs instead of decode_excerpt,
    with the same arguments and any a track is sent with (``send(uri, *args)``),
    returning an array of any shape and dtype, or a tuple of such arrays and
    DecodeErrors (the track's outputs, which may fail apart); ``warm_up``, if given,
    runs once in the child before it takes a track (imports, checks), and its failure
    is systemic. Both must be importable by name.

    ``decoder(uri, *args)`` returns one track's result. :meth:`send` and :meth:`receive`
    keep several tracks queued, so the child never waits for the parent between
    tracks; results come back in the order sent.
    """

    def __init__(self, params: MelParams, *,
                 timeout_s: float = SpectrogramOptions.decode_timeout_s,
                 decode: Callable[..., np.ndarray] = decode_excerpt,
                 warm_up: Callable[[], None] | None = None, **limits) -> None:
        self.params = params
        self.timeout_s = timeout_s
        self._kwargs = limits  # decode_excerpt's keyword arguments
        self._decode = decode
        self._warm_up = warm_up
        self._process: subprocess.Popen | None = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._ready = False
        # (uri, args) sent, not yet received
        self._queued: collections.deque[tuple[str, tuple]] = collections.deque()
        self._since = 0.0  # when the child began the oldest queued track

    @property
    def settings(self) -> tuple:
        """What decides the child's results: decoders with equal settings are interchangeable."""
        warm_up = self._warm_up
        if isinstance(warm_up, functools.partial):  # equal partials are not ==
            warm_up = (warm_up.func, warm_up.args, tuple(warm_up.keywords.items()))
        return (self.params, self.timeout_s, tuple(self._kwargs.items()), self._decode, warm_up)

    def __call__(self, uri: str, *args) -> np.ndarray | tuple:
        self.send(uri, *args)
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

    def send(self, uri: str, *args) -> None:
        """Queue ``uri`` (with ``args`` for the per-track function); its result comes
        from a later :meth:`receive`."""
        if self._process is None or (not self._queued and self._process.poll() is not None):
            self.start()
        self._wait_ready()
        if not self._queued:
            self._since = time.monotonic()
        self._queued.append((uri, args))
        try:
            self._conn.send((uri, args))
        except OSError:  # the child died; receive() says why
            pass

    def receive(self) -> np.ndarray | tuple:
        """The result of the oldest queued track; DecodeError (or MelError) when the
        track is at fault, SystemicError when the environment is."""
        uri = self._queued[0][0]
        try:
            if not self._conn.poll(max(0.0, self.deadline - time.monotonic())):
                self._restart()
                raise DecodeError(f"{uri}: decoding timed out after {self.timeout_s:g} s")
            status, result = self._conn.recv()
            if status == "ok":
                values = self._receive_array(*result)
            elif status == "parts":
                values = tuple(self._receive_array(*part) if kind == "ok" else _track_error(*part)
                               for kind, part in result)
        except (EOFError, OSError):  # the child died: broken pipe, reset, closed
            reason = self._exit_reason()
            self._restart()
            raise DecodeError(f"{uri}: decoder process died ({reason})") from None
        self._queued.popleft()
        self._since = time.monotonic()
        if status == "broken":
            self.close()
            raise SystemicError(result)
        if status not in ("ok", "parts"):
            raise _track_error(*result)
        return values

    def _receive_array(self, shape: tuple, dtype: str) -> np.ndarray:
        # the values follow as raw bytes: no pickling, one copy less
        values = np.empty(int(np.prod(shape)), dtype)
        self._conn.recv_bytes_into(values)
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
                [sys.executable, "-c", "from jobs.spectrograms import pool; "
                 f"pool._serve({child_conn.fileno()})"],
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
        for uri, args in behind:
            self.send(uri, *args)

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


def _track_error(stage: str, message: str) -> DecodeError:
    """The error a child reported for a track (or one output of it), by its stage."""
    return (MelError if stage == MelError.stage else DecodeError)(message)


def _failure(uri: str, err: Exception) -> tuple[str, str]:
    """(stage, message) of a track's failure, for the parent."""
    if isinstance(err, DecodeError):
        return err.stage, str(err)
    return DecodeError.stage, f"{uri}: {err!r}"


# Directory holding the ``jobs`` package, for the child's import path.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])

# Seconds a new decoder process has to import its modules and say it is ready.
_START_TIMEOUT_S = 60.0


def _serve(fd: int) -> None:
    """Child loop of IsolatedDecoder on connection ``fd``.

    Receives the parent's import path and its configuration, warms up and answers
    "ready", then receives (URI, args); answers each with ("ok", (shape, dtype)) and the
    values as raw bytes; or, for a tuple of results, ("parts", [("ok", (shape, dtype))
    or ("bad", (stage, error message)) each]) and the values of each "ok" part; or
    ("bad", (stage, error message)) when the track is at fault, or ("broken", error
    message) when the environment is (see :func:`is_systemic`), which is also the
    answer instead of "ready" when warming up fails. Returns when the parent closes
    the pipe or dies.
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
            uri, args = conn.recv()
        except (EOFError, OSError):  # the parent closed the pipe or died
            return
        try:
            result = decode(uri, params, *args, **kwargs)
        except Exception as err:
            if is_systemic(err):
                conn.send(("broken", systemic_message(err)))
            else:
                conn.send(("bad", _failure(uri, err)))
            continue
        if isinstance(result, tuple):
            parts = [part if isinstance(part, Exception) else np.ascontiguousarray(part)
                     for part in result]
            conn.send(("parts", [("bad", _failure(uri, part)) if isinstance(part, Exception)
                                 else ("ok", (part.shape, part.dtype.str)) for part in parts]))
            for part in parts:
                if not isinstance(part, Exception):
                    conn.send_bytes(part)
            continue
        values = np.ascontiguousarray(result)
        conn.send(("ok", (values.shape, values.dtype.str)))
        conn.send_bytes(values)
