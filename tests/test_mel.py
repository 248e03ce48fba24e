"""Decoding and log-mel on generated audio whose answers are known."""
import ctypes
import os
import struct
import time

import av
import numpy as np
import pytest

from jobs.spectrograms.decode import DecodeError, decode_excerpt
from jobs.spectrograms.pool import IsolatedDecoder
from jobs.spectrograms.mel import log_mel, resample, spectrograms
from schemas.config import MelParams
from schemas.layout import mel_shards

# (file name, codec, sample rate, channel layout): every container and codec the
# job promises, mono, stereo and 5.1, 8 kHz to 96 kHz. FFmpeg's own Vorbis
# encoder only writes stereo; Opus only runs at 48 kHz.
FORMATS = [
    ("stereo44.ogg", "vorbis", 44100, "stereo"),
    ("stereo22.ogg", "vorbis", 22050, "stereo"),
    ("mono48.opus", "libopus", 48000, "mono"),
    ("surround48.opus", "libopus", 48000, "5.1"),
    ("mono44.mp3", "libmp3lame", 44100, "mono"),
    ("stereo22.mp3", "libmp3lame", 22050, "stereo"),
    ("mono8.mp3", "libmp3lame", 8000, "mono"),
    ("mono44.flac", "flac", 44100, "mono"),
    ("surround96.flac", "flac", 96000, "5.1"),
    ("stereo22.wav", "pcm_s16le", 22050, "stereo"),
    ("mono8.wav", "pcm_s16le", 8000, "mono"),
    ("stereo96.wav", "pcm_s24le", 96000, "stereo"),
    ("stereo44.m4a", "aac", 44100, "stereo"),
    ("surround48.m4a", "aac", 48000, "5.1"),
    ("mono8.m4a", "aac", 8000, "mono"),
]
FORMAT_NAMES = [f[0] for f in FORMATS]


def write_audio(path, samples: np.ndarray, rate: int, codec: str, layout: str = "mono") -> str:
    """Encode mono float ``samples`` to ``path`` (format from its extension).

    Every channel of ``layout`` carries ``samples`` except a low-frequency one,
    which stays silent (encoders band-limit it).
    """
    channels = av.AudioLayout(layout).channels
    planes = np.array([np.zeros(len(samples)) if channel.name == "LFE" else samples
                       for channel in channels], np.float32)
    options = {"strict": "experimental"} if codec == "vorbis" else {}
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout, options=options)
        for start in range(0, planes.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(planes[:, start:start + 1024]), format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return str(path)


def loudness(layout: str, amplitude: float) -> float:
    """Peak of the mono mix of write_audio's output: the mean over channels."""
    channels = av.AudioLayout(layout).channels
    return amplitude * sum(channel.name != "LFE" for channel in channels) / len(channels)


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(round(seconds * rate)) / rate)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def onset_s(samples: np.ndarray, rate: int, threshold: float = 0.1) -> float:
    return int(np.argmax(np.abs(samples) > threshold)) / rate


# -- Broken files, as catalogues hold them --------------------------------------------

def write_truncated(path, source) -> str:
    """The first 40% of the bytes of ``source``."""
    data = open(source, "rb").read()
    open(path, "wb").write(data[:int(len(data) * 0.4)])
    return str(path)


def write_unknown_codec(path, seconds: float = 1.0, rate: int = 22050) -> str:
    """A WAV file whose audio format tag (0x7777) no FFmpeg decoder knows."""
    data = np.zeros(round(seconds * rate), np.int16).tobytes()
    fmt = struct.pack("<HHIIHH", 0x7777, 1, rate, 2 * rate, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack(
        "<I", len(data)) + data
    open(path, "wb").write(b"RIFF" + struct.pack("<I", len(body)) + body)
    return str(path)


def write_video_only(path) -> str:
    """An MP4 file with ten frames of video and no audio."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for index in range(10):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return str(path)


def write_understated_mp3(path, seconds: float) -> str:
    """An MP3 of ``seconds`` whose header (LAME's Info frame) claims 10 frames, 0.26 s."""
    source = write_audio(str(path) + ".src.mp3", tone(440, seconds, 44100), 44100, "libmp3lame")
    data = bytearray(open(source, "rb").read())
    os.remove(source)
    tag = data.find(b"Info")
    assert tag > 0 and struct.unpack(">I", data[tag + 4:tag + 8])[0] & 1  # frame count present
    data[tag + 8:tag + 12] = struct.pack(">I", 10)
    open(path, "wb").write(data)
    return str(path)


def decode_or_crash(uri: str, params: MelParams, *args, **limits) -> np.ndarray:
    """decode_excerpt, but a URI ending in .segfault crashes the process in native
    code, as FFmpeg does on some broken input, and one ending in .hang hangs."""
    if uri.endswith(".segfault"):
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    if uri.endswith(".hang"):
        time.sleep(3600)
    return decode_excerpt(uri, params, *args, **limits)


def spectrograms_or_crash(uri: str, params: MelParams, outputs=(), *args, **limits) -> tuple:
    """The job's spectrograms, crashing or hanging as decode_or_crash does."""
    if uri.endswith((".segfault", ".hang")):
        decode_or_crash(uri, params, **limits)
    return spectrograms(uri, params, outputs, *args, **limits)


def spectrograms_slowly(uri: str, params: MelParams, outputs=(), *args, **limits) -> tuple:
    """The job's spectrograms, a second late for a URI ending in "#slow" (cut off)."""
    if uri.endswith("#slow"):
        time.sleep(1.0)
        uri = uri.removesuffix("#slow")
    return spectrograms(uri, params, outputs, *args, **limits)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("audio")


@pytest.fixture(scope="module")
def half_silent(audio_dir):
    """6 s: silence, then a 440 Hz tone from 3 s on, in every format."""
    paths = {}
    for name, codec, rate, layout in FORMATS:
        signal_ = np.concatenate([np.zeros(3 * rate), tone(440, 3, rate)])
        paths[name] = write_audio(audio_dir / f"half_{name}", signal_, rate, codec, layout)
    return paths


PARAMS = MelParams(excerpt_s=2.0)


@pytest.mark.parametrize("name, codec, rate, layout", FORMATS, ids=FORMAT_NAMES)
def test_decode_is_mono_at_target_rate_and_excerpt_long(half_silent, name, codec, rate, layout):
    with av.open(half_silent[name]) as container:  # the fixture is what it claims
        stream = container.streams.audio[0]
        assert (stream.rate, stream.channels) == (rate, av.AudioLayout(layout).nb_channels)

    samples = decode_excerpt(half_silent[name], PARAMS)

    assert samples.dtype == np.float32
    assert samples.shape == (2 * 22050,)
    # Channels are averaged: stereo is as loud as mono (FFmpeg's downmix gives 0.71).
    assert np.abs(samples).max() == pytest.approx(loudness(layout, 0.5), abs=0.04)
    # The excerpt is 2..4 s: its second half is the tone, at its true pitch.
    assert dominant_hz(samples[22050 + 2048:], 22050) == pytest.approx(440, abs=3)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_excerpt_is_the_middle_of_the_track(half_silent, name):
    samples = decode_excerpt(half_silent[name], PARAMS)

    # Middle 2 s of 6 s start at 2 s; the tone starts at 3 s, so 1 s in.
    assert onset_s(samples, 22050) == pytest.approx(1.0, abs=0.01)
    assert np.abs(samples[:20000]).max() < 0.05


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_whole_track_when_no_excerpt(half_silent, name):
    samples = decode_excerpt(half_silent[name], MelParams(excerpt_s=0))

    assert len(samples) == pytest.approx(6 * 22050, abs=0.03 * 22050)
    assert onset_s(samples, 22050) == pytest.approx(3.0, abs=0.01)


def test_excerpt_of_a_long_track_after_seeking(audio_dir):
    # 60 s of 1 kHz with a 100 ms 4 kHz blip at every whole second. The middle 9.5 s
    # start at 25.25 s, so its blips are at 0.75 s, 1.75 s, ... only if the seek and
    # the discard of what the seek decoded too early are both right.
    rate = 44100
    t = np.arange(60 * rate) / rate
    blips = np.where((t % 1.0) < 0.1, tone(4000, 60, rate, 0.4), 0.0)
    path = write_audio(audio_dir / "long.ogg", tone(1000, 60, rate, 0.1) + blips, rate,
                       "vorbis", "stereo")

    samples = decode_excerpt(path, MelParams(excerpt_s=9.5))

    assert samples.shape == (round(9.5 * 22050),)
    assert onset_s(samples, 22050, threshold=0.25) == pytest.approx(0.75, abs=0.01)
    after_first = samples[22050:]
    assert onset_s(after_first, 22050, threshold=0.25) == pytest.approx(0.75, abs=0.01)


@pytest.mark.parametrize("pad, tail_is_silent, length", [
    ("zeros", True, 2 * 22050), ("wrap", False, 2 * 22050), ("none", False, 22050)])
def test_short_track_is_padded_as_asked(audio_dir, pad, tail_is_silent, length):
    path = write_audio(audio_dir / "short.flac", tone(440, 1.0, 44100), 44100, "flac")

    samples = decode_excerpt(path, MelParams(excerpt_s=2.0, pad=pad))

    assert samples.shape == (length,)
    assert (np.abs(samples[-1000:]).max() == 0) == tail_is_silent


def test_short_track_is_rejected_when_asked(audio_dir):
    short = write_audio(audio_dir / "short.flac", tone(440, 1.0, 44100), 44100, "flac")
    exact = write_audio(audio_dir / "exact.flac", tone(440, 2.0, 44100), 44100, "flac")
    # A clip a hair shorter than the excerpt (a 30 s preview decoding to 29.98 s).
    almost = write_audio(audio_dir / "almost.flac", tone(440, 1.95, 44100), 44100, "flac")
    params = MelParams(excerpt_s=2.0, pad="reject")

    with pytest.raises(DecodeError, match="too short for the excerpt"):
        decode_excerpt(short, params)
    assert decode_excerpt(exact, params).shape == (2 * 22050,)
    padded = decode_excerpt(almost, params)
    assert padded.shape == (2 * 22050,) and np.abs(padded[-1000:]).max() == 0
    assert len(decode_excerpt(short, MelParams(excerpt_s=0, pad="reject"))) == 22050


def test_file_and_fsspec_uris_decode_like_paths(half_silent):
    import fsspec

    path = half_silent["stereo44.ogg"]
    with fsspec.open("memory://tracks/t.ogg", "wb") as remote:
        remote.write(open(path, "rb").read())

    expected = decode_excerpt(path, PARAMS)
    np.testing.assert_array_equal(decode_excerpt(f"file://{path}", PARAMS), expected)
    np.testing.assert_array_equal(decode_excerpt("memory://tracks/t.ogg", PARAMS), expected)
    with pytest.raises(DecodeError, match="memory://tracks/gone.ogg: FileNotFoundError"):
        decode_excerpt("memory://tracks/gone.ogg", PARAMS)


def test_bad_inputs_raise_decode_error_naming_the_file(audio_dir, half_silent):
    corrupt = audio_dir / "corrupt.mp3"
    corrupt.write_bytes(np.random.default_rng(0).bytes(20_000))
    empty = audio_dir / "empty.wav"
    empty.write_bytes(b"")
    short = write_audio(audio_dir / "half_second.wav", tone(440, 0.5, 22050), 22050, "pcm_s16le")
    whole = MelParams(excerpt_s=0)

    cases = [(str(corrupt), PARAMS, {}, "Invalid data"),
             (str(audio_dir / "missing.ogg"), PARAMS, {}, "No such file"),
             (str(empty), PARAMS, {}, "empty file"),
             (write_truncated(audio_dir / "cut.mp3", half_silent["mono44.mp3"]), whole, {},
              "truncated: decoded 2.*of the 6.00 s"),
             (write_truncated(audio_dir / "cut.flac", half_silent["mono44.flac"]), PARAMS, {},
              "truncated"),
             (write_truncated(audio_dir / "cut.m4a", half_silent["stereo44.m4a"]), PARAMS, {},
              "Invalid data"),
             (write_unknown_codec(audio_dir / "unknown.wav"), PARAMS, {},
              "unsupported audio codec"),
             (write_video_only(audio_dir / "video.mp4"), PARAMS, {},
              r"no audio stream \(streams: video\)"),
             (half_silent["mono44.mp3"], PARAMS, {"max_duration_s": 5.0}, "too long: 6 s > 5 s"),
             (short, PARAMS, {"min_duration_s": 1.0}, "too short"),
             (short, PARAMS, {"max_bytes": 100}, "too large")]
    for path, params, limits, reason in cases:
        with pytest.raises(DecodeError, match=reason) as caught:
            decode_excerpt(path, params, **limits)
        assert str(caught.value).startswith(path)


def test_too_long_is_found_while_decoding_when_the_header_understates(audio_dir):
    path = write_understated_mp3(audio_dir / "understated.mp3", seconds=6.0)
    whole = MelParams(excerpt_s=0)

    assert len(decode_excerpt(path, whole)) == pytest.approx(6 * 22050, abs=0.03 * 22050)
    with pytest.raises(DecodeError, match="too long: more than 3 s"):
        decode_excerpt(path, whole, max_duration_s=3.0)


def test_concatenated_mp3s_decode_across_the_seam(audio_dir):
    # The second file's header frame is an invalid packet in the middle of the stream:
    # it is skipped, as FFmpeg's command line does, instead of losing the track.
    first = write_audio(audio_dir / "first.mp3", tone(440, 1.0, 44100), 44100, "libmp3lame")
    second = write_audio(audio_dir / "second.mp3", tone(660, 3.0, 44100), 44100, "libmp3lame")
    joined = audio_dir / "joined.mp3"
    joined.write_bytes(open(first, "rb").read() + open(second, "rb").read())

    samples = decode_excerpt(str(joined), MelParams(excerpt_s=0))

    assert len(samples) == pytest.approx(4 * 22050, abs=0.1 * 22050)
    assert dominant_hz(samples[:20000], 22050) == pytest.approx(440, abs=3)
    assert dominant_hz(samples[-40000:], 22050) == pytest.approx(660, abs=3)


def mel_band_centres_hz(params: MelParams) -> np.ndarray:
    """Centre frequencies of HTK mel bands spanning 0..Nyquist."""
    def to_mel(hz):
        return 2595 * np.log10(1 + hz / 700)
    edges = np.linspace(0, to_mel(params.sample_rate / 2), params.n_mels + 2)
    return 700 * (10 ** (edges[1:-1] / 2595) - 1)


@pytest.mark.parametrize("freq", [200.0, 1000.0, 5000.0])
def test_log_mel_shape_and_peak_band(freq):
    params = MelParams()
    samples = tone(freq, 1.0, params.sample_rate).astype(np.float32)

    mel = log_mel(samples, params)

    assert mel.dtype == np.float32
    assert mel.shape == (128, 1 + len(samples) // 512)
    expected = np.abs(mel_band_centres_hz(params) - freq).argmin()
    assert abs(int(mel.mean(axis=1).argmax()) - expected) <= 1


def test_log_mel_of_silence_is_log_offset():
    params = MelParams(log_offset=1e-4)

    mel = log_mel(np.zeros(22050, np.float32), params)

    np.testing.assert_allclose(mel, np.log(1e-4), rtol=1e-5)


def test_log_mel_rejects_empty_input():
    with pytest.raises(ValueError, match="non-empty mono"):
        log_mel(np.zeros(0, np.float32), MelParams())


def test_params_hash_is_stable_and_tracks_every_setting():
    # Changing a hash orphans every spectrogram already written with those settings.
    assert MelParams().params_hash() == "7c792c34e815"
    assert MelParams(excerpt_s=1.0).params_hash() == "81fe5e0a1f93"
    # float32, the only format before the dtype existed, keeps the hash it had then
    assert MelParams(dtype="float32").params_hash() == "dce68939bff2"
    # what shards and model files store, and fingerprints are made of
    assert MelParams().to_dict() == {"sample_rate": 22050, "n_fft": 1024, "hop_length": 512,
                                     "n_mels": 128, "excerpt_s": 30.0, "log_offset": 1e-6,
                                     "pad": "wrap", "dtype": "float16"}
    # the tagger's input keeps its directory too
    assert MelParams().frontend().params_hash() == "84e79532cf08"
    assert MelParams(excerpt_s=30).params_hash() == MelParams().params_hash()
    assert MelParams(excerpt_s=0).params_hash() == MelParams(excerpt_s=None).params_hash()
    variants = [MelParams(sample_rate=16000), MelParams(n_fft=2048), MelParams(hop_length=256),
                MelParams(n_mels=64), MelParams(excerpt_s=10), MelParams(log_offset=1e-3),
                MelParams(pad="zeros"), MelParams(pad="reject"), MelParams(dtype="float32"),
                MelParams(filterbank="slaney"), MelParams(compression="log10_1p")]
    hashes = {p.params_hash() for p in variants} | {MelParams().params_hash()}
    assert len(hashes) == len(variants) + 1


def test_params_round_trip_and_validation():
    params = MelParams(n_mels=64, excerpt_s=None, pad="none")

    assert MelParams.from_dict(params.to_dict()) == params
    stored_before_dtypes = {k: v for k, v in params.to_dict().items() if k != "dtype"}
    assert MelParams.from_dict(stored_before_dtypes).dtype == "float32"
    tagger = params.frontend()
    assert {"filterbank", "compression"} <= set(tagger.to_dict())
    assert MelParams.from_dict(tagger.to_dict()) == tagger
    with pytest.raises(ValueError, match="filterbank"):
        MelParams(filterbank="mel")
    with pytest.raises(ValueError, match="compression"):
        MelParams(compression="db")
    with pytest.raises(ValueError, match="dtype"):
        MelParams(dtype="int8")
    with pytest.raises(ValueError, match="unknown"):
        MelParams.from_dict({**params.to_dict(), "window": "hann"})
    with pytest.raises(ValueError, match="pad"):
        MelParams(pad="reflect")
    with pytest.raises(ValueError, match="n_mels"):
        MelParams(n_mels=0)


def test_the_tagger_input_is_musicnns_of_the_same_excerpt():
    main = MelParams(n_mels=64, excerpt_s=10, pad="zeros", dtype="float32")

    tagger = main.frontend()

    # musicnn's settings, whatever the main spectrograms' ...
    assert (tagger.sample_rate, tagger.n_fft, tagger.hop_length, tagger.n_mels) == \
        (16000, 512, 256, 96)
    assert (tagger.filterbank, tagger.compression) == ("slaney", "log10_1p")
    # ... of the same excerpt of the same audio
    assert (tagger.excerpt_s, tagger.pad, tagger.dtype) == (10.0, "zeros", "float32")
    assert tagger.frontend() == tagger


def slaney_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2): librosa's default mel filterbank (Slaney's mel scale:
    linear below 1 kHz, logarithmic above; each triangle of unit area), from its
    definition."""
    step = np.log(6.4) / 27  # log-spaced above 1 kHz = mel 15

    def to_mel(hz):
        hz = np.asarray(hz, float)
        return np.where(hz >= 1000, 15 + np.log(np.maximum(hz, 1e-9) / 1000) / step, hz * 3 / 200)

    def to_hz(mel):
        return np.where(mel >= 15, 1000 * np.exp(step * (mel - 15)), mel * 200 / 3)

    edges = to_hz(np.linspace(to_mel(0), to_mel(sample_rate / 2), n_mels + 2))
    bins = np.linspace(0, sample_rate / 2, 1 + n_fft // 2)
    rising = (bins - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    falling = (edges[2:, None] - bins) / (edges[2:] - edges[1:-1])[:, None]
    return np.maximum(0, np.minimum(rising, falling)) * (2 / (edges[2:] - edges[:-2]))[:, None]


def musicnn_input(samples: np.ndarray) -> np.ndarray:
    """(96, frames): musicnn's input of 16 kHz ``samples`` in NumPy (float64):
    log10(1 + 10000 mel power), centred reflection-padded 512-sample periodic Hann
    frames every 256 samples, 96 Slaney bands."""
    n_fft, hop = 512, 256
    padded = np.pad(np.asarray(samples, float), n_fft // 2, mode="reflect")
    starts = hop * np.arange(1 + (len(padded) - n_fft) // hop)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    power = np.abs(np.fft.rfft(padded[starts[:, None] + np.arange(n_fft)] * window)) ** 2
    return np.log10(1 + 10000 * (slaney_filterbank(16000, n_fft, 96) @ power.T))


def test_the_tagger_log_mel_matches_its_definition():
    rng = np.random.default_rng(0)
    samples = (tone(440, 1.0, 16000) + tone(5000, 1.0, 16000, 0.1)
               + rng.normal(0, 0.01, 16000)).astype(np.float32)

    mel = log_mel(samples, MelParams().frontend())

    assert mel.shape == (96, 1 + 16000 // 256) and mel.dtype == np.float32
    np.testing.assert_allclose(mel, musicnn_input(samples), atol=1e-3)
    np.testing.assert_array_equal(log_mel(np.zeros(16000, np.float32), MelParams().frontend()), 0)


def test_resampling_keeps_what_16_khz_holds_and_drops_the_rest():
    kept = resample(tone(1000, 1.0, 22050).astype(np.float32), 22050, 16000)
    # 10 kHz is above 16 kHz's Nyquist frequency: kept, it would alias to 6 kHz
    dropped = resample(tone(10000, 1.0, 22050).astype(np.float32), 22050, 16000)

    assert kept.dtype == np.float32 and len(kept) == len(dropped) == 16000
    assert dominant_hz(kept, 16000) == pytest.approx(1000, abs=2)
    inner = slice(100, -100)  # away from the edges, where the filter meets the padding
    assert np.sqrt(np.mean(kept[inner] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)
    assert np.sqrt(np.mean(dropped[inner] ** 2)) < 0.05 * 0.5 / np.sqrt(2)


@pytest.mark.parametrize("from_rate, to_rate", [(22050, 16000), (44100, 16000), (8000, 16000)])
@pytest.mark.parametrize("length", [1, 441, 22050, 30001])
def test_resampling_is_torchaudios_filter(from_rate, to_rate, length):
    import torch
    import torchaudio

    samples = np.random.default_rng(length).normal(0, 0.3, length).astype(np.float32)
    expected = torchaudio.transforms.Resample(from_rate, to_rate)(torch.from_numpy(samples))

    np.testing.assert_allclose(resample(samples, from_rate, to_rate), expected.numpy(), atol=1e-6)


def test_one_decoding_makes_every_output(half_silent, monkeypatch):
    from jobs.spectrograms import mel as mel_module

    path = half_silent["stereo44.ogg"]
    decoded = []

    def counted(uri, params, *args, **limits):
        decoded.append(uri)
        return decode_excerpt(uri, params, *args, **limits)
    monkeypatch.setattr(mel_module, "decode_excerpt", counted)

    main, tagger = spectrograms(path, PARAMS, (PARAMS, PARAMS.frontend()))

    assert decoded == [path]
    assert main.shape == (128, 1 + 2 * 22050 // 512) and main.dtype == np.float16
    assert tagger.shape == (96, 1 + 2 * 16000 // 256) and tagger.dtype == np.float16
    samples = decode_excerpt(path, PARAMS)
    np.testing.assert_array_equal(main, log_mel(samples, PARAMS).astype(np.float16))
    # the same samples, resampled by torchaudio's own function, through the definition
    import torch
    import torchaudio
    at_16k = torchaudio.functional.resample(torch.from_numpy(samples), 22050, 16000).numpy()
    np.testing.assert_allclose(tagger.astype(np.float32), musicnn_input(at_16k),
                               rtol=2e-3, atol=2e-3)  # float16 keeps about 3 digits
    assert tagger[:, :30].mean() < 0.01 < tagger[:, -30:].mean()  # silence, then the tone


def test_mel_shards_skips_runs_in_progress(tmp_path):
    for run in ("r1", "r2", ".tmp-r3-abcd"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "mels-00000-of-00001.parquet").touch()
    (tmp_path / "r1" / "dead_letters-00000-of-00001.parquet").touch()

    assert [p.parent.name for p in mel_shards(tmp_path)] == ["r1", "r2"]


def test_isolated_decoder_matches_in_process_and_reports_errors(half_silent, audio_dir):
    path = half_silent["stereo44.ogg"]
    with IsolatedDecoder(PARAMS) as decode:
        np.testing.assert_array_equal(decode(path), decode_excerpt(path, PARAMS))
        pid = decode.pid
        with pytest.raises(DecodeError, match="No such file"):
            decode(str(audio_dir / "missing.ogg"))
        assert decode(path).shape == (2 * 22050,)  # the child survives ordinary errors
        assert decode.pid == pid
    assert decode.pid is None


def test_isolated_decoder_survives_a_crashing_and_a_hanging_child(half_silent):
    path = half_silent["mono44.flac"]
    with IsolatedDecoder(PARAMS, timeout_s=3.0, decode=decode_or_crash) as decode:
        expected = decode(path)
        crashed = decode.pid
        # The child dies of a segmentation fault in native code, mid-call.
        with pytest.raises(DecodeError, match="decoder process died .killed by SIGSEGV") as caught:
            decode(path + ".segfault")
        assert str(caught.value).startswith(path + ".segfault")
        # A fresh child takes over.
        np.testing.assert_array_equal(decode(path), expected)
        assert decode.pid != crashed
        # A child that hangs: the call times out, names the file, and the child is killed.
        hung = decode.pid
        with pytest.raises(DecodeError, match="timed out after 3 s") as caught:
            decode(path + ".hang")
        assert str(caught.value).startswith(path + ".hang")
        with pytest.raises(ProcessLookupError):
            os.kill(hung, 0)
        np.testing.assert_array_equal(decode(path), expected)
