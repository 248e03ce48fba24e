"""Build the embedded demo catalogue: synthetic tracks in musical styles, and plays.

Users' tastes follow styles, and within a style the tempo: each style has its own
tempo, register, timbre and percussion, and every track is played at its style's tempo
or 1.4 times faster with the same pitches, so that knowing a track's style is not
enough to know who likes it, and a model must hear rhythm, not only timbre. The
catalogue, the track ids and the file formats say nothing about either: only the audio
does. A model that predicts the collaborative-filtering factors of cold tracks from
their audio therefore has to learn from the sound.

Output layout (``out`` appears only once complete)::

    out/audio/<track_id>.<mp3|flac|ogg|m4a>   mixed codecs, mono/stereo, 22.05 to 48 kHz
    out/catalogue.parquet                      schemas.CATALOGUE, every track
    out/plays.parquet                          schemas.PLAYS, plays of warm tracks only
    out/heldout_plays.parquet                  schemas.PLAYS, plays of cold tracks only
    out/truth.parquet                          track_id, style, tempo, cold, popularity

Run ``python -m jobs.demo_catalogue --out DIR`` (``--help`` lists the knobs).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import schemas
from schemas import cli, layout, storage
from schemas.config import DemoConfig

logger = logging.getLogger(__name__)


# Independent random streams, so that e.g. changing n_users leaves the audio alone.
_CATALOGUE_STREAM, _PLAYS_STREAM, _AUDIO_STREAM = 0, 1, 2


def _rng(config: DemoConfig, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, stream, *keys])


# ---------------------------------------------------------------------------------
# Music helpers. Pitches are MIDI note numbers, times are seconds.

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
DORIAN = (0, 2, 3, 5, 7, 9, 10)
MIXOLYDIAN = (0, 2, 4, 5, 7, 9, 10)
# Chord roots as scale degrees, one chord per bar: I-IV-V-I, I-vi-IV-V, i-VII-VI-VII...
PROGRESSIONS = ((0, 3, 4, 0), (0, 5, 3, 4), (0, 6, 5, 6), (0, 4, 5, 3), (0, 0, 3, 4))
TRIAD = np.array([0, 2, 4])


def _hz(midi: np.ndarray | float) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def _pitch(root: int, scale: Sequence[int], degrees: np.ndarray) -> np.ndarray:
    """MIDI pitches of scale ``degrees`` (ints, may exceed 7 or be negative) over ``root``."""
    degrees = np.asarray(degrees)
    return root + 12 * (degrees // 7) + np.asarray(scale)[degrees % 7]


def _chords(rng: np.random.Generator, n_bars: int) -> np.ndarray:
    """Chord-root scale degrees, one per bar: (n_bars,) int."""
    progression = PROGRESSIONS[rng.integers(len(PROGRESSIONS))]
    return np.resize(np.array(progression), n_bars)


def _tempo(rng: np.random.Generator, bpm: float, jitter: float = 0.04) -> float:
    """``bpm`` jittered by up to +-``jitter`` (relative), so tracks of a style differ."""
    return bpm * (1.0 + rng.uniform(-jitter, jitter))


# ---------------------------------------------------------------------------------
# DSP primitives, vectorised over samples. Signals are float32 (n_samples,); running
# phases stay float64 because float32 cannot count 10^5 cycles to a fraction of one.

@dataclass(frozen=True)
class Events:
    """A train of non-overlapping events, each lasting until the next one starts.

    index: (n,) int64, the event sounding at each sample, -1 before the first.
    since: (n,) float32, seconds since that event started (inf before the first).
    until: (n,) float32, seconds until the next event starts (or the track ends).
    """

    index: np.ndarray
    since: np.ndarray
    until: np.ndarray

    def elapsed(self) -> np.ndarray:
        """Seconds since the current event, 0 before the first: (n,) float32."""
        return np.where(self.index >= 0, self.since, np.float32(0.0))


def _events(n: int, sr: int, onsets_s: np.ndarray) -> Events:
    """Events starting at ``onsets_s`` (seconds, ascending) over ``n`` samples at ``sr`` Hz."""
    starts = np.clip(np.round(np.asarray(onsets_s) * sr).astype(np.int64), 0, n)
    bounds = np.concatenate([[0], starts, [n]])
    lengths = np.diff(bounds)  # the first segment is the silence before the first onset
    samples = np.arange(n)
    index = np.repeat(np.arange(-1, len(starts)), lengths)
    since = (samples - np.repeat(bounds[:-1], lengths)).astype(np.float32) / np.float32(sr)
    until = (np.repeat(bounds[1:], lengths) - samples).astype(np.float32) / np.float32(sr)
    since[:lengths[0]] = np.inf
    return Events(index, since, until)


def _envelope(ev: Events, attack_s: float, decay_s: float, release_s: float = 0.005) -> np.ndarray:
    """Linear attack, exponential decay, and a short fade before the next event (no clicks).

    Returns (n,) float32 gain, 0 before the first event.
    """
    fade_in = np.minimum(np.float32(1.0), ev.since * np.float32(1.0 / attack_s))
    fade_out = np.minimum(np.float32(1.0), ev.until * np.float32(1.0 / release_s))
    decay = np.exp(ev.elapsed() * np.float32(-1.0 / decay_s))
    return np.where(ev.index >= 0, fade_in * fade_out * decay, np.float32(0.0))


def _phase(freq_hz: np.ndarray, sr: int) -> np.ndarray:
    """Running phase in cycles, (n,) float64, of a per-sample frequency in Hz.

    Continuous across note changes, so a new pitch does not click.
    """
    return np.cumsum(freq_hz, dtype=np.float64) / sr


def _cycle(phase: np.ndarray) -> np.ndarray:
    """Position within the current cycle, [0, 1) float32."""
    return (phase - np.floor(phase)).astype(np.float32)


def _sine(phase: np.ndarray) -> np.ndarray:
    return np.sin(np.float32(2.0 * np.pi) * _cycle(phase))


def _saw(phase: np.ndarray) -> np.ndarray:
    return np.float32(2.0) * _cycle(phase) - np.float32(1.0)


def _pulse(phase: np.ndarray, duty: float) -> np.ndarray:
    return np.where(_cycle(phase) < duty, np.float32(1.0), np.float32(-1.0))


def _triangle(phase: np.ndarray) -> np.ndarray:
    return np.float32(2.0) * np.abs(_saw(phase)) - np.float32(1.0)


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal(n, dtype=np.float32)


def _filter(x: np.ndarray, sr: int, low_hz: float = 0.0, high_hz: float | None = None,
            order: int = 2) -> np.ndarray:
    """Zero-phase Butterworth-shaped band-pass of a whole (n,) float32 signal, via the FFT."""
    f = np.fft.rfftfreq(len(x), 1.0 / sr)
    gain = np.ones_like(f)
    if high_hz is not None:
        gain /= np.sqrt(1.0 + (f / high_hz) ** (2 * order))
    if low_hz > 0:
        gain /= np.sqrt(1.0 + (low_hz / np.maximum(f, 1e-6)) ** (2 * order))
    return np.fft.irfft(np.fft.rfft(x) * gain.astype(np.float32), n=len(x))


def _kick(n: int, sr: int, onsets_s: np.ndarray, start_hz: float, end_hz: float,
          decay_s: float) -> np.ndarray:
    """Bass drum: a sine whose pitch falls from ``start_hz`` to ``end_hz`` after each onset."""
    ev = _events(n, sr, onsets_s)
    t = ev.elapsed()
    sweep_s = 0.03
    cycles = end_hz * t + (start_hz - end_hz) * sweep_s * (1.0 - np.exp(t * (-1.0 / sweep_s)))
    return _sine(cycles) * _envelope(ev, 0.001, decay_s)


def _noise_hits(noise: np.ndarray, sr: int, onsets_s: np.ndarray, decay_s: float,
                low_hz: float = 0.0, high_hz: float | None = None) -> np.ndarray:
    """Filtered noise bursts (hi-hat, snare, shaker) decaying from each onset."""
    shaped = _filter(noise, sr, low_hz, high_hz) if (low_hz or high_hz) else noise
    return shaped * _envelope(_events(len(noise), sr, onsets_s), 0.001, decay_s)


def _karplus_strong(rng: np.random.Generator, freq_hz: float, n: int, sr: int,
                    brightness: float, decay: float) -> np.ndarray:
    """Plucked string: (n,) float32 samples of a Karplus-Strong string.

    Every period the delay line is smoothed by (1 + z^-1)/2 and scaled by ``decay``.
    Doing that k times multiplies the delay line's DFT by H^k, so all periods are
    computed at once instead of sample by sample.
    """
    period = max(2, int(round(sr / freq_hz - 0.5)))  # the averaging adds half a sample
    burst = rng.uniform(-1.0, 1.0, period)
    burst = brightness * burst + (1.0 - brightness) * 0.5 * (burst + np.roll(burst, 1))
    n_periods = -(-n // period)
    k = np.arange(period // 2 + 1)
    smoothing = decay * 0.5 * (1.0 + np.exp(-2j * np.pi * k / period))
    powers = np.full((n_periods, len(k)), smoothing)
    powers[0] = 1.0
    powers = np.cumprod(powers, axis=0)  # row j is smoothing ** j
    periods = np.fft.irfft(np.fft.rfft(burst)[None, :] * powers, n=period, axis=1)
    return periods.reshape(-1)[:n].astype(np.float32)


def _freq(ev: Events, midi: np.ndarray) -> np.ndarray:
    """(n,) float64 frequency in Hz of the note ``midi[i]`` of event i, at every sample."""
    hz = _hz(midi)
    if hz.size == 0:  # a voice with no notes (a very short track): index is -1 throughout
        return np.zeros(len(ev.index))
    return hz[np.maximum(ev.index, 0)]


def _voice_line(n: int, sr: int, onsets_s: np.ndarray, midi: np.ndarray,
                n_voices: int = 1) -> list[tuple[Events, np.ndarray]]:
    """Split a note list over ``n_voices`` alternating voices so notes can ring on.

    Returns per voice its Events and (n,) float64 per-sample frequency in Hz.
    """
    voices = []
    for v in range(n_voices):
        ev = _events(n, sr, onsets_s[v::n_voices])
        voices.append((ev, _freq(ev, np.asarray(midi)[v::n_voices])))
    return voices


# ---------------------------------------------------------------------------------
# Styles. Each renders (n,) float32 mono audio at ``sr`` Hz from its own rng.

def _drone(rng: np.random.Generator, n: int, sr: int, tempo: float = 1.0) -> np.ndarray:
    """No beat: sine pads changing every 3-5 s over a held root (MIDI 36-59), a slow
    swell and low wind noise; no percussion."""
    t = np.arange(n) / sr
    root = 36 + int(rng.integers(12))
    scale = (MINOR, DORIAN, MAJOR)[rng.integers(3)]
    onsets = np.arange(0.0, n / sr, rng.uniform(3.0, 5.0) / tempo)
    degrees = _chords(rng, len(onsets))
    lfo = 1.0 + 0.3 * _sine(tempo * rng.uniform(0.08, 0.25) * t + rng.uniform())
    f0 = float(_hz(root))
    out = 0.6 * (_sine(f0 * t) + 0.4 * _sine(2.0 * f0 * t) + 0.5 * _sine(1.004 * f0 * t))
    detune = rng.uniform(1.002, 1.006)
    ev = _events(n, sr, onsets)
    env = 0.35 * _envelope(ev, attack_s=0.8, decay_s=30.0, release_s=0.6)
    for tone in TRIAD:
        freq = _freq(ev, _pitch(root + 12, scale, degrees + tone))
        out += env * (_sine(_phase(freq, sr)) + _sine(_phase(freq * detune, sr)))
    wind = _filter(_noise(rng, n), sr, 0.0, rng.uniform(200.0, 500.0))
    return lfo * out + rng.uniform(0.0, 0.3) * wind


def _four_on_the_floor(rng: np.random.Generator, n: int, sr: int, tempo: float = 1.0) -> np.ndarray:
    """~126 bpm: kick on every beat, off-beat hi-hats, low-passed saw bass in 16ths
    (MIDI 33-56), sometimes a clap on 2 and 4."""
    beat = 60.0 / (tempo * _tempo(rng, 126.0))
    dur = n / sr
    beats = np.arange(0.0, dur, beat)
    noise = _noise(rng, n)
    out = _kick(n, sr, beats, rng.uniform(120, 170), rng.uniform(45, 55), rng.uniform(0.15, 0.3))
    out += rng.uniform(0.15, 0.3) * _noise_hits(noise, sr, beats + beat / 2, 0.04, low_hz=7000.0)
    if rng.random() < 0.5:
        out += 0.25 * _noise_hits(noise, sr, beats[1::2], 0.08, 900.0, 3000.0)
    root = 33 + int(rng.integers(12))
    steps = np.arange(0.0, dur, beat / 4)
    pattern = rng.random(16) < 0.5
    pattern[2::4] = True  # the off-beat bass note carries the groove
    keep = np.resize(pattern, len(steps))
    offsets = rng.choice([0, 0, 0, 7, 12], size=len(steps))
    (ev, freq), = _voice_line(n, sr, steps[keep], root + offsets[keep])
    bass = _saw(_phase(freq, sr)) * _envelope(ev, 0.003, rng.uniform(0.08, 0.2))
    out += rng.uniform(0.4, 0.6) * _filter(bass, sr, 0.0, rng.uniform(300.0, 1200.0))
    return out


def _chiptune(rng: np.random.Generator, n: int, sr: int, tempo: float = 1.0) -> np.ndarray:
    """~160 bpm: pulse-wave arpeggios in 16ths (MIDI 72-102), white-noise snare on 2
    and 4, sometimes a triangle bass two octaves down."""
    beat = 60.0 / (tempo * _tempo(rng, 160.0))
    dur = n / sr
    steps = np.arange(0.0, dur, beat / 4)
    root = 72 + int(rng.integers(12))
    scale = (MAJOR, MINOR, MIXOLYDIAN)[rng.integers(3)]
    chord = _chords(rng, len(steps) // 16 + 1)[np.arange(len(steps)) // 16]
    shape = rng.permutation(np.array([0, 2, 4, 7]))  # arpeggio order within a chord
    (ev, freq), = _voice_line(n, sr, steps,
                              _pitch(root, scale, chord + shape[np.arange(len(steps)) % 4]))
    gate = _envelope(ev, 0.002, rng.uniform(0.15, 0.6), release_s=0.01)
    out = 0.5 * _pulse(_phase(freq, sr), float(rng.choice([0.125, 0.25, 0.5]))) * gate
    beats = np.arange(0.0, dur, beat)
    out += 0.5 * _noise_hits(_noise(rng, n), sr, beats[1::2], rng.uniform(0.05, 0.1))
    if rng.random() < 0.5:
        (ev, freq), = _voice_line(n, sr, steps[::2], _pitch(root - 24, scale, chord[::2]))
        out += 0.3 * _triangle(_phase(freq, sr)) * _envelope(ev, 0.002, 0.3, 0.01)
    return out


def _plucked(rng: np.random.Generator, n: int, sr: int, tempo: float = 1.0) -> np.ndarray:
    """~100 bpm: fingerpicked Karplus-Strong strings in 8ths (MIDI 50-80), a soft
    shaker and a soft low tom."""
    beat = 60.0 / (tempo * _tempo(rng, 100.0))
    dur = n / sr
    root = 50 + int(rng.integers(12))
    scale = (MAJOR, MINOR, DORIAN)[rng.integers(3)]
    eighths = np.arange(0.0, dur, beat / 2)
    chord = _chords(rng, len(eighths) // 8 + 1)[np.arange(len(eighths)) // 8]
    picking = np.array([0, 4, 2, 7, 4, 2, 7, 4])
    if rng.random() < 0.3:
        picking = rng.permutation(picking)
    pitches = _pitch(root, scale, chord + picking[np.arange(len(eighths)) % 8])
    ring = int(1.2 * sr)
    brightness, decay = rng.uniform(0.3, 0.9), rng.uniform(0.990, 0.997)
    out = np.zeros(n + ring, dtype=np.float32)
    for onset, pitch in zip(eighths, pitches):
        start = int(round(onset * sr))
        out[start:start + ring] += _karplus_strong(rng, float(_hz(pitch)), ring, sr,
                                                   brightness, decay)
    out = 0.6 * out[:n]
    out += rng.uniform(0.03, 0.08) * _noise_hits(_noise(rng, n), sr, eighths, 0.03,
                                                 3000.0, 9000.0)
    out += 0.25 * _kick(n, sr, np.arange(0.0, dur, 2 * beat), 140.0, 95.0, 0.15)
    return out


def _fm_bells(rng: np.random.Generator, n: int, sr: int, tempo: float = 1.0) -> np.ndarray:
    """~70 bpm: sparse FM bells with inharmonic partials (MIDI 71-104), ringing over
    each other, with an echo; no percussion."""
    beat = 60.0 / (tempo * _tempo(rng, 70.0))
    dur = n / sr
    lengths = rng.choice([1.0, 1.0, 2.0, 0.5], size=int(4 * dur / beat) + 4)
    onsets = np.cumsum(np.concatenate([[0.0], lengths[:-1]])) * beat
    onsets = onsets[onsets < dur]
    root = 76 + int(rng.integers(12))
    scale = (MAJOR, MINOR, MIXOLYDIAN)[rng.integers(3)]
    walk = np.clip(np.cumsum(rng.integers(-2, 3, size=len(onsets))), -3, 9)
    ratio, index0 = float(rng.choice([1.4, 2.76, 3.5])), rng.uniform(2.0, 5.0)
    out = np.zeros(n, dtype=np.float32)
    for ev, freq in _voice_line(n, sr, onsets, _pitch(root, scale, walk), n_voices=2):
        carrier = _phase(freq, sr)
        mod_index = index0 * np.exp(ev.elapsed() * np.float32(-1.0 / 0.8))
        tone = np.sin(np.float32(2 * np.pi) * _cycle(carrier) + mod_index * _sine(ratio * carrier))
        out += tone * _envelope(ev, 0.002, rng.uniform(0.8, 1.6), release_s=0.05)
    delay = int(rng.uniform(0.25, 0.4) * sr)
    out[delay:] += 0.35 * out[:-delay].copy()
    return out


def _boom_bap(rng: np.random.Generator, n: int, sr: int, tempo: float = 1.0) -> np.ndarray:
    """~90 bpm: swung kick/snare groove, sine sub-bass on the kicks (MIDI 28-50),
    electric-piano chord stabs (MIDI 52-75) and vinyl crackle."""
    beat = 60.0 / (tempo * _tempo(rng, 90.0))
    dur = n / sr
    bars = np.arange(0.0, dur, 4 * beat)
    swing = rng.uniform(0.55, 0.62)  # the second 8th of each beat comes late

    def at(beat_positions: Sequence[float]) -> np.ndarray:
        """Onset times, seconds, of positions within every bar (in beats, swung)."""
        pos = np.asarray(beat_positions, dtype=np.float64)
        whole = np.floor(pos)
        swung = whole + np.where(pos - whole >= 0.5, swing, pos - whole)
        times = (bars[:, None] + swung[None, :] * beat).reshape(-1)
        return times[times < dur]

    def bar_of(times: np.ndarray) -> np.ndarray:
        return np.minimum((times // (4 * beat)).astype(int), len(bars) - 1)

    kicks = at(((0, 1.5, 2.5), (0, 2.5), (0, 0.5, 2.5, 3.5))[rng.integers(3)])
    noise = _noise(rng, n)
    out = 0.9 * _kick(n, sr, kicks, rng.uniform(80, 110), rng.uniform(38, 48), 0.35)
    snare_ev = _events(n, sr, at((1, 3)))
    snare = _filter(noise, sr, 1000.0, 6000.0) * _envelope(snare_ev, 0.001, 0.12)
    snare += 0.5 * _sine(190.0 * snare_ev.elapsed()) * _envelope(snare_ev, 0.001, 0.06)
    out += rng.uniform(0.4, 0.6) * snare
    hats = at((0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5))
    out += rng.uniform(0.05, 0.15) * _noise_hits(noise[::-1].copy(), sr, hats, 0.03, 6000.0)
    root = 40 + int(rng.integers(12))
    scale = (MINOR, DORIAN)[rng.integers(2)]
    chord = _chords(rng, len(bars))
    (ev, freq), = _voice_line(n, sr, kicks, _pitch(root - 12, scale, chord[bar_of(kicks)]))
    out += 0.6 * _sine(_phase(freq, sr)) * _envelope(ev, 0.005, 0.4)
    stabs = at((0, 2.5))
    ev = _events(n, sr, stabs)
    env = 0.18 * _envelope(ev, 0.004, 0.9, 0.02)
    tine = 0.4 * np.exp(ev.elapsed() * np.float32(-1.0 / 0.15))  # an e-piano's bright attack
    for tone in TRIAD:
        phase = _phase(_freq(ev, _pitch(root + 12, scale, chord[bar_of(stabs)] + tone)), sr)
        out += env * (_sine(phase) + tine * _sine(4 * phase))
    clicks = (rng.random(n) < rng.uniform(5.0, 20.0) / sr) * rng.uniform(-1, 1, n)
    out += 0.3 * np.diff(clicks, prepend=0.0).astype(np.float32)  # vinyl crackle, high-passed
    return out


StyleFn = Callable[[np.random.Generator, int, int], np.ndarray]
STYLES: dict[str, StyleFn] = {
    "drone": _drone,
    "four_on_the_floor": _four_on_the_floor,
    "chiptune": _chiptune,
    "plucked": _plucked,
    "fm_bells": _fm_bells,
    "boom_bap": _boom_bap,
}


# Within a style, a track is played at its style's tempo or this much faster (the
# pitches stay): what listeners' tastes follow besides the style.
TEMPOS = {"steady": 1.0, "fast": 1.4}


def render_track(style: str, rng: np.random.Generator, duration_s: float,
                 sr: int, tempo: int = 0) -> np.ndarray:
    """One track of ``style`` at ``tempo`` (an index into TEMPOS): (n,) float32 mono at
    ``sr`` Hz, peak at most 0.8.

    Loudness is drawn per track (RMS -22..-14 dBFS) so level alone does not
    identify a track; the peak is then held 2 dB below full scale, because lossy
    codecs overshoot the input's peak and would clip on decoding.
    """
    n = int(round(duration_s * sr))
    audio = STYLES[style](rng, n, sr, list(TEMPOS.values())[tempo])
    ramp = np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.02 * sr)
    audio = audio * np.minimum(1.0, ramp).astype(np.float32)  # 20 ms fades at both ends
    rms = np.sqrt(np.mean(audio ** 2)) + 1e-12
    audio *= 10.0 ** (rng.uniform(-22.0, -14.0) / 20.0) / rms
    peak = np.max(np.abs(audio))
    if peak > 0.8:
        audio *= 0.8 / peak
    return audio.astype(np.float32)


# ---------------------------------------------------------------------------------
# Encoding through PyAV's bundled FFmpeg.

@dataclass(frozen=True)
class Encoding:
    """How one file is written: extension, FFmpeg muxer and encoder, rate, channels."""

    ext: str
    container: str
    codec: str
    sample_rate: int
    channels: int
    codec_options: tuple[tuple[str, str], ...] = ()


# Ogg carries Opus (libopus, 48 kHz only): FFmpeg's own experimental Vorbis encoder,
# the only Vorbis one bundled, aborts the process on some inputs. LAME's fast
# algorithm (-q 7) and the pairing of rates with channel counts keep encoding cheap.
# Tracks cycle through these by index, independently of their style.
_LAME = (("compression_level", "7"),)
ENCODINGS: tuple[Encoding, ...] = (
    Encoding("mp3", "mp3", "libmp3lame", 44100, 1, _LAME),
    Encoding("flac", "flac", "flac", 44100, 2),
    Encoding("ogg", "ogg", "libopus", 48000, 2),
    Encoding("m4a", "ipod", "aac", 44100, 1),
    Encoding("mp3", "mp3", "libmp3lame", 22050, 2, _LAME),
    Encoding("flac", "flac", "flac", 22050, 1),
)


def encode(path: Path, audio: np.ndarray, encoding: Encoding) -> None:
    """Write ``audio``, (channels, n) float32 in [-1, 1] at the encoding's rate, to ``path``.

    Bit-exact flags keep FFmpeg from writing random stream serials and version
    strings, so equal audio gives equal bytes.
    """
    layout = "mono" if encoding.channels == 1 else "stereo"
    options = {"flags": "+bitexact", **dict(encoding.codec_options)}
    with av.open(str(path), "w", format=encoding.container,
                 options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(encoding.codec, rate=encoding.sample_rate,
                                      layout=layout, options=options)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio), format="fltp",
                                           layout=layout)
        frame.sample_rate = encoding.sample_rate
        frame.pts, frame.time_base = 0, Fraction(1, encoding.sample_rate)
        resampler = av.AudioResampler(format=stream.codec_context.format, layout=layout,
                                      rate=encoding.sample_rate)
        for converted in resampler.resample(frame):
            container.mux(stream.encode(converted))
        container.mux(stream.encode(None))


def _to_channels(rng: np.random.Generator, mono: np.ndarray, channels: int) -> np.ndarray:
    """(channels, n) float32: mono as is, or stereo with a random balance."""
    if channels == 1:
        return mono[None, :]
    pan = rng.uniform(-0.3, 0.3)
    return np.stack([mono * (1.0 - pan), mono * (1.0 + pan)]) / (1.0 + abs(pan))


def _make_track(config: DemoConfig, index: int, style: str, tempo: int, path: Path) -> None:
    """Synthesise and encode track number ``index``; its audio depends on the seed only."""
    rng = _rng(config, _AUDIO_STREAM, index)
    encoding = ENCODINGS[index % len(ENCODINGS)]
    mono = render_track(style, rng, config.duration_s, encoding.sample_rate, tempo)
    encode(path, _to_channels(rng, mono, encoding.channels).astype(np.float32), encoding)


# ---------------------------------------------------------------------------------
# The catalogue and the simulated listeners.

_CHOICE_CELLS = 1 << 22  # user x track cells sampled at once

_WORDS = ("amber", "echo", "harbour", "velvet", "signal", "lantern", "orbit", "meadow",
          "static", "river", "glass", "ember", "northern", "paper", "silver", "tide",
          "hollow", "neon", "quiet", "cinder", "atlas", "morning", "violet", "drift")


@dataclass(frozen=True)
class Tracks:
    """Per-track ground truth, all arrays (n_tracks,).

    style: int index into STYLES; tempo: int index into TEMPOS; popularity:
    float64 Zipf weights summing to 1; cold: bool; title, artist: str lists drawn
    independently of the sound.
    """

    ids: list[str]
    style: np.ndarray
    tempo: np.ndarray
    popularity: np.ndarray
    cold: np.ndarray
    title: list[str]
    artist: list[str]

    @property
    def kind(self) -> np.ndarray:
        """What tastes follow: style and tempo, an int in [0, len(STYLES) * 2)."""
        return self.style * len(TEMPOS) + self.tempo


def make_tracks(config: DemoConfig) -> Tracks:
    """Assign styles (balanced, in random order), tempos, popularity, cold split
    and metadata."""
    rng = _rng(config, _CATALOGUE_STREAM)
    n = config.n_tracks
    style = rng.permutation(np.arange(n) % len(STYLES))
    weights = np.arange(1, n + 1, dtype=np.float64) ** -config.popularity_exponent
    popularity = rng.permutation(weights / weights.sum())
    cold = np.zeros(n, dtype=bool)
    cold[rng.choice(n, size=int(round(config.cold_fraction * n)), replace=False)] = True
    first = rng.integers(len(_WORDS), size=n)
    second = (first + rng.integers(1, len(_WORDS), size=n)) % len(_WORDS)  # never the same
    title = [f"{_WORDS[a].title()} {_WORDS[b].title()}" for a, b in zip(first, second)]
    n_artists = max(1, n // 5)
    artist = [f"Demo Artist {a:03d}" for a in rng.integers(n_artists, size=n)]
    ids = [f"trk{i:05d}" for i in range(n)]
    tempo = rng.integers(len(TEMPOS), size=n)
    return Tracks(ids, style, tempo, popularity, cold, title, artist)


def _choice_weights(taste: np.ndarray, tracks: Tracks, taste_noise: float) -> np.ndarray:
    """(users, n_tracks) float64 rows summing to 1: popularity x taste(kind), mixed
    with ``taste_noise`` of popularity alone. taste: (users, n_kinds)."""
    affinity = taste[:, tracks.kind] * tracks.popularity[None, :]
    affinity /= affinity.sum(axis=1, keepdims=True)
    return (1.0 - taste_noise) * affinity + taste_noise * tracks.popularity[None, :]


def _choose_tracks(rng: np.random.Generator, weights: np.ndarray,
                   counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draw counts[u] distinct tracks for each user u with probability ~ weights[u].

    weights: (users, n_tracks) non-negative. Uses the Gumbel-top-k trick, which
    equals sequential sampling without replacement. Returns (user row, track) int arrays.
    """
    counts = np.minimum(counts, np.count_nonzero(weights > 0, axis=1))
    with np.errstate(divide="ignore"):
        keys = np.log(weights) + rng.gumbel(size=weights.shape)
    order = np.argsort(-keys, axis=1, kind="stable")
    users, ranks = np.nonzero(np.arange(weights.shape[1])[None, :] < counts[:, None])
    return users, order[users, ranks]


def _top_up_listeners(rng: np.random.Generator, taste: np.ndarray, tracks: Tracks,
                      users: np.ndarray, items: np.ndarray,
                      min_listeners: int) -> tuple[np.ndarray, np.ndarray]:
    """Give every track at least ``min_listeners`` users, chosen by taste for its kind."""
    listeners = np.bincount(items, minlength=len(tracks.ids))
    extra_users, extra_items = [], []
    for item in np.flatnonzero(listeners < min_listeners):
        weights = taste[:, tracks.kind[item]].copy()
        weights[users[items == item]] = 0.0
        need = min(min_listeners - listeners[item], np.count_nonzero(weights))
        if need <= 0:
            continue
        chosen = rng.choice(len(weights), size=need, replace=False, p=weights / weights.sum())
        extra_users.append(chosen)
        extra_items.append(np.full(need, item))
    return (np.concatenate([users, *extra_users]).astype(np.int64),
            np.concatenate([items, *extra_items]).astype(np.int64))


def simulate_plays(config: DemoConfig, tracks: Tracks) -> pa.Table:
    """Play counts of every (user, track) pair, warm and cold: schemas.PLAYS columns.

    A user's taste is a Dirichlet draw over kinds (style and tempo); they pick
    distinct tracks with probability ~ popularity x taste(kind), mixed with ``taste_noise`` of pure
    popularity, and play each a Zipf-distributed number of times.
    """
    rng = _rng(config, _PLAYS_STREAM)
    n_users, n_tracks = config.n_users, config.n_tracks
    taste = rng.dirichlet(np.full(len(STYLES) * len(TEMPOS), config.taste_concentration),
                          size=n_users)
    counts = rng.geometric(1.0 / config.mean_tracks_per_user, size=n_users)
    counts = np.clip(counts, config.min_tracks_per_user, max(1, n_tracks // 2))
    chunk = max(1, _CHOICE_CELLS // n_tracks)  # bounds the (users, tracks) matrices
    users, items = [], []
    for lo in range(0, n_users, chunk):
        weights = _choice_weights(taste[lo:lo + chunk], tracks, config.taste_noise)
        chunk_users, chunk_items = _choose_tracks(rng, weights, counts[lo:lo + chunk])
        users.append(chunk_users + lo)
        items.append(chunk_items)
    users, items = np.concatenate(users), np.concatenate(items)
    users, items = _top_up_listeners(rng, taste, tracks, users, items,
                                     min(config.min_listeners_per_track, n_users))
    order = np.lexsort((items, users))
    users, items = users[order], items[order]
    plays = np.minimum(rng.zipf(config.play_count_exponent, size=len(users)),
                       config.max_play_count)
    return pa.table({
        "user_id": [f"usr{u:05d}" for u in users],
        "track_id": [tracks.ids[i] for i in items],
        "plays": pa.array(plays, pa.int64()),
    })


# ---------------------------------------------------------------------------------
# Writing.

def _encode_all(config: DemoConfig, tracks: Tracks, paths: list[Path],
                workers: int) -> None:
    """Synthesise and encode every track to ``paths``, ``workers`` tracks at a time.

    Threads suffice: numpy's array loops and FFmpeg's encoders release the GIL.
    """
    styles = list(STYLES)
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        futures = [pool.submit(_make_track, config, i, styles[style], tempo, path)
                   for i, (style, tempo, path)
                   in enumerate(zip(tracks.style, tracks.tempo, paths))]
        progress = cli.Progress(logger, "demo tracks synthesised and encoded", len(futures))
        for future in concurrent.futures.as_completed(futures):
            future.result()
            progress.add()


def _catalogue_table(config: DemoConfig, tracks: Tracks, uris: list[str]) -> pa.Table:
    return pa.table({
        "track_id": tracks.ids,
        "audio_uri": uris,
        "title": tracks.title,
        "artist": tracks.artist,
        "duration_s": pa.array(np.full(len(uris), config.duration_s), pa.float32()),
    })


def _truth_table(tracks: Tracks) -> pa.Table:
    names = list(STYLES)
    return pa.table({
        "track_id": tracks.ids,
        "style": [names[s] for s in tracks.style],
        "tempo": [list(TEMPOS)[t] for t in tracks.tempo],
        "cold": pa.array(tracks.cold, pa.bool_()),
        "popularity": pa.array(tracks.popularity, pa.float64()),
    })


def generate(out: Path, config: DemoConfig = DemoConfig(), workers: int | None = None) -> None:
    """Build the demo catalogue into ``out``, which appears only when complete.

    ``workers`` (threads synthesising and encoding, default: CPU count) does not
    change the output. Raises FileExistsError when ``out`` exists.
    """
    started = time.perf_counter()
    out = Path(out).absolute()
    workers = workers if workers is not None else (os.cpu_count() or 1)
    tracks = make_tracks(config)
    plays = simulate_plays(config, tracks)
    cold_ids = pa.array([t for t, c in zip(tracks.ids, tracks.cold) if c], pa.string())
    is_cold = pc.is_in(plays["track_id"], value_set=cold_ids)
    params = dataclasses.asdict(config)
    with storage.atomic_dir(out) as tmp:
        files, final = layout.DemoFiles(tmp), layout.DemoFiles(out)
        names = [f"{tid}.{ENCODINGS[i % len(ENCODINGS)].ext}" for i, tid in enumerate(tracks.ids)]
        files.audio.mkdir()
        _encode_all(config, tracks, [files.audio / name for name in names], workers)
        uris = [str(final.audio / name) for name in names]
        storage.write_table(_catalogue_table(config, tracks, uris), files.catalogue,
                            schemas.CATALOGUE, params)
        storage.write_table(plays.filter(pc.invert(is_cold)), files.plays, schemas.PLAYS, params)
        storage.write_table(plays.filter(is_cold), files.heldout_plays, schemas.PLAYS, params)
        storage.write_table(_truth_table(tracks), files.truth, schemas.DEMO_TRUTH, params)
    logger.info("demo catalogue of %d tracks (%d cold), %d users, %d play rows in %s "
                "(%.1f s)", config.n_tracks, int(tracks.cold.sum()), config.n_users,
                plays.num_rows, out, time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.demo_catalogue",
        description="Build the built-in demo catalogue: synthetic tracks in several musical "
                    "styles, encoded as mp3/flac/ogg/m4a, and simulated users whose "
                    "tastes follow styles. Plays of a random 'cold' share of tracks go "
                    "to heldout_plays.parquet for evaluation.")
    parser.add_argument("--out", required=True, type=Path,
                        help="output directory; must not exist, appears only when complete")
    cli.add_settings(parser, DemoConfig)
    parser.add_argument("--workers", type=int, default=None,
                        help="threads synthesising and encoding audio; does not change "
                             "the output (default: number of CPUs)")
    args = parser.parse_args(argv)
    cli.setup_logging()
    config = cli.settings_from(DemoConfig, args)
    return cli.run_job(lambda: generate(args.out, config, workers=args.workers), logger,
                       FileExistsError)


if __name__ == "__main__":
    sys.exit(main())
