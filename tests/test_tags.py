"""Every track's top tags from the real pretrained taggers (jobs/tags.py), on tagger
inputs made here from synthesised audio, one 3 s patch a track."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torchaudio

import schemas
from jobs import tags as tags_job
from model import frontend, musicnn
from schemas import mels as mel_values
from schemas import storage

SAMPLE_RATE = 16_000  # the taggers' input (model/musicnn.py): 96 Slaney bands of 16 kHz
SECONDS = 3.0
PERCUSSIVE = {"beat", "beats", "drums", "techno", "electronic", "electro", "dance"}


def beats(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A kick on every half second and a noise hi-hat between them."""
    audio = np.zeros_like(t)
    for start, length, decay, hit in ((0.0, 3000, 800, "kick"), (0.25, 800, 150, "hat")):
        for onset in np.arange(start, t[-1], 0.5):
            i = int(onset * SAMPLE_RATE)
            k = np.arange(min(length, len(t) - i))
            sound = (np.sin(2 * np.pi * 60 * k / SAMPLE_RATE) if hit == "kick"
                     else 0.3 * rng.normal(size=len(k)))
            audio[i:i + len(k)] += sound * np.exp(-k / decay)
    return audio


def chord(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A soft A minor chord of pure tones, fading in."""
    return sum(0.2 * np.sin(2 * np.pi * f * t) for f in (220.0, 261.6, 329.6)) * np.minimum(1, t)


def noise(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 0.3 * rng.normal(size=len(t))


SOUNDS = {"beats": beats, "chord": chord, "noise": noise}


def tagger_input(sound: str, frames: int = musicnn.PATCH_FRAMES, seed: int = 0) -> np.ndarray:
    """(96, frames) float32: what the taggers hear of ``sound``, made as their training
    data was (n_fft 512, hop 256, log10(1 + 10000 x))."""
    t = np.arange(int(SECONDS * SAMPLE_RATE) + 512) / SAMPLE_RATE
    audio = torch.tensor(SOUNDS[sound](t, np.random.default_rng(seed)), dtype=torch.float32)
    mel = torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_fft=512, hop_length=256,
                                               n_mels=musicnn.N_MELS, mel_scale="slaney",
                                               norm="slaney")(audio)
    return torch.log10(1 + 10000 * mel)[:, :frames].numpy()


def write_shard(path, tracks: dict[str, np.ndarray]) -> None:
    """A tagger-input shard (schemas.MEL_SHARD) of ``tracks``, id -> (bands, frames)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    values = list(tracks.values())
    pq.write_table(schemas.conform(pa.table({
        "track_id": list(tracks), "n_mels": [v.shape[0] for v in values],
        "n_frames": [v.shape[1] for v in values], "dtype": ["float32"] * len(values),
        "mel": mel_values.encode(values, "float32")}), schemas.MEL_SHARD), path)


def write_catalogue(path, ids: list[str]) -> None:
    pq.write_table(pa.Table.from_pylist(
        [{"track_id": t, "audio_uri": f"/audio/{t}.ogg", "title": f"Song {t}", "artist": "Band",
          "duration_s": 3.0} for t in ids], schemas.CATALOGUE), path)


def write_tagger_inputs(root) -> tuple:
    """Two runs of tagger inputs: beats, chord and noise tracks in the first, in the
    second a 100-frame excerpt (looped to a patch) and a second, different input of
    "twice", which was first heard as the chord; "stranger" is not in the catalogue,
    and the catalogue's "unheard" has no input. (input dir, catalogue)."""
    inputs = root / "frontend-mels"
    write_shard(inputs / "r1" / "mels-00000-of-00001.parquet",
                {"beat": tagger_input("beats"), "calm": tagger_input("chord"),
                 "hiss": tagger_input("noise"), "twice": tagger_input("chord", seed=1),
                 "stranger": tagger_input("noise", seed=2)})
    write_shard(inputs / "r2" / "mels-00000-of-00001.parquet",
                {"short": tagger_input("beats", frames=100, seed=3),
                 "twice": tagger_input("beats", frames=100, seed=4)})
    catalogue = root / "catalogue.parquet"
    write_catalogue(catalogue, ["beat", "calm", "hiss", "twice", "short", "unheard"])
    return inputs, catalogue


@pytest.fixture
def tagged(tmp_path, capsys):
    inputs, catalogue = write_tagger_inputs(tmp_path)
    out = tmp_path / "tags.parquet"
    code = tags_job.main(["--frontend-mels", str(inputs), "--catalogue", str(catalogue),
                          "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    table = storage.read_table(out, schemas.TRACK_TAGS)
    rows = {row["track_id"]: row for row in table.to_pylist()}
    return tmp_path, inputs, catalogue, out, rows, capsys.readouterr().err


def reference_tags(spectrogram: np.ndarray, count: int) -> list[tuple[str, float]]:
    """The top tags of one patch, straight from each tagger's outputs."""
    best: dict[str, float] = {}
    patch = torch.from_numpy(spectrogram.T[None].copy())
    for name in musicnn.TAGGERS:
        with torch.no_grad():
            probabilities = musicnn.load(name)(patch).probabilities[0].numpy()
        for label, p in zip(musicnn.labels(name), probabilities):
            best[label.lower()] = max(best.get(label.lower(), 0.0), float(p))
    return sorted(best.items(), key=lambda item: -item[1])[:count]


def test_every_heard_catalogue_track_gets_its_top_tags(tagged):
    _, _, _, out, rows, log = tagged
    assert set(rows) == {"beat", "calm", "hiss", "twice", "short"}  # not unheard, not stranger
    assert "1 of 6 catalogue tracks have no tagger input" in log
    for row in rows.values():
        assert len(row["tags"]) == len(set(row["tags"])) == 5
        assert row["probabilities"] == sorted(row["probabilities"], reverse=True)
        assert all(0 < p < 1 for p in row["probabilities"])
        assert row["taggers_version"] == frontend.version()
    # what the taggers hear: a beat is percussive, a soft chord is not
    assert len(PERCUSSIVE & set(rows["beat"]["tags"])) >= 3
    assert not PERCUSSIVE & set(rows["calm"]["tags"]) and "ambient" in rows["calm"]["tags"]
    assert PERCUSSIVE & set(rows["short"]["tags"])
    assert rows["twice"]["tags"] == rows["calm"]["tags"]  # its first input, the same chord
    assert rows["beat"]["tags"] != rows["hiss"]["tags"]
    # the same as each tagger's own outputs on the patch
    expected = reference_tags(tagger_input("beats"), 5)
    assert rows["beat"]["tags"] == [tag for tag, _ in expected]
    assert rows["beat"]["probabilities"] == pytest.approx([p for _, p in expected], abs=1e-4)
    assert storage.read_params(out) == {"taggers": list(musicnn.TAGGERS),
                                        "taggers_version": frontend.version(), "top_tags": 5}


def test_fewer_tags_are_the_most_probable_of_them(tagged):
    root, inputs, catalogue, _, rows, _ = tagged
    out = root / "two.parquet"
    assert tags_job.main(["--frontend-mels", str(inputs), "--catalogue", str(catalogue),
                          "--top-tags", "2", "--out", str(out)]) == 0
    fewer = {row["track_id"]: row["tags"] for row in pq.read_table(out).to_pylist()}
    assert fewer == {track: row["tags"][:2] for track, row in rows.items()}


def test_bad_input_fails_in_one_line_naming_it(tmp_path, capsys):
    inputs, catalogue = write_tagger_inputs(tmp_path)
    out = tmp_path / "tags.parquet"

    def fails(frontend_mels, catalogue_file=catalogue) -> str:
        code = tags_job.main(["--frontend-mels", str(frontend_mels), "--catalogue",
                              str(catalogue_file), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 1 and "Traceback" not in err and not out.exists(), err
        return err

    assert f"{tmp_path / 'nowhere'}: no tagger-input shards" in fails(tmp_path / "nowhere")
    missing = tmp_path / "missing.parquet"
    assert f"{missing}: no such catalogue" in fails(inputs, missing)
    # spectrograms of another kind: 128 bands are not the taggers' 96
    wrong = tmp_path / "wrong" / "r1" / "mels-00000-of-00001.parquet"
    write_shard(wrong, {"beat": np.zeros((128, 200), np.float32)})
    assert f"{wrong}: not a readable tagger input" in fails(wrong.parent.parent)
    broken = inputs / "r3" / "mels-00000-of-00001.parquet"
    broken.parent.mkdir()
    broken.write_bytes(b"not parquet")
    # without r1, tracks are still wanted when the broken shard's turn comes
    (inputs / "r1" / "mels-00000-of-00001.parquet").unlink()
    assert f"{broken}: not a readable tagger input" in fails(inputs)
