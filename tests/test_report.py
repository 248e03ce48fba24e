"""The run report (jobs/report) built from a run's directory alone: its tags."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from jobs import tags as tags_job
from jobs.report.job import build
from schemas import factors_column, layout, storage
from tests.test_tags import tagger_input, write_catalogue, write_shard


def test_the_similar_tracks_show_every_tracks_tags(tmp_path):
    """Six warm tracks and two cold ones; the taggers heard all but the cold t7."""
    run = tmp_path / "runs" / "r1"
    outputs = layout.RunOutputs(run)
    ids = [f"t{i}" for i in range(8)]
    # t6's nearest tracks, in order: t0, t1, t2, ...; t7 is far from all
    y = np.array([[1.0, 0.1 * i, 0.0] for i in range(7)] + [[-1.0, 0.0, 1.0]])
    storage.write_table(pa.table({
        "track_id": ids, "factors": factors_column(y[[1, 2, 3, 4, 5, 6, 0, 7]]),
        "source": ["als"] * 6 + ["audio"] * 2, "model_version": [None] * 6 + ["m"] * 2,
        "listeners": [4] * 6 + [0] * 2, "plays": [9] * 6 + [0] * 2}),
        outputs.factors("f") / layout.TRACK_FACTORS, schemas.TRACK_FACTORS)
    write_shard(tmp_path / "frontend-mels" / "r1" / "mels-00000-of-00001.parquet",
                {t: tagger_input("beats" if i % 2 else "chord") for i, t in enumerate(ids[:7])})
    write_catalogue(tmp_path / "catalogue.parquet", ids)
    assert tags_job.main(["--frontend-mels", str(tmp_path / "frontend-mels"), "--catalogue",
                          str(tmp_path / "catalogue.parquet"), "--out", str(outputs.tags("g"))]) == 0
    tags = {row["track_id"]: ", ".join(row["tags"]) for row in pq.read_table(outputs.tags("g")).to_pylist()}
    assert tags["t1"] != tags["t0"]

    markdown = (build(run, catalogue=tmp_path / "catalogue.parquet", out=tmp_path / "report")
                / layout.REPORT_MARKDOWN).read_text()
    similar = markdown[markdown.index("## Similar tracks"):]
    assert f"Nearest to Song t6 (Band), a cold track (tags: {tags['t6']}):" in similar
    assert "| track | from | cosine | tags |" in similar
    rows = [line for line in similar.splitlines() if line.startswith("| Song t")]
    assert [row.split(" | ")[0] for row in rows[:5]] == [f"| Song t{i} (Band)" for i in range(5)]
    assert all(row.endswith(f" | {tags[f't{i}']} |") for i, row in enumerate(rows[:5]))
    assert "a cold track (tags: not heard):" in similar  # t7
    # the common tags, counted among cold (t6) and warm tracks (three chords, three beats)
    chord = tags["t0"].split(", ")[0]
    assert f"| {chord} | 1 | 3 |" in similar
    assert "| tracks with tags from the pretrained taggers | 7 |" in markdown
