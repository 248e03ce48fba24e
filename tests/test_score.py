"""Scoring: the factor table covers the catalogue, and only the catalogue."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas
from jobs.score import score
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
