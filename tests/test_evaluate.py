"""The evaluation protocol's parts: metrics, the ALS upper bound, the MFCC baseline."""
import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
import torch

import schemas
from jobs.evaluate.job import artist_oracle, evaluate, markdown, popularity_slices
from jobs.evaluate.judge import cosine_distance, same_artist
from schemas.metrics import agreement, rank_metrics, spread
from jobs.evaluate.job import main as evaluate_main
from model.bow import BagOfWords, mfcc_frames
from model.net import NetConfig, build_net
from schemas import factors_column, storage
from schemas import mels as mel_values
from schemas.config import BowConfig, EvaluateConfig, MelParams
from schemas.feedback import als_settings, fold_in
from schemas.layout import mel_shards
from schemas.metrics import average_precision_at


def table(ids, key, matrix):
    return pa.table({key: ids, "factors": factors_column(np.asarray(matrix, np.float32))})


def test_rank_metrics_perfect_and_reversed():
    users = table(["a", "b"], "user_id", [[1, 0], [0, 1]])
    heldout = pa.table({"user_id": ["a", "b"], "track_id": ["x", "y"], "plays": [3, 1]})
    good = rank_metrics(users, table(["x", "y", "z"], "track_id", [[1, 0], [0, 1], [0, 0]]),
                        heldout, 500, 10)
    bad = rank_metrics(users, table(["x", "y", "z"], "track_id", [[-1, 0], [0, -1], [0, 0]]),
                       heldout, 500, 10)
    assert good["auc"] == 1.0 and good["map@500"] == 1.0 and good["users"] == 2
    assert bad["auc"] == 0.0


def test_average_precision_at_k():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    relevant = np.array([True, False, True, False])
    assert average_precision_at(scores, relevant, 500) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision_at(scores, relevant, 1) == pytest.approx(1.0)


def test_fold_in_solves_the_weighted_objective():
    """Against a brute-force minimiser of sum_u c_u (p_u - x_u.y)^2 + reg * n * |y|^2."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    counts = np.zeros(40)
    counts[[2, 5, 7, 30]] = [1, 4, 9, 2]
    alpha, eps, reg = 3.0, 0.5, 0.2
    y = fold_in(x, sp.csr_matrix(counts[None, :]), alpha, eps, reg)[0]
    c = 1 + alpha * np.log1p(counts / eps)
    p = (counts > 0).astype(float)
    weighted = x.T @ (c[:, None] * x) + reg * 4 * np.eye(3)
    np.testing.assert_allclose(y, np.linalg.solve(weighted, x.T @ (c * p)), rtol=1e-4)

    def objective(v):
        return np.sum(c * (p - x @ v) ** 2) + reg * 4 * v @ v
    for _ in range(5):  # no nearby point does better
        assert objective(y) <= objective(y + rng.normal(scale=1e-3, size=3))


def test_cosine_distance():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert cosine_distance(a, a * 3) == pytest.approx(0.0, abs=1e-7)
    assert cosine_distance(a, -a) == pytest.approx(2.0)


def test_mfcc_frames_shape():
    mels = np.random.default_rng(0).normal(size=(2, 128, 50)).astype(np.float32)
    assert mfcc_frames(mels).shape == (2, 50, 39)


def test_bag_of_words_learns_a_timbre_mapping():
    """Tracks with energy in low or high bands map to two directions; BoW gets it."""
    rng = np.random.default_rng(0)
    kinds = rng.integers(0, 2, 80)
    mels = rng.normal(size=(80, 32, 60)).astype(np.float32)
    for i, k in enumerate(kinds):
        mels[i, :16] += 4.0 if k == 0 else 0.0
        mels[i, 16:] += 4.0 if k == 1 else 0.0
    factors = np.eye(2, dtype=np.float32)[kinds] * 3
    bow = BagOfWords(BowConfig(codebook=16, frames_per_track=30)).fit(mels[:60], factors[:60])
    pred = bow.predict(mels[60:])
    assert np.mean(np.argmax(pred, axis=1) == kinds[60:]) > 0.9


def test_markdown_table_lists_every_method():
    report = {"k": 500, "users": 3, "heldout_tracks": 2,
              "methods": [{"method": "random", "map@500": 0.1, "auc": 0.5, "cosine_distance": 1.0}]}
    assert "| random | 0.1000 | 0.5000 | 1.0000 |" in markdown(report)


def write_evaluation_set(root):
    """Mel shards of 8 warm and 4 held-out tracks, ALS factors of 6 users, held-out plays."""
    rng = np.random.default_rng(0)
    params = MelParams(n_mels=16)
    ids = [f"t{i}" for i in range(12)]
    mels = rng.normal(0, 1, (12, 16, 120)).astype(np.float32)
    run = root / "mels" / params.params_hash() / "r1"
    run.mkdir(parents=True)
    shard = pa.table({"track_id": ids, "n_mels": [16] * 12, "n_frames": [120] * 12,
                      "dtype": [params.dtype] * 12, "mel": mel_values.encode(list(mels), params.dtype)})
    storage.write_table(shard, run / "mels-00000-of-00001.parquet", schemas.MEL_SHARD,
                        params.to_dict())
    users = table([f"u{u}" for u in range(6)], "user_id", rng.normal(0, 1, (6, 4)))
    items = table(ids[:8], "track_id", rng.normal(0, 1, (8, 4)))
    heldout = pa.table({"user_id": [f"u{u}" for u in range(6)] * 2,
                        "track_id": [ids[8 + u % 4] for u in range(12)],
                        "plays": pa.array([3] * 12, pa.int64())})
    return run.parent, users, items, heldout, params


def tiny_model(path, params, factor_space=None, metadata_vocab=()):
    from model.net import Network
    from model.predictor import Predictor

    config = NetConfig(arch="dieleman2014", n_mels=16, n_factors=4, channels=(4, 4, 4, 4),
                       dense=8, metadata_vocab=metadata_vocab)
    torch.manual_seed(len(str(path)))
    Predictor((Network(build_net(config), 1.0, True),), params.to_dict(), factor_space,
              {"loss": "mse"}).save(path)
    return path


def test_two_models_of_the_same_kind_keep_a_row_each(tmp_path):
    mels_dir, users, items, heldout, params = write_evaluation_set(tmp_path)
    models = [tiny_model(tmp_path / "first.pt", params), tiny_model(tmp_path / "second.pt", params)]

    report = evaluate(users, items, {"alpha": 10.0, "eps": 1.0, "reg": 0.1}, heldout,
                      mel_shards(mels_dir), models, BowConfig(codebook=4, frames_per_track=20),
                      EvaluateConfig(k=10))

    names = [row["method"] for row in report["methods"]]
    assert names.count("CNN dieleman2014, mse loss") == 1
    assert "CNN dieleman2014, mse loss (second.pt)" in names
    assert names == ["random", "bag-of-words + linear regression", "bag-of-words + MLP",
                     "CNN dieleman2014, mse loss", "CNN dieleman2014, mse loss (second.pt)",
                     "upper bound (ALS sees the plays)"]
    for row in report["methods"]:
        assert set(row["slices"]) == {"least popular", "middle", "most popular"}
        assert 0.0 <= row["recall@10"] <= 1.0


def test_artists_add_the_oracle_and_the_neighbour_check(tmp_path):
    mels_dir, users, items, heldout, params = write_evaluation_set(tmp_path)
    # t0-t7 warm, t8-t11 held out; artists a (t0-t3, t8, t9) and b (t4-t7, t10), c (t11)
    artist = ["a"] * 4 + ["b"] * 4 + ["a", "a", "b", "c"]
    catalogue = pa.table({"track_id": [f"t{i}" for i in range(12)], "artist": artist})
    noise = np.random.default_rng(1).normal(0, 0.1, (8, 4))
    items = table([f"t{i}" for i in range(8)], "track_id", noise + np.repeat(np.eye(4)[:2], 4, 0))
    report = evaluate(users, items, {"alpha": 10.0, "eps": 1.0, "reg": 0.1}, heldout,
                      mel_shards(mels_dir), [], BowConfig(codebook=4, frames_per_track=20),
                      EvaluateConfig(k=10, neighbours=4), catalogue=catalogue)
    assert report["tracks_with_known_artist"] == 3  # c has no warm track
    oracle = next(m for m in report["methods"] if m["method"].startswith("artist oracle"))
    # each of a's and b's held-out tracks finds its artist's 4 warm tracks; c finds none
    assert oracle["same_artist@4"] == pytest.approx(3 / 4)


def test_artist_oracle_is_the_mean_of_the_artists_warm_factors():
    items = table(["w1", "w2", "w3"], "track_id", [[1, 0], [3, 0], [0, 5]])
    artist_of = {"w1": "a", "w2": "a", "w3": "b", "h1": "a", "h2": "z"}
    factors, known = artist_oracle(["h1", "h2"], artist_of, items, np.array([9.0, 9.0]))
    np.testing.assert_allclose(factors, [[2, 0], [9, 9]])
    assert known == 1


def test_spread_and_same_artist_tell_a_collapsed_model():
    rng = np.random.default_rng(0)
    constant = np.tile(rng.normal(size=8), (20, 1)) + rng.normal(scale=1e-3, size=(20, 8))
    assert spread(constant) < 0.01 and spread(rng.normal(size=(20, 8))) > 0.8
    target = rng.normal(size=(20, 8)) + 5  # a strong common direction
    reference = (target / np.linalg.norm(target, axis=1, keepdims=True)).mean(axis=0)
    assert agreement(target, target, reference) == pytest.approx(1.0)
    assert abs(agreement(constant * 0 + reference, target, reference)) < 0.2
    assert agreement(constant, target, reference) < 0.5 < agreement(target + rng.normal(
        scale=0.1, size=target.shape), target, reference)
    warm = np.eye(4)
    assert same_artist(np.eye(4)[[0, 1]], ["a", "b"], warm, ["a", "b", "c", "d"], 1) == 1.0
    assert np.isnan(same_artist(np.eye(4)[[0]], [None], warm, [None] * 4, 1))


def test_popularity_slices_split_by_listeners():
    heldout = pa.table({"user_id": ["u"] * 6, "track_id": ["x", "y", "y", "z", "z", "z"]})
    slices = popularity_slices(heldout, ["z", "x", "y"])
    assert slices == {"least popular": ["x"], "middle": ["y"], "most popular": ["z"]}


def test_factors_without_als_settings_are_refused_not_given_another_alpha(tmp_path):
    mels_dir, users, items, heldout, _ = write_evaluation_set(tmp_path)
    storage.write_table(users, tmp_path / "users.parquet", schemas.USER_FACTORS)
    storage.write_table(items, tmp_path / "items.parquet", schemas.ITEM_FACTORS)  # no metadata
    storage.write_table(heldout, tmp_path / "heldout.parquet", schemas.PLAYS)

    code = evaluate_main(["--user-factors", str(tmp_path / "users.parquet"),
                          "--item-factors", str(tmp_path / "items.parquet"),
                          "--heldout-plays", str(tmp_path / "heldout.parquet"),
                          "--mels", str(mels_dir), "--out", str(tmp_path / "report.json")])

    assert code == 1
    assert not (tmp_path / "report.json").exists()
    with pytest.raises(ValueError, match=r"items.parquet: its metadata lacks the ALS settings "
                                         r"\['alpha', 'eps', 'reg'\]"):
        als_settings({}, tmp_path / "items.parquet")
    assert als_settings({"alpha": 2, "eps": 0.5, "reg": 0.1, "rank": 8}, "x") == {
        "alpha": 2.0, "eps": 0.5, "reg": 0.1}


def test_a_missing_model_file_fails_in_one_line_naming_it(tmp_path, capfd):
    mels_dir, users, items, heldout, _ = write_evaluation_set(tmp_path)
    meta = {"alpha": 10.0, "eps": 1.0, "reg": 0.1}
    storage.write_table(users, tmp_path / "users.parquet", schemas.USER_FACTORS, meta)
    storage.write_table(items, tmp_path / "items.parquet", schemas.ITEM_FACTORS, meta)
    storage.write_table(heldout, tmp_path / "heldout.parquet", schemas.PLAYS)

    code = evaluate_main(["--user-factors", str(tmp_path / "users.parquet"),
                          "--item-factors", str(tmp_path / "items.parquet"),
                          "--heldout-plays", str(tmp_path / "heldout.parquet"),
                          "--mels", str(mels_dir), "--model", str(tmp_path / "gone.pt"),
                          "--bow-codebook", "4", "--out", str(tmp_path / "report.json")])

    err = capfd.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "gone.pt" in err.strip().splitlines()[-1]
    assert not (tmp_path / "report.json").exists()


def test_a_fused_model_is_reported_with_and_without_the_artist_and_by_artist_slice(tmp_path):
    from model import metadata

    mels_dir, users, items, heldout, params = write_evaluation_set(tmp_path)
    # held out: t8, t9 of artist a (known), t10, t11 of c (no warm track)
    artist = ["a"] * 4 + ["b"] * 4 + ["a", "a", "c", "c"]
    catalogue = pa.table({"track_id": [f"t{i}" for i in range(12)], "artist": artist})
    tokens = metadata.tokens_of(catalogue)
    config = NetConfig(arch="dieleman2014", n_mels=16, n_factors=4, channels=(4, 4, 4, 4),
                       dense=8, metadata_vocab=metadata.vocabulary(tokens, [f"t{i}" for i in range(8)]))
    torch.manual_seed(0)
    from model.net import Network
    from model.predictor import Predictor
    Predictor((Network(build_net(config), 1.0, True),), params.to_dict(), None,
              {"loss": "wpe"}).save(tmp_path / "fused.pt")
    run = dict(als={"alpha": 10.0, "eps": 1.0, "reg": 0.1}, heldout=heldout,
               shards=mel_shards(mels_dir), models=[tmp_path / "fused.pt"],
               bow=BowConfig(codebook=4, frames_per_track=20), config=EvaluateConfig(k=10))
    with pytest.raises(ValueError, match="fused.pt: the model reads catalogue metadata"):
        evaluate(users, items, **run)
    report = evaluate(users, items, **run, catalogue=catalogue, tokens=tokens)

    rows = {row["method"]: row for row in report["methods"]}
    fused, withheld = rows["CNN dieleman2014, wpe loss + metadata"], \
        rows["CNN dieleman2014, wpe loss + metadata, artist withheld (as if new)"]
    assert fused["cosine_distance"] != withheld["cosine_distance"]
    for row in rows.values():
        assert row["slices"]["known artist"]["tracks"] == 2
        assert row["slices"]["new artist"]["tracks"] == 2
    # the new artist's tracks are predicted the same either way: no token of theirs is known
    assert fused["slices"]["new artist"]["auc"] == withheld["slices"]["new artist"]["auc"]
    assert "new artist (2)" in markdown(report)


def test_fold_in_toward_solves_the_blended_objective():
    from schemas.feedback import confidence, fold_in_toward

    rng = np.random.default_rng(0)
    x, prior = rng.normal(size=(30, 4)), rng.normal(size=(7, 4))
    plays = sp.random(7, 30, density=0.1, random_state=1, format="csr")
    plays.data = np.ceil(plays.data * 5)
    got = fold_in_toward(x, plays, 10.0, 1.0, 2.0, prior, batch=3)
    for i in range(7):
        row = plays[i].toarray()[0]
        p, c = (row > 0).astype(float), np.ones(30)
        c[row > 0] = confidence(row[row > 0], 10.0, 1.0)
        exact = np.linalg.solve(x.T @ (c[:, None] * x) + 2.0 * np.eye(4), x.T @ (c * p) + 2.0 * prior[i])
        np.testing.assert_allclose(got[i], exact, atol=1e-5)
    # held hard enough, a track stays at its prior whatever its plays
    np.testing.assert_allclose(fold_in_toward(x, plays, 10.0, 1.0, 1e9, prior), prior, atol=1e-4)


def test_a_semi_cold_blend_turns_the_audio_prediction_but_keeps_its_length():
    from schemas.feedback import blend_toward, fold_in_toward

    rng = np.random.default_rng(0)
    x, prior = rng.normal(size=(30, 4)), rng.normal(size=(7, 4))
    plays = sp.random(7, 30, density=0.1, random_state=1, format="csr")
    plays.data = np.ceil(plays.data * 5)
    got = blend_toward(x, plays, 10.0, 1.0, 2.0, prior)
    step = fold_in_toward(x, plays, 10.0, 1.0, 2.0, prior)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(prior, axis=1),
                               rtol=1e-5)
    cosine = np.sum(got * step, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(step, axis=1)
    np.testing.assert_allclose(cosine, 1.0, atol=1e-5)
    assert not np.allclose(got, step, atol=1e-3)  # the item step's own lengths differ


def semicold_case(seed=0, n_users=300, n_tracks=40):
    """Users and tracks with true factors, 15-40 listeners per track drawn by preference."""
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n_users, 8)), rng.normal(size=(n_tracks, 8))
    users = table([f"u{u}" for u in range(n_users)], "user_id", x)
    rows = []
    for t in range(n_tracks):
        fans = np.argsort(-(x @ y[t]))[:int(rng.integers(15, 40))]
        rows += [(f"u{u}", f"t{t}", int(rng.integers(1, 6))) for u in fans]
    heldout = pa.table({"user_id": [r[0] for r in rows], "track_id": [r[1] for r in rows],
                        "plays": pa.array([r[2] for r in rows], pa.int64())})
    return users, heldout, [f"t{t}" for t in range(n_tracks)], y.astype(np.float32), rng


def test_semi_cold_tracks_are_reported_as_scoring_serves_them():
    from jobs.evaluate.semicold import REVEALED, evaluate_semicold, markdown
    from schemas.config import SemiColdConfig

    users, heldout, ids, truth, rng = semicold_case()
    als = {"alpha": 10.0, "eps": 1.0, "reg": 0.1}
    settings = SemiColdConfig(min_listeners=3, reg=100.0)
    good = evaluate_semicold(users, heldout, ids, truth * 3, als, 10, 5, 0, settings)
    assert [b["revealed"] for b in good["buckets"]] == list(REVEALED)
    assert (good["min_listeners"], good["reg"]) == (3, 100.0)
    for bucket in good["buckets"]:
        assert 0 < bucket["tracks"] <= len(ids)
        # below min_listeners scoring keeps the audio; from it on, the blend moves it
        assert bucket["blends"] == (bucket["revealed"] >= 3)
        assert (bucket["blend"] == bucket["audio"]) != bucket["blends"]
        assert bucket["blend"]["auc"] >= bucket["als"]["auc"]  # good audio helps ALS
    # audio that is noise: a few plays lift the blend far above it
    noise = rng.normal(size=truth.shape).astype(np.float32)
    bad = evaluate_semicold(users, heldout, ids, noise, als, 10, 5, 0, settings)
    ten = bad["buckets"][-1]
    assert ten["blend"]["auc"] > ten["audio"]["auc"] + 0.1
    assert "held toward it with strength 100" in markdown({"audio": "CNN", **good}, 10)


def test_mean_auc_without_each_track_equals_ranking_again_without_it():
    from schemas.metrics import mean_auc, mean_auc_without_each

    rng = np.random.default_rng(1)
    relevant = rng.random((300, 13)) < 0.3
    relevant[:5] = relevant[:5, :1]  # users who played only the first track, or none
    for scores in (rng.normal(size=relevant.shape), rng.integers(0, 3, size=relevant.shape)):
        expected = [mean_auc(np.delete(scores, j, axis=1), np.delete(relevant, j, axis=1))
                    for j in range(13)]
        np.testing.assert_allclose(mean_auc_without_each(scores, relevant), expected, atol=1e-12)
