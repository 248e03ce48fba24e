"""Choosing the predictor to ship: trained CNNs against the bag-of-words baseline."""
import numpy as np
import pyarrow as pa
import torch

import schemas
from jobs.evaluate.choose import main as choose_main
from model.bow import Bow
from model.data import in_validation, mel_array, read_mels
from model.net import Network
from model.predictor import Excerpts, FactorSpace, Predictor
from model.taste import Taste
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
    trained = Predictor.load(tmp_path / "cnn.pt")
    network, classifier = trained.members
    constant = Network.from_state(network.state(), torch.device("cpu"))
    with torch.no_grad():
        for name, value in constant.module.named_parameters():
            if name.startswith(("conv", "head")):
                value.zero_()
        constant.module.head[7].bias.copy_(torch.tensor([1.0, 1.0, 0.0, 0.0]))
    Predictor((constant,), trained.mel_params, trained.factor_space,
              {"loss": "mse"}).save(tmp_path / "constant.pt")
    # the same CNN with a classifier that ranks the validation tracks backwards: it is
    # judged by the classifier fitted without those tracks, like any candidate
    backwards = Taste({**classifier.arrays, "centres": -50 * classifier.arrays["centres"]},
                      classifier.held_out_arrays)
    Predictor((network, backwards), trained.mel_params, trained.factor_space,
              trained.metrics).save(tmp_path / "backwards.pt")

    code = choose_main(["--mels", str(mels_dir), "--item-factors", str(factors),
                        "--user-factors", str(tmp_path / "user_factors.parquet"),
                        "--plays", str(tmp_path / "plays.parquet"),
                        "--candidate", str(tmp_path / "cnn.pt"),
                        "--candidate", str(tmp_path / "constant.pt"),
                        "--candidate", str(tmp_path / "backwards.pt"), "--val-fraction", "0.3",
                        "--no-combine",
                        "--bow-codebook", "16", "--out", str(tmp_path / "chosen.pt")])
    assert code == 0, capfd.readouterr().err[-3000:]
    chosen = Predictor.load(tmp_path / "chosen.pt")
    selection = chosen.metrics["selection"]
    candidates = selection["candidates"]
    assert set(candidates) == {"cnn.pt", "constant.pt", "backwards.pt",
                               "bag-of-words + linear regression"}
    assert candidates["backwards.pt"]["auc"] == candidates["cnn.pt"]["auc"]
    assert candidates["constant.pt"]["spread"] < 0.01
    assert selection["chosen"] != "constant.pt"
    # the shipped one has the highest validation score of those that do not collapse
    usable = {name: c["auc"] for name, c in candidates.items() if c["spread"] >= 0.05}
    assert candidates[selection["chosen"]]["auc"] == max(usable.values())
    assert selection["why"].startswith("highest validation AUC")
    assert f"chose {selection['chosen']}" in capfd.readouterr().err
    # the winner ships whole: a CNN with the taste classifiers it was trained with
    if selection["chosen"] == "bag-of-words + linear regression":
        assert chosen.kinds == (Bow.kind,)
    else:
        assert chosen.version == Predictor.load(tmp_path / selection["chosen"]).version
        assert chosen.kinds == trained.kinds
    # whichever won, it tells the kinds of the validation tracks apart
    val = [t for t in ids[:warm] if in_validation(t, 0.3)]
    table = read_mels(sorted(mels_dir.glob("*/mels-*.parquet")), val)
    pred = chosen.predict(Excerpts.of(table, chosen.mel_params), FactorSpace.of(factors))
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
    shipped = Predictor((Bow(words.to_net(), 1.0, unit_output=False),), {}, "s")
    shipped.save(tmp_path / "bow.pt")
    loaded = Predictor.load(tmp_path / "bow.pt")
    assert loaded.kinds == (Bow.kind,) and loaded.version == shipped.version
    np.testing.assert_allclose(loaded.predict(Excerpts(ids[warm:], mels[warm:], {}),
                                              FactorSpace("s", "f")),
                               words.predict(mels[warm:]), rtol=1e-3, atol=1e-4)
