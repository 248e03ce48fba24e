"""Choosing the predictor to ship: trained CNNs against the bag-of-words baseline."""
import numpy as np
import pyarrow as pa
import torch

import schemas
from model.artefact import load_model, save_model
from model.choose import main as choose_main
from model.data import in_validation, mel_array, read_mels
from model.predict import predict
from model.train import main as train_main
from schemas import factors_column, storage
from tests.test_model import write_toy_set


def listeners(root, ids, kinds, warm):
    """Fans of kind 0 and of kind 1: user factors along the kinds' directions, and plays
    of tracks of their kind."""
    users = [f"u{u}" for u in range(40)]
    x = np.zeros((40, 4), np.float32)
    x[np.arange(40), np.arange(40) % 2] = 1.0
    rng = np.random.default_rng(0)
    rows = [(users[u], ids[t], int(rng.integers(1, 9))) for u in range(40) for t in range(warm)
            if kinds[t] == u % 2 and rng.random() < 0.5]
    storage.write_table(pa.table({"user_id": users, "factors": factors_column(x)}),
                        root / "user_factors.parquet", schemas.USER_FACTORS)
    user, track, plays = zip(*rows)
    storage.write_table(pa.table({"user_id": list(user), "track_id": list(track),
                                  "plays": pa.array(plays, pa.int64())}),
                        root / "plays.parquet", schemas.PLAYS)


def test_the_best_on_validation_is_shipped_and_says_why(tmp_path, capfd):
    mels_dir, factors, ids, kinds, warm = write_toy_set(tmp_path, n=96)
    listeners(tmp_path, ids, kinds, warm)
    assert train_main(["--mels", str(mels_dir), "--item-factors", str(factors),
                       "--out", str(tmp_path / "cnn.pt"), "--epochs", "6", "--channels", "8", "8",
                       "16", "16", "--dense", "32", "--dropout", "0", "--crop-frames", "120",
                       "--lr", "0.003", "--clips-per-track", "2", "--val-fraction", "0.3",
                       "--loss", "mse"]) == 0
    # a network that says the same whatever it hears must never be chosen
    model, artefact = load_model(tmp_path / "cnn.pt")
    state = {k: torch.zeros_like(v) if k.startswith(("conv", "head")) else v
             for k, v in model.state_dict().items()}
    state["head.7.bias"] = torch.tensor([1.0, 1.0, 0.0, 0.0])
    save_model(tmp_path / "constant.pt", model.config, state, artefact["mel_params"], 1.0,
               {"loss": "mse"}, factor_space=artefact["factor_space"])
    # the same CNN with a classifier that ranks the validation tracks backwards: it is
    # judged by the classifier fitted without those tracks, like any candidate
    backwards = {**artefact["taste"], "centres": -50 * artefact["taste"]["centres"]}
    save_model(tmp_path / "backwards.pt", model.config, artefact["state"],
               artefact["mel_params"], artefact["factor_scale"], artefact["metrics"],
               unit_output=artefact["unit_output"], factor_space=artefact["factor_space"],
               taste=backwards, taste_held_out=artefact["taste_held_out"])

    code = choose_main(["--mels", str(mels_dir), "--item-factors", str(factors),
                        "--user-factors", str(tmp_path / "user_factors.parquet"),
                        "--plays", str(tmp_path / "plays.parquet"),
                        "--candidate", str(tmp_path / "cnn.pt"),
                        "--candidate", str(tmp_path / "constant.pt"),
                        "--candidate", str(tmp_path / "backwards.pt"), "--val-fraction", "0.3",
                        "--bow-codebook", "16", "--out", str(tmp_path / "chosen.pt")])
    assert code == 0, capfd.readouterr().err[-3000:]
    chosen, artefact = load_model(tmp_path / "chosen.pt")
    selection = artefact["metrics"]["selection"]
    assert set(selection["candidates"]) == {"cnn.pt", "constant.pt", "backwards.pt",
                                            "bag-of-words + linear regression"}
    assert selection["candidates"]["backwards.pt"] == selection["candidates"]["cnn.pt"]
    assert selection["candidates"]["constant.pt"]["spread"] < 0.01
    assert selection["chosen"] != "constant.pt"
    assert selection["why"].startswith("highest validation AUC")
    assert f"chose {selection['chosen']}" in capfd.readouterr().err
    # the winner ships whole: a CNN with the taste classifiers it was trained with
    trained = load_model(tmp_path / "cnn.pt")[1]
    for key in ("taste", "taste_held_out"):
        if selection["chosen"] == "cnn.pt":
            assert all(torch.equal(artefact[key][k], trained[key][k]) for k in trained[key])
        else:
            assert artefact[key] is None
    # whichever won, it tells the kinds of the validation tracks apart
    val = [t for t in ids[:warm] if in_validation(t, 0.3)]
    table = read_mels(sorted(mels_dir.glob("*/mels-*.parquet")), val)
    pred = predict(chosen, artefact, mel_array(table))
    truth = kinds[[ids.index(t) for t in table.column("track_id").to_pylist()]]
    assert np.mean(np.argmax(pred[:, :2], axis=1) == truth) > 0.8


def test_the_baseline_ships_as_a_model_file_that_scores_like_the_fitted_one(tmp_path):
    from model.bow import BagOfWords
    from schemas.config import BowConfig

    mels_dir, factors, ids, kinds, warm = write_toy_set(tmp_path, n=40)
    table = read_mels(sorted(mels_dir.glob("*/mels-*.parquet")), ids)
    mels = mel_array(table)
    targets = schemas.factor_matrix(storage.read_table(factors, schemas.ITEM_FACTORS))
    words = BagOfWords(BowConfig(codebook=16, frames_per_track=40)).fit(mels[:warm], targets)
    net = words.to_net()
    save_model(tmp_path / "bow.pt", net.config, net.state_dict(), {}, 1.0, {"loss": "linear"},
               unit_output=False, factor_space="s")
    loaded, artefact = load_model(tmp_path / "bow.pt")
    np.testing.assert_allclose(predict(loaded, artefact, mels[warm:]),
                               words.predict(mels[warm:]), rtol=1e-3, atol=1e-4)
