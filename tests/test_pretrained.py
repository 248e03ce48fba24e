"""The pretrained front end: frozen taggers with a fitted head, as a shipped member."""
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from jobs.evaluate.choose import decide, main as choose_main
from model import frontend, musicnn
from model.head import main as head_main
from model.predictor import Excerpts, FactorSpace, Predictor
from model.train import main as train_main
from schemas import layout
from schemas import mels as mel_values
from schemas.config import MelParams
from tests.test_choose import listeners
from tests.test_model import write_toy_set


def write_tagger_inputs(root, ids, kinds, frames=musicnn.PATCH_FRAMES + 40, seed=1):
    """The taggers' input of the toy tracks (tests.test_model.write_toy_set, 16 bands):
    a kind-0 track is loud in the low bands and has a steady pulse, a kind-1 track is
    loud in the high bands and has none; values on the taggers' log10(1 + 10000 x)
    scale. Returns the directory, named as the spectrogram job names it."""
    params = MelParams(n_mels=16).frontend()
    rng = np.random.default_rng(seed)
    mels = rng.uniform(0.0, 0.5, (len(ids), musicnn.N_MELS, frames)).astype(np.float32)
    for i, kind in enumerate(kinds):
        if kind == 0:
            mels[i, :30] += 2.5
            mels[i, :, ::8] += 1.5
        else:
            mels[i, 50:] += 2.5
    run = root / "mels" / params.params_hash() / "r1"
    run.mkdir(parents=True)
    table = pa.table({"track_id": list(ids), "n_mels": [musicnn.N_MELS] * len(ids),
                      "n_frames": [frames] * len(ids), "dtype": [params.dtype] * len(ids),
                      "mel": mel_values.encode(list(mels), params.dtype)})
    meta = schemas.with_metadata(schemas.MEL_SHARD, params.to_dict())
    pq.write_table(schemas.conform(table, schemas.MEL_SHARD).replace_schema_metadata(meta.metadata),
                   run / "mels-00000-of-00001.parquet", row_group_size=16)
    return run.parent


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A toy catalogue, its taggers' input, and the head fitted on it."""
    root = tmp_path_factory.mktemp("pretrained")
    mels_dir, factors, ids, kinds, warm = write_toy_set(root, n=48)
    tagger_dir = write_tagger_inputs(root, ids, kinds)
    args = ["--mels", str(mels_dir), "--frontend-mels", str(tagger_dir),
            "--item-factors", str(factors), "--folds", "3", "--val-fraction", "0.3"]
    assert head_main(args + ["--out", str(root / "head.pt")]) == 0
    return root, mels_dir, tagger_dir, factors, ids, kinds, warm, args


def test_the_head_predicts_cold_tracks_from_what_the_taggers_hear(fitted):
    root, mels_dir, tagger_dir, factors, ids, kinds, warm, _ = fitted
    predictor = Predictor.load(root / "head.pt")
    assert predictor.kinds == ("pretrained", "taste")
    shards = sorted(mels_dir.glob("*/mels-*.parquet")) + sorted(tagger_dir.glob("*/mels-*.parquet"))
    cold = ids[warm:]
    found, predicted = predictor.without("taste").predict_tracks(shards, cold, FactorSpace.of(factors))
    assert sorted(found) == sorted(cold)
    truth = kinds[[ids.index(t) for t in found]]
    assert np.mean(np.argmax(predicted[:, :2], axis=1) == truth) > 0.8
    # the ensemble reads both inputs: without the taggers' input it says which it lacks
    with pytest.raises(ValueError, match="log10_1p"):
        predictor.predict_tracks(sorted(mels_dir.glob("*/mels-*.parquet")), cold,
                                 FactorSpace.of(factors))


def test_predicting_tracks_takes_what_the_taggers_heard_from_beside_the_shard(fitted, monkeypatch):
    root, mels_dir, tagger_dir, factors, ids, kinds, warm, _ = fitted
    head = Predictor.load(root / "head.pt").without("taste")
    [shard] = sorted(tagger_dir.glob("*/mels-*.parquet"))
    assert layout.heard_file(shard, frontend.version()).exists()  # kept by fitting the head
    heard = []
    run = frontend._run
    monkeypatch.setattr(frontend, "_run", lambda mel: heard.append(len(mel)) or run(mel))
    frontend._MEMO.clear()
    cold = ids[warm:]

    found, kept = head.predict_tracks([shard], cold, FactorSpace.of(factors))

    assert sorted(found) == sorted(cold) and heard == []  # the taggers did not run again
    table = mel_values.conform(pq.read_table(shard))
    table = table.take([table.column("track_id").to_pylist().index(t) for t in found])
    frontend._MEMO.clear()
    now = head.predict(Excerpts.of(table, schemas.params_of(pq.read_schema(shard))),
                       FactorSpace.of(factors))
    assert heard == [len(found)]  # heard now, for the comparison
    np.testing.assert_allclose(kept, now, atol=1e-5)


def test_the_same_inputs_give_the_same_model_file(fitted, tmp_path):
    root, *_, args = fitted
    assert head_main(args + ["--out", str(tmp_path / "again.pt")]) == 0
    first, again = Predictor.load(root / "head.pt"), Predictor.load(tmp_path / "again.pt")
    assert first.version == again.version
    # every fold version is fitted without its own tracks, and differs from the whole
    assert len(first.member("pretrained").folds) == 3
    assert first.fold(0).version != first.version and first.fold(3) is None


def test_a_model_of_other_tagger_weights_refuses_to_predict(fitted, tmp_path):
    root, *_ = fitted
    predictor = Predictor.load(root / "head.pt")
    member = predictor.member("pretrained")
    member.weights = "0123456789ab"
    predictor.save(tmp_path / "other.pt")
    other = Predictor.load(tmp_path / "other.pt")
    excerpts = [Excerpts(["a"], np.zeros((1, 16, 160), np.float32), other.mel_params),
                Excerpts(["a"], np.zeros((1, 96, 200), np.float32),
                         MelParams.from_dict(other.mel_params).frontend().to_dict())]
    with pytest.raises(ValueError, match=f"{tmp_path / 'other.pt'}.*0123456789ab"):
        other.predict(excerpts, FactorSpace(None, "f"))


def test_choosing_judges_folded_candidates_on_every_warm_track(fitted, tmp_path):
    root, mels_dir, tagger_dir, factors, ids, kinds, warm, _ = fitted
    listeners(root, ids, kinds, warm)
    out = tmp_path / "chosen.pt"
    assert choose_main(["--mels", str(mels_dir), "--frontend-mels", str(tagger_dir),
                        "--item-factors", str(factors),
                        "--user-factors", str(root / "user_factors.parquet"),
                        "--plays", str(root / "plays.parquet"),
                        "--candidate", str(root / "head.pt"), "--val-fraction", "0.3",
                        "--bow-codebook", "16", "--out", str(out)]) == 0
    selection = Predictor.load(out).metrics["selection"]
    assert set(selection["out_of_fold"]) == {"head.pt"}
    assert selection["out_of_fold"]["head.pt"]["users"] == 40
    assert set(selection["candidates"]) == {"head.pt", "bag-of-words + linear regression"}


def test_a_candidate_judged_on_a_dozen_tracks_needs_the_margin_to_win():
    folded = {"head": {"auc": 0.70}}
    assert decide(folded, {"head": {"auc": 0.70}, "cnn": {"auc": 0.715}}, 0.02, 100, 10)[0] \
        == "head"
    winner, why = decide(folded, {"head": {"auc": 0.70}, "cnn": {"auc": 0.73}}, 0.02, 100, 10)
    assert winner == "cnn" and "by at least 0.02" in why
    assert decide({}, {"a": {"auc": 0.6}, "b": {"auc": 0.7}}, 0.02, 100, 10)[0] == "b"


def test_top_tags_merge_the_taggers_and_rank_by_probability():
    mtt, msd = musicnn.labels("MTT_musicnn"), musicnn.labels("MSD_musicnn")
    first = np.zeros((1, len(mtt)), np.float32)
    second = np.zeros((1, len(msd)), np.float32)
    first[0, mtt.index("guitar")], first[0, mtt.index("rock")] = 0.9, 0.3
    second[0, msd.index("rock")], second[0, msd.index("jazz")] = 0.6, 0.5
    assert frontend.top_tags({"MTT_musicnn": first, "MSD_musicnn": second}, 3) == \
        [["guitar", "rock", "jazz"]]


def test_choosing_ships_the_ensemble_of_the_head_and_a_network(fitted, tmp_path):
    root, mels_dir, tagger_dir, factors, ids, kinds, warm, _ = fitted
    listeners(root, ids, kinds, warm)
    assert train_main(["--mels", str(mels_dir), "--item-factors", str(factors),
                       "--out", str(tmp_path / "cnn.pt"), "--epochs", "3", "--channels", "8", "8",
                       "16", "16", "--dense", "32", "--dropout", "0", "--crop-frames", "120",
                       "--lr", "0.003", "--clips-per-track", "2", "--val-fraction", "0.3",
                       "--loss", "mse", "--min-spread", "0"]) == 0
    out = tmp_path / "chosen.pt"
    # a margin no single candidate can reach: the ensemble ships
    assert choose_main(["--mels", str(mels_dir), "--frontend-mels", str(tagger_dir),
                        "--item-factors", str(factors),
                        "--user-factors", str(root / "user_factors.parquet"),
                        "--plays", str(root / "plays.parquet"), "--candidate", str(root / "head.pt"),
                        "--candidate", str(tmp_path / "cnn.pt"), "--val-fraction", "0.3",
                        "--bow-codebook", "16", "--margin", "1", "--min-spread", "0",
                        "--out", str(out)]) == 0
    chosen = Predictor.load(out)
    assert chosen.metrics["selection"]["chosen"] == "ensemble of the candidates"
    assert sorted(chosen.kinds) == ["network", "pretrained", "taste"]  # one taste classifier


def test_the_pretrained_tagger_fine_tunes_under_ddp(fitted, tmp_path):
    """Two processes under torchrun, on the taggers' input: the tagger's weights are the
    starting point, and the model file predicts from that input alone."""
    root, mels_dir, tagger_dir, factors, ids, kinds, warm, _ = fitted
    out = tmp_path / "tuned.pt"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "model.train", "--mels", str(tagger_dir), "--item-factors", str(factors),
         "--out", str(out), "--arch", "musicnn", "--loss", "cosine", "--epochs", "1",
         "--batch-size", "8", "--clips-per-track", "1", "--taste-tracks", "0",
         "--min-spread", "0", "--val-fraction", "0.3"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    tuned = Predictor.load(out)
    assert tuned.kinds == ("network",) and tuned.metrics["world_size"] == 2
    network = tuned.member("network").module
    assert network.config.arch == "musicnn"
    # fine-tuned from the wheel's weights, not from scratch: the front end moved only a little
    start = musicnn.load("MSD_musicnn").state_dict()
    moved = {name: (value - start[name.removeprefix("tagger.")]).norm() / start[
        name.removeprefix("tagger.")].norm() for name, value in network.state_dict().items()
        if name.startswith("tagger.frontend") and name.endswith("weight")}
    assert moved and max(moved.values()) < 0.2
    shards = sorted(tagger_dir.glob("*/mels-*.parquet"))
    found, predicted = tuned.predict_tracks(shards, ids[warm:], FactorSpace.of(factors))
    assert sorted(found) == sorted(ids[warm:]) and np.isfinite(predicted).all()
