"""The demo catalogue: real audio files, schema'd tables, a clean cold split, and
styles that differ in sound while tastes follow styles."""
import dataclasses
import os
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torchaudio

import schemas
from jobs import demo_catalogue
from schemas import storage
from schemas.config import DemoConfig

TINY = DemoConfig(n_tracks=24, n_users=60, duration_s=3.0, cold_fraction=0.25,
                                 mean_tracks_per_user=5.0, seed=7)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "catalogue"
    demo_catalogue.generate(out, TINY, workers=2)
    return out


def decode(path: Path) -> tuple[np.ndarray, int]:
    """All of a file's audio as (channels, samples) float32, and its sample rate."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate, layout = stream.codec_context.sample_rate, stream.codec_context.layout.name
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        chunks = [out.to_ndarray() for frame in container.decode(stream)
                  for out in resampler.resample(frame)]
        chunks += [out.to_ndarray() for out in resampler.resample(None)]
    return np.concatenate(chunks, axis=1), rate


def read(demo: Path, name: str, schema=None):
    """A table of the demo output, conformed to ``schema`` when one is given."""
    return storage.read_table(demo / name, schema) if schema else pq.read_table(demo / name)


def test_every_track_is_a_decodable_file_of_the_right_length(demo):
    catalogue = read(demo, "catalogue.parquet", schemas.CATALOGUE)
    uris = catalogue["audio_uri"].to_pylist()
    assert len(uris) == TINY.n_tracks == len(os.listdir(demo / "audio"))
    assert {Path(uri).suffix for uri in uris} >= {".mp3", ".flac", ".ogg"}
    rates, channels = set(), set()
    for uri in uris:
        assert Path(uri).is_absolute() and Path(uri).parent == demo.absolute() / "audio"
        audio, rate = decode(Path(uri))
        rates.add(rate)
        channels.add(audio.shape[0])
        # Codec priming and padding add a few tens of ms at most.
        assert audio.shape[1] / rate == pytest.approx(TINY.duration_s, abs=0.1), uri
        assert np.sqrt(np.mean(audio ** 2)) > 0.01, f"{uri} is silent"
        assert np.abs(audio).max() <= 1.0
    assert rates == {22050, 44100, 48000} and channels == {1, 2}
    assert catalogue["duration_s"].to_pylist() == [TINY.duration_s] * TINY.n_tracks


def test_tables_match_their_schemas(demo):
    for name, schema in [("catalogue.parquet", schemas.CATALOGUE),
                         ("plays.parquet", schemas.PLAYS),
                         ("heldout_plays.parquet", schemas.PLAYS)]:
        written = pq.read_schema(demo / name)
        assert written.remove_metadata().equals(schema), name
        assert schemas.params_of(written)["seed"] == TINY.seed
    truth = read(demo, "truth.parquet")
    assert truth.column_names == ["track_id", "style", "tempo", "cold", "popularity"]
    assert pq.read_schema(demo / "truth.parquet").equals(schemas.DEMO_TRUTH)
    assert schemas.params_of(pq.read_schema(demo / "truth.parquet"))["seed"] == TINY.seed
    assert set(truth["style"].to_pylist()) == set(demo_catalogue.STYLES)
    assert sum(truth["popularity"].to_pylist()) == pytest.approx(1.0)


def test_cold_tracks_have_plays_only_in_heldout(demo):
    truth = read(demo, "truth.parquet").to_pydict()
    cold = {t for t, c in zip(truth["track_id"], truth["cold"]) if c}
    warm = set(truth["track_id"]) - cold
    plays = read(demo, "plays.parquet", schemas.PLAYS)
    heldout = read(demo, "heldout_plays.parquet", schemas.PLAYS)
    assert len(cold) == round(TINY.cold_fraction * TINY.n_tracks)
    assert set(plays["track_id"].to_pylist()) == warm
    assert set(heldout["track_id"].to_pylist()) == cold
    assert set(read(demo, "catalogue.parquet")["track_id"].to_pylist()) == warm | cold
    for table in (plays, heldout):
        pairs = list(zip(table["user_id"].to_pylist(), table["track_id"].to_pylist()))
        assert len(pairs) == len(set(pairs))
        assert min(table["plays"].to_pylist()) >= 1


def test_same_seed_same_catalogue_other_seed_another(demo, tmp_path):
    again = tmp_path / "again"
    demo_catalogue.generate(again, TINY, workers=1)
    for name in ("plays.parquet", "heldout_plays.parquet", "truth.parquet"):
        assert read(again, name).equals(read(demo, name)), name
    first, second = read(demo, "catalogue.parquet"), read(again, "catalogue.parquet")
    assert first.drop(["audio_uri"]).equals(second.drop(["audio_uri"]))
    for uri in first["audio_uri"].to_pylist():
        twin = again / "audio" / Path(uri).name
        assert np.array_equal(decode(Path(uri))[0], decode(twin)[0]), uri
        assert Path(uri).read_bytes() == twin.read_bytes(), uri

    other = tmp_path / "other"
    demo_catalogue.generate(other, dataclasses.replace(TINY, seed=8), workers=1)
    assert not read(other, "plays.parquet").equals(read(demo, "plays.parquet"))
    assert not read(other, "truth.parquet")["style"].equals(read(demo, "truth.parquet")["style"])
    track = Path(first["audio_uri"][0].as_py())
    assert not np.array_equal(decode(other / "audio" / track.name)[0], decode(track)[0])


def log_mel_summary(path: Path) -> np.ndarray:
    """Mean and std over time of the track's log-mel spectrogram (the paper's settings):
    (256,) float32."""
    audio, rate = decode(path)
    mono = torchaudio.functional.resample(torch.from_numpy(audio.mean(axis=0)), rate, 22050)
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=22050, n_fft=1024, hop_length=512,
                                               n_mels=128)(mono)
    log_mel = torch.log(mel + 1e-6)
    return torch.cat([log_mel.mean(dim=1), log_mel.std(dim=1)]).numpy()


def test_styles_are_told_apart_by_their_sound(demo):
    catalogue = read(demo, "catalogue.parquet").to_pydict()
    truth = read(demo, "truth.parquet").to_pydict()
    style_of = dict(zip(truth["track_id"], truth["style"]))
    features = np.stack([log_mel_summary(Path(uri)) for uri in catalogue["audio_uri"]])
    styles = np.array([style_of[t] for t in catalogue["track_id"]])
    correct = 0
    for i in range(len(styles)):  # leave-one-out nearest centroid
        others = np.arange(len(styles)) != i
        names = sorted(set(styles[others]))
        centroids = np.stack([features[others & (styles == s)].mean(axis=0) for s in names])
        nearest = names[int(np.argmin(np.linalg.norm(centroids - features[i], axis=1)))]
        correct += nearest == styles[i]
    chance = 1 / len(demo_catalogue.STYLES)
    assert correct / len(styles) >= 0.75 > 3 * chance


def test_nothing_but_audio_tells_the_style(demo):
    truth = read(demo, "truth.parquet").to_pydict()
    catalogue = read(demo, "catalogue.parquet").to_pydict()
    formats = {}
    for style, uri in zip(truth["style"], catalogue["audio_uri"]):
        formats.setdefault(style, set()).add(Path(uri).suffix)
    assert all(len(f) >= 2 for f in formats.values()), formats
    counts = np.unique(truth["style"], return_counts=True)[1]
    assert counts.max() - counts.min() <= 1


@pytest.fixture(scope="module")
def simulated():
    config = DemoConfig(n_tracks=300, n_users=1500, seed=3)
    tracks = demo_catalogue.make_tracks(config)
    plays = demo_catalogue.simulate_plays(config, tracks)
    index = {t: i for i, t in enumerate(tracks.ids)}
    items = np.array([index[t] for t in plays["track_id"].to_pylist()])
    users = np.array([int(u[3:]) for u in plays["user_id"].to_pylist()])
    return config, tracks, users, items, plays["plays"].to_numpy()


def test_popularity_is_heavy_tailed_and_every_track_is_played(simulated):
    config, tracks, users, items, counts = simulated
    listeners = np.bincount(items, minlength=config.n_tracks)
    plays = np.bincount(items, weights=counts, minlength=config.n_tracks)
    top = config.n_tracks // 10
    assert np.sort(listeners)[::-1][:top].sum() / listeners.sum() > 0.25
    assert np.sort(plays)[::-1][:top].sum() / plays.sum() > 0.25
    assert listeners.min() >= config.min_listeners_per_track
    assert np.corrcoef(tracks.popularity, listeners)[0, 1] > 0.5
    assert counts.min() >= 1 and counts.max() > 20 * np.median(counts)


def test_users_tastes_follow_styles(simulated):
    config, tracks, users, items, _ = simulated
    per_style = np.zeros((config.n_users, len(demo_catalogue.STYLES)))
    np.add.at(per_style, (users, tracks.style[items]), 1)
    share = np.sort(per_style, axis=1)[:, ::-1] / per_style.sum(axis=1, keepdims=True)
    # Tracks drawn regardless of style would put about a third in a user's top two styles.
    assert share[:, :2].sum(axis=1).mean() > 0.75


def test_failed_run_leaves_no_output(tmp_path, monkeypatch):
    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(demo_catalogue, "encode", broken)
    out = tmp_path / "demo"
    config = DemoConfig(n_tracks=3, n_users=5, duration_s=0.5)
    with pytest.raises(OSError, match="disk full"):
        demo_catalogue.generate(out, config, workers=1)
    assert os.listdir(tmp_path) == []


def test_existing_output_is_refused(demo):
    with pytest.raises(FileExistsError):
        demo_catalogue.generate(demo, TINY)


def test_config_rejects_nonsense():
    with pytest.raises(ValueError):
        DemoConfig(cold_fraction=1.0)
    with pytest.raises(ValueError):
        DemoConfig(n_tracks=0)


def test_cli_builds_a_catalogue(tmp_path, capsys):
    with pytest.raises(SystemExit) as help_exit:
        demo_catalogue.main(["--help"])
    assert help_exit.value.code == 0
    usage = capsys.readouterr().out
    for flag in ("--out", "--n-tracks", "--n-users", "--duration-s", "--cold-fraction",
                 "--seed", "--workers"):
        assert flag in usage
    out = tmp_path / "cli"
    assert demo_catalogue.main(["--out", str(out), "--n-tracks", "6", "--n-users", "12",
                                "--duration-s", "1", "--cold-fraction", "0.5",
                                "--seed", "1"]) == 0
    truth = pq.read_table(out / "truth.parquet")
    assert truth.num_rows == 6 and sum(truth["cold"].to_pylist()) == 3
    assert len(os.listdir(out / "audio")) == 6
