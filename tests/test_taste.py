"""The taste classifier averaged with the network (model/taste.py), and its model file."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from model import taste
from model.net import NetConfig, Network, build_net
from model.predictor import Excerpts, FactorSpace, Predictor
from schemas import mels as mel_values

N_MELS, FRAMES = 16, 160


def two_styles(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Excerpts of two styles (loud in the low or the high bands, with noise) and
    factors pointing one way per style; returns (mels, style)."""
    rng = np.random.default_rng(seed)
    style = np.arange(n) % 2
    mel = rng.normal(size=(n, N_MELS, FRAMES))
    mel[style == 0, :4] += 2.0
    mel[style == 1, -4:] += 2.0
    return mel.astype(np.float32), style


def style_factors(style: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    directions = np.array([[3.0, 0, 0, 0], [0, 0, 3.0, 0]])
    return (directions[style] + 0.3 * rng.normal(size=(len(style), 4))).astype(np.float32)


def write_shard(path, ids, mel, row_group_size=None):
    pq.write_table(pa.table({"track_id": ids, "n_mels": [N_MELS] * len(ids),
                             "n_frames": [FRAMES] * len(ids), "dtype": ["float32"] * len(ids),
                             "mel": mel_values.encode(list(mel), "float32")}),
                   path, row_group_size=row_group_size)


def statistics(mel: np.ndarray) -> np.ndarray:
    return taste.statistics(torch.from_numpy(mel)).double().numpy()


def test_statistics_describe_each_excerpt_by_band_and_cepstrum():
    mel, _ = two_styles(5, 0)
    features = taste.statistics(torch.from_numpy(mel)).numpy()
    rhythm = taste.ONSET_GROUPS * (len(taste.LAG_EDGES) - 1)
    assert features.shape == (5, 5 * N_MELS + 3 * min(taste.CEPSTRA, N_MELS) + rhythm)
    np.testing.assert_allclose(features[:, :N_MELS], mel.mean(axis=2), rtol=1e-5, atol=1e-6)
    # each track's statistics are its own
    np.testing.assert_allclose(statistics(mel[2:3])[0], features[2], rtol=1e-6)


def test_deciles_are_numpys_percentiles():
    mel, _ = two_styles(3, 0)
    start = 3 * N_MELS + 3 * min(taste.CEPSTRA, N_MELS)  # after the moments
    np.testing.assert_allclose(statistics(mel)[:, start:start + 2 * N_MELS],
                               np.percentile(mel, (10, 90), axis=2).transpose(1, 0, 2)
                               .reshape(3, -1), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_statistics_on_the_gpu_match_the_cpu():
    mel, _ = two_styles(5, 0)
    on_gpu = taste.statistics(torch.from_numpy(mel).cuda())
    assert on_gpu.is_cuda
    np.testing.assert_allclose(on_gpu.cpu().numpy(), statistics(mel), rtol=1e-4, atol=1e-4)


def test_rhythm_tells_a_fast_pulse_from_a_slow_one_at_any_loudness():
    frames = np.arange(400)
    fast = np.where(frames % 10 == 0, 6.0, 0.0)  # an onset every 10 frames
    slow = np.where(frames % 30 == 0, 6.0, 0.0)  # and every 30
    mel = np.random.default_rng(0).normal(0, 0.1, (3, N_MELS, 400))
    mel[0] += fast
    mel[1] += slow
    mel[2] += slow + 5.0  # the slow pulse, louder
    bins = list(zip(taste.LAG_EDGES[:-1], taste.LAG_EDGES[1:]))
    near_10, near_30 = bins.index((8, 14)), bins.index((23, 39))
    rhythm = taste.rhythm(torch.from_numpy(mel)).numpy()[:, :len(bins)]  # the lowest group of bands
    # the lag bin of each period: higher for its own pulse than for the other
    assert rhythm[0, near_10] > rhythm[1, near_10] + 0.05
    assert rhythm[1, near_30] > rhythm[0, near_30] + 0.05
    np.testing.assert_allclose(rhythm[2], rhythm[1], atol=0.05)


def test_a_classifier_of_other_statistics_is_refused():
    mel, style = two_styles(40, 0)
    fitted = taste.fit(statistics(mel)[:, :-3], style_factors(style, 0), c=0.1, seed=0)
    with pytest.raises(ValueError, match="retrain"):
        taste.predict(fitted, torch.from_numpy(mel))


def test_the_classifier_gives_a_new_track_its_style_factors():
    mel, style = two_styles(40, 0)
    fitted = taste.fit(statistics(mel), style_factors(style, 0), c=0.1, seed=0)
    assert fitted["centres"].shape[-2] == taste.clusters_for(40) == 4
    new, new_style = two_styles(10, 1)
    pred = taste.predict(fitted, torch.from_numpy(new)).numpy()
    assert pred.shape == (10, 4)
    # each new track leans to its style's direction: axis 0 for one, axis 2 for the other
    assert np.all((pred[:, 0] > pred[:, 2]) == (new_style == 0))
    assert all(torch.is_tensor(array) for array in fitted.values())  # model-file safe


def test_several_clusterings_average_their_classifiers_and_one_reads_as_before():
    mel, style = two_styles(40, 0)
    features, factors = statistics(mel), style_factors(style, 0)
    bagged = taste.fit(features, factors, c=0.1, seed=0, bags=3)
    assert bagged["centres"].shape == (3, 4, 4)
    singles = [taste.fit(features, factors, c=0.1, seed=seed) for seed in range(3)]
    new, _ = two_styles(10, 1)
    expected = np.mean([taste.predict(one, torch.from_numpy(new)).numpy() for one in singles], 0)
    np.testing.assert_allclose(taste.predict(bagged, torch.from_numpy(new)).numpy(), expected,
                               rtol=1e-5, atol=1e-6)
    # arrays of one clustering without the clusterings' axis (model files before it)
    flat = {name: value[0] if name in ("coef", "intercept", "centres") else value
            for name, value in taste.fit(features, factors, c=0.1, seed=0).items()}
    np.testing.assert_allclose(taste.predict(flat, torch.from_numpy(new)).numpy(),
                               taste.predict(singles[0], torch.from_numpy(new)).numpy(), rtol=1e-6)


def test_with_more_features_than_tracks_the_fit_is_the_full_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 30)
    features = rng.standard_normal((30, 120)) + 2.0 * np.eye(3)[labels] @ rng.standard_normal((3, 120))
    factors = rng.standard_normal((30, 4))
    fitted = taste.fit(features, factors, c=0.1, seed=0, labels=labels)
    standard = (features - features.mean(axis=0)) / features.std(axis=0)
    full = LogisticRegression(C=0.1, max_iter=5000, tol=1e-10).fit(standard, labels)
    np.testing.assert_allclose(fitted["coef"][0].numpy(), full.coef_, atol=2e-3)
    np.testing.assert_allclose(fitted["intercept"][0].numpy(), full.intercept_, atol=2e-3)


def test_too_few_tracks_give_no_classifier():
    mel, style = two_styles(4, 0)  # sqrt(4 / 2) rounds to one cluster
    assert taste.fit(statistics(mel), style_factors(style, 0), c=0.1, seed=0) is None


def test_a_model_file_with_a_classifier_averages_it_with_the_network(tmp_path):
    mel, style = two_styles(40, 0)
    fitted = taste.fit(statistics(mel), style_factors(style, 0), c=0.1, seed=0)
    config = NetConfig(arch="dieleman2014", n_mels=N_MELS, n_factors=4, channels=(4, 4, 4, 4),
                       dense=8)
    path = tmp_path / "model.pt"
    # the test's shards record no mel settings: the model's are the defaults too
    Predictor((Network(build_net(config), 1.0, False), taste.Taste(fitted)), {}, "s",
              {"loss": "wpe"}).save(path)
    predictor, space = Predictor.load(path), FactorSpace("s", "factors")
    assert predictor.kinds == ("network", "taste")
    new, _ = two_styles(6, 1)
    ids = [f"t{i}" for i in range(6)]
    excerpts = Excerpts(ids, new, {})
    alone = predictor.without("taste").predict(excerpts, space)
    np.testing.assert_allclose(predictor.predict(excerpts, space),
                               (alone + taste.predict(fitted, torch.from_numpy(new)).numpy()) / 2,
                               rtol=1e-5, atol=1e-6)

    # and scoring from shards predicts the same, a row group at a time
    shard = tmp_path / "part-0.parquet"
    write_shard(shard, ids, new, row_group_size=4)
    found, pred = predictor.predict_tracks([shard], ids, space)
    assert found == ids
    np.testing.assert_allclose(pred, predictor.predict(excerpts, space), rtol=1e-4, atol=1e-5)


def test_features_are_read_a_shard_at_a_time_and_each_track_once(tmp_path):
    mel, _ = two_styles(7, 0)
    ids = [f"t{i}" for i in range(7)]
    for part, rows in enumerate((slice(0, 4), slice(3, 7))):  # t3 is in both shards
        write_shard(tmp_path / f"part-{part}.parquet", ids[rows], mel[rows])
    found, features = taste.features_of(sorted(tmp_path.glob("*.parquet")), ["t1", "t3", "t6"])
    assert sorted(found) == ["t1", "t3", "t6"]
    expected = statistics(mel[[int(t[1:]) for t in found]])
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)


def test_statistics_are_computed_once_per_track_and_read_by_every_later_stage(tmp_path):
    # fitting on the warm tracks, then choosing, scoring and the evaluation, each a
    # process of its own: each track's statistics are computed by the first stage that
    # needs them, kept beside the shard, and read by the others
    mel, style = two_styles(12, 0)
    ids = [f"t{i}" for i in range(12)]
    shard = tmp_path / "mels-00000-of-00001.parquet"
    write_shard(shard, ids, mel, row_group_size=5)
    taste._MEMO.clear()
    before = taste.computed
    found, features = taste.features_of([shard], ids[:8])  # fitting: the warm tracks
    assert found == ids[:8] and taste.computed - before == 8
    np.testing.assert_allclose(features, statistics(mel[:8]), rtol=1e-5, atol=1e-5)
    assert sorted(taste.kept(shard)) == ids[:8]
    fitted = taste.fit(features, style_factors(style[:8], 0), c=0.1, seed=0)
    predictor, space = Predictor((taste.Taste(fitted),), {}, "s"), FactorSpace("s", "factors")
    counts = []
    for _ in ("scoring", "evaluation", "choosing"):
        taste._MEMO.clear()  # a stage of its own: nothing in memory
        before = taste.computed
        found, predicted = predictor.predict_tracks([shard], ids[6:], space)
        assert found == ids[6:]
        counts.append(taste.computed - before)
    assert counts == [4, 0, 0]  # the cold four once; the two warm ones were kept by fitting
    assert sorted(taste.kept(shard)) == sorted(ids)
    expected = taste.predict_features(fitted, torch.from_numpy(statistics(mel[6:])).float())
    np.testing.assert_allclose(predicted, expected.numpy(), rtol=1e-4, atol=1e-5)
    taste._MEMO.clear()
    assert taste.features_of([shard], ids)[1].shape == (12, features.shape[1])
    assert taste.computed - before == 0


def test_a_negative_number_of_tracks_is_refused_before_training(capsys):
    import pytest

    from model.train import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--mels", "m", "--item-factors", "f", "--out", "o.pt", "--loss", "mse",
                    "--taste-tracks", "-1"])
    assert "--taste-tracks must be 0 or more, got -1" in capsys.readouterr().err
