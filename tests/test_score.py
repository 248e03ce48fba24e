"""Scoring: the factor table covers the catalogue, and only the catalogue."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from jobs.score import score
from model.data import read_mels
from model.predictor import Excerpts, FactorSpace, Predictor
from schemas import layout, storage
from tests.test_evaluate import tiny_model, write_evaluation_set


def test_played_tracks_outside_the_catalogue_are_set_aside_not_served(tmp_path):
    mels_dir, _, items, _, params = write_evaluation_set(tmp_path)  # t0..t7 warm, t8..t11 cold
    storage.write_table(items, tmp_path / "items.parquet", schemas.ITEM_FACTORS,
                        {"factor_space": "night"})
    model = tiny_model(tmp_path / "model.pt", params, factor_space="night")
    listed = [f"t{i}" for i in range(2, 12)]  # t0 and t1 were played but are not listed
    pq.write_table(pa.Table.from_pylist(
        [{"track_id": t, "audio_uri": f"/a/{t}.mp3", "title": t, "artist": "a", "duration_s": 1.0}
         for t in listed], schemas.CATALOGUE), tmp_path / "catalogue.parquet")

    score(model, mels_dir, tmp_path / "catalogue.parquet", tmp_path / "items.parquet",
          tmp_path / "out")

    table = pq.read_table(tmp_path / "out" / layout.TRACK_FACTORS).to_pydict()
    assert sorted(table["track_id"]) == sorted(listed)
    assert table["source"].count("audio") == 4
    unlisted = pq.read_table(tmp_path / "out" / layout.UNLISTED).to_pydict()
    assert sorted(unlisted["track_id"]) == ["t0", "t1"]

    pq.write_table(pa.Table.from_pylist(
        [{"track_id": "x", "audio_uri": "/a/x.mp3", "title": "x", "artist": "a",
          "duration_s": 1.0}], schemas.CATALOGUE), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="none of the 8 tracks of .* is in the catalogue"):
        score(model, mels_dir, tmp_path / "other.parquet", tmp_path / "items.parquet",
              tmp_path / "out2")


def test_a_model_with_a_metadata_branch_reads_the_catalogues_artists(tmp_path):
    mels_dir, _, items, _, params = write_evaluation_set(tmp_path)  # t0..t7 warm, t8..t11 cold
    storage.write_table(items, tmp_path / "items.parquet", schemas.ITEM_FACTORS,
                        {"factor_space": "night"})
    model = tiny_model(tmp_path / "model.pt", params, factor_space="night",
                       metadata_vocab=("artist=a", "artist=b"))
    predicted = {}
    for artist in ("a", "b", "someone new"):
        catalogue = tmp_path / f"catalogue-{artist}.parquet"
        pq.write_table(pa.Table.from_pylist(
            [{"track_id": f"t{i}", "audio_uri": f"/a/t{i}.mp3", "title": f"t{i}", "artist": artist,
              "duration_s": 1.0} for i in range(12)], schemas.CATALOGUE), catalogue)
        score(model, mels_dir, catalogue, tmp_path / "items.parquet", tmp_path / artist)
        table = pq.read_table(tmp_path / artist / layout.PREDICTED_FACTORS)
        predicted[artist] = table.column("factors").to_pylist()
        assert table.num_rows == 4
    assert predicted["a"] != predicted["b"]  # the artist is heard
    # an artist the model never saw is no token at all: the audio alone decides
    predictor = Predictor.load(model)
    cold = read_mels(layout.mel_shards(mels_dir), [f"t{i}" for i in range(8, 12)])
    alone = predictor.predict(Excerpts.of(cold, params.to_dict()), FactorSpace("night", "items"),
                              {})  # a catalogue that says nothing of these tracks
    order = pq.read_table(tmp_path / "someone new" / layout.PREDICTED_FACTORS)["track_id"]
    assert order.to_pylist() == cold["track_id"].to_pylist()
    np.testing.assert_allclose(predicted["someone new"], alone, rtol=1e-5)


def test_semi_cold_tracks_are_held_toward_their_audio_or_keep_it_when_few_and_plays_are_recorded(tmp_path):
    from schemas.feedback import blend_toward, plays_matrix

    mels_dir, users, items, _, params = write_evaluation_set(tmp_path)  # t0..t7 warm
    als = tmp_path / "als"
    meta = {"factor_space": "night", "alpha": 10.0, "eps": 1.0, "reg": 0.1}
    storage.write_table(items, als / layout.ITEM_FACTORS / "part-0.parquet", schemas.ITEM_FACTORS, meta)
    storage.write_table(users, als / layout.USER_FACTORS / "part-0.parquet", schemas.USER_FACTORS, meta)
    listeners = {f"t{i}": 20 for i in range(6)} | {"t6": 2, "t7": 1}
    storage.write_table(pa.table({"track_id": list(listeners), "listeners": list(listeners.values()),
                                  "plays": [3 * n for n in listeners.values()]}),
                        als / layout.TRACK_PLAYS / "part-0.parquet", schemas.TRACK_PLAYS)
    sparse = pa.table({"user_id": ["u0", "u1", "u2"], "track_id": ["t6", "t6", "t7"],
                       "plays": pa.array([1, 2, 6], pa.int64())})
    storage.write_table(sparse, als / layout.SPARSE_PLAYS / "part-0.parquet", schemas.PLAYS)
    model = tiny_model(tmp_path / "model.pt", params, factor_space="night")
    pq.write_table(pa.Table.from_pylist(
        [{"track_id": f"t{i}", "audio_uri": f"/a/t{i}.mp3", "title": f"t{i}", "artist": "a",
          "duration_s": 1.0} for i in range(12)], schemas.CATALOGUE), tmp_path / "catalogue.parquet")

    score(model, mels_dir, tmp_path / "catalogue.parquet", als / layout.ITEM_FACTORS,
          tmp_path / "out", als_dir=als, semi_cold_reg=5.0, semi_cold_min_listeners=2)

    table = pq.read_table(tmp_path / "out" / layout.TRACK_FACTORS).to_pydict()
    row = {t: i for i, t in enumerate(table["track_id"])}
    assert [table["source"][row[t]] for t in ("t0", "t6", "t7", "t9")] == \
        ["als", "als+audio", "audio", "audio"]  # t7: one listener, below the two needed
    assert [table["listeners"][row[t]] for t in ("t0", "t6", "t9")] == [20, 2, 0]
    assert [table["plays"][row[t]] for t in ("t0", "t6", "t9")] == [60, 6, 0]
    audio = Predictor.load(model).predict(
        Excerpts.of(read_mels(layout.mel_shards(mels_dir), ["t6", "t7"]), params.to_dict()),
        FactorSpace("night", "items"))
    user_index = {u: i for i, u in enumerate(users.column("user_id").to_pylist())}
    expected = blend_toward(schemas.factor_matrix(users),
                            plays_matrix(sparse, {"t6": 0}, user_index), 10.0, 1.0, 5.0, audio[:1])
    np.testing.assert_allclose([table["factors"][row["t6"]]], expected, rtol=1e-5)
    np.testing.assert_allclose(table["factors"][row["t7"]], audio[1], rtol=1e-5)
    assert table["factors"][row["t0"]] == items.column("factors")[0].as_py()

    # in parts of 2 tracks (3 parts: 4 cold and 2 semi-cold), on two worker processes:
    # the same tables (the factors to float precision: other batches)
    score(model, mels_dir, tmp_path / "catalogue.parquet", als / layout.ITEM_FACTORS,
          tmp_path / "parts", als_dir=als, semi_cold_reg=5.0, semi_cold_min_listeners=2,
          tracks_per_part=2, beam_args=["--direct_num_workers=2",
                                        "--direct_running_mode=multi_processing"])
    for name in (layout.TRACK_FACTORS, layout.PREDICTED_FACTORS):
        whole, parts = (pq.read_table(tmp_path / out / name).to_pydict() for out in ("out", "parts"))
        np.testing.assert_allclose(parts.pop("factors"), whole.pop("factors"), rtol=1e-5)
        assert parts == whole
    assert not list(tmp_path.glob(".tmp-*")), "the parts are removed"


def test_a_degraded_night_rotates_the_last_good_models_predictions_into_tonights_space(tmp_path):
    from schemas import factor_matrix, factors_column

    mels_dir, _, items, _, params = write_evaluation_set(tmp_path)  # t0..t7 warm, t8..t11 cold
    storage.write_table(items, tmp_path / "then.parquet", schemas.ITEM_FACTORS,
                        {"factor_space": "then"})
    model = tiny_model(tmp_path / "model.pt", params, factor_space="then")
    rotation, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(4, 4)))
    tonight = items.set_column(1, "factors", factors_column(factor_matrix(items) @ rotation))
    storage.write_table(tonight, tmp_path / "tonight.parquet", schemas.ITEM_FACTORS,
                        {"factor_space": "tonight"})
    pq.write_table(pa.Table.from_pylist(
        [{"track_id": f"t{i}", "audio_uri": f"/a/t{i}.mp3", "title": "x", "artist": "a",
          "duration_s": 1.0} for i in range(12)], schemas.CATALOGUE), tmp_path / "catalogue.parquet")
    score(model, mels_dir, tmp_path / "catalogue.parquet", tmp_path / "then.parquet",
          tmp_path / "then")
    with pytest.raises(ValueError, match="learned the factor space then"):
        score(model, mels_dir, tmp_path / "catalogue.parquet", tmp_path / "tonight.parquet",
              tmp_path / "refused")

    score(model, mels_dir, tmp_path / "catalogue.parquet", tmp_path / "tonight.parquet",
          tmp_path / "tonight", learned=tmp_path / "then.parquet", degraded="training collapsed")

    then = pq.read_table(tmp_path / "then" / layout.PREDICTED_FACTORS)
    now = pq.read_table(tmp_path / "tonight" / layout.PREDICTED_FACTORS)
    assert now["track_id"].to_pylist() == then["track_id"].to_pylist() == ["t8", "t9", "t10", "t11"]
    np.testing.assert_allclose(factor_matrix(now), factor_matrix(then) @ rotation, atol=1e-5)
    served = storage.read_params(tmp_path / "tonight" / layout.TRACK_FACTORS)
    assert served["degraded"] == "training collapsed"
    assert served["model"] == str(model.resolve())
    assert served["model_factors"] == str((tmp_path / "then.parquet").resolve())


def test_a_degraded_night_without_a_model_serves_the_warm_and_sets_the_cold_aside(tmp_path):
    mels_dir, _, items, _, params = write_evaluation_set(tmp_path)
    storage.write_table(items, tmp_path / "items.parquet", schemas.ITEM_FACTORS,
                        {"factor_space": "night"})
    pq.write_table(pa.Table.from_pylist(
        [{"track_id": f"t{i}", "audio_uri": f"/a/t{i}.mp3", "title": "x", "artist": "a",
          "duration_s": 1.0} for i in range(12)], schemas.CATALOGUE), tmp_path / "catalogue.parquet")

    score(None, mels_dir, tmp_path / "catalogue.parquet", tmp_path / "items.parquet",
          tmp_path / "out", degraded="no model was ever trained")

    table = pq.read_table(tmp_path / "out" / layout.TRACK_FACTORS).to_pydict()
    assert sorted(table["track_id"]) == [f"t{i}" for i in range(8)]
    unscored = pq.read_table(tmp_path / "out" / layout.UNSCORED).to_pydict()
    assert sorted(unscored["track_id"]) == ["t10", "t11", "t8", "t9"]
    assert set(unscored["error"]) == {"no model to predict it: no model was ever trained"}


def test_a_damaged_shard_ends_the_pipeline_with_one_line_naming_it(tmp_path):
    """The failure happens in a Beam worker; the job still ends with one line naming the
    shard, and Beam's traceback only when asked for."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from schemas import cli

    mels_dir, _, items, _, params = write_evaluation_set(tmp_path)
    storage.write_table(items, tmp_path / "items.parquet", schemas.ITEM_FACTORS,
                        {"factor_space": "night"})
    model = tiny_model(tmp_path / "model.pt", params, factor_space="night")
    pq.write_table(pa.Table.from_pylist(
        [{"track_id": f"t{i}", "audio_uri": f"/a/t{i}.mp3", "title": f"t{i}", "artist": "a",
          "duration_s": 1.0} for i in range(12)], schemas.CATALOGUE), tmp_path / "catalogue.parquet")
    shard = layout.mel_shards(mels_dir)[-1]
    shard.write_bytes(shard.read_bytes()[:-200])  # its footer cut off
    job = [sys.executable, "-m", "jobs.score", "--model", str(model), "--mels", str(mels_dir),
           "--catalogue", str(tmp_path / "catalogue.parquet"),
           "--item-factors", str(tmp_path / "items.parquet")]
    repo = Path(__file__).resolve().parents[1]
    for out, env, traceback in (("out", {}, False), ("again", {cli.DEBUG: "1"}, True)):
        done = subprocess.run([*job, "--out", str(tmp_path / out)], capture_output=True,
                              text=True, timeout=300, cwd=repo, env={**os.environ, **env})
        assert done.returncode == 1, done.stderr
        assert ("Traceback" in done.stderr) == traceback, done.stderr
        assert shard.name in done.stderr.strip().splitlines()[-1], done.stderr
        assert not (tmp_path / out).exists()
