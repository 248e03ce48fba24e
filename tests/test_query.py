"""The factors at work: the new releases' audience, and the query command."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import schemas
from jobs.audience import audience
from jobs.index import build as build_index
from jobs.publish import publish
from jobs.query import main as query_main
from schemas import factors_column, layout, storage
from schemas.neighbours import ShardedIndex
from schemas.played import Played
from schemas.ranking import RunningTop, top_k


@pytest.fixture
def snapshot(tmp_path):
    """A published snapshot of 50 users, 30 warm and 10 cold tracks, with plays; every
    track has tags but t38 and t39, which the taggers never heard."""
    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(50)]
    tracks = [f"t{i}" for i in range(40)]
    x, y = rng.normal(size=(50, 6)), rng.normal(size=(40, 6))
    storage.write_table(pa.table({"user_id": users, "factors": factors_column(x)}),
                        tmp_path / "users.parquet", schemas.USER_FACTORS, {"factor_space": "s"})
    storage.write_table(pa.table({"track_id": tracks, "factors": factors_column(y),
                                  "source": ["als"] * 30 + ["audio"] * 10,
                                  "model_version": [None] * 30 + ["v1"] * 10,
                                  "listeners": [20] * 30 + [0] * 10, "plays": [50] * 30 + [0] * 10}),
                        tmp_path / "tracks.parquet", schemas.TRACK_FACTORS)
    pq.write_table(pa.table({"track_id": tracks, "audio_uri": [f"/a/{t}.ogg" for t in tracks],
                             "title": [f"Song {t}" for t in tracks],
                             "artist": [f"Band {i % 4}" for i in range(40)],
                             "duration_s": pa.array([1.0] * 40, pa.float32())}),
                   tmp_path / "catalogue.parquet")
    played = [(u, t) for u in users for t in tracks[:30] if rng.random() < 0.3]
    pq.write_table(pa.table({"user_id": [u for u, _ in played], "track_id": [t for _, t in played],
                             "plays": pa.array([1] * len(played), pa.int64())}),
                   tmp_path / "plays.parquet")
    audience(tmp_path / "users.parquet", tmp_path / "tracks.parquet", tmp_path / "audience.parquet",
             k=5, user_batch=7, track_batch=3)
    build_index(tmp_path / "tracks.parquet", tmp_path / "index")
    storage.write_table(pa.table({"track_id": tracks[:38],
                                  "tags": [[f"tag{i}", f"tag{i % 3}"] for i in range(38)],
                                  "probabilities": [[0.9, 0.5]] * 38,
                                  "taggers_version": ["v"] * 38}),
                        tmp_path / "tags.parquet", schemas.TRACK_TAGS)
    publish("night-1", tmp_path / "users.parquet", tmp_path / "tracks.parquet",
            tmp_path / "published", catalogue=tmp_path / "catalogue.parquet",
            plays=tmp_path / "plays.parquet", audience=tmp_path / "audience.parquet",
            index=tmp_path / "index", tags=tmp_path / "tags.parquet")
    return tmp_path, x, y, played


def query(capsys, root, *args):
    code = query_main(["--published", str(root / "published"), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def top_users(x: np.ndarray, y: np.ndarray, k: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Each track's top k users, the users scored ``batch`` at a time, as the audience job does."""
    top = RunningTop(len(y), k)
    for start in range(0, len(x), batch):
        top.add(y @ x[start:start + batch].T)
    return top.columns, top.scores


def test_top_users_in_batches_is_the_exact_top_k():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(1000, 8)).astype(np.float32), rng.normal(size=(20, 8)).astype(np.float32)
    exact, exact_scores = top_k(y @ x.T, 9)
    for batch in (1, 7, 100, 5000):
        best, scores = top_users(x, y, 9, batch)
        assert (best == exact).all() and np.allclose(scores, exact_scores)
    assert top_users(x[:3], y, 9, 2)[0].shape == (20, 3)  # fewer users than k
    # small whole numbers: many ties, which go to the lower user in any batching
    x, y = rng.integers(-2, 3, size=(1000, 3)).astype(np.float32), rng.integers(-2, 3, size=(20, 3))
    scores = (y @ x.T).astype(np.float32)
    exact = np.argsort(-scores, axis=1, kind="stable")[:, :50]
    exact_scores = np.take_along_axis(scores, exact, axis=1)
    assert all((found == want).all() for found, want in zip(top_k(scores, 50), (exact, exact_scores)))
    for batch in (1, 7, 64, 5000):
        best, scores = top_users(x, y.astype(np.float32), 50, batch)
        assert (best == exact).all() and (scores == exact_scores).all()


def test_the_audience_streams_user_factors_in_parts_as_spark_writes_them(snapshot, tmp_path):
    root, x, y, _ = snapshot
    users = pq.read_table(root / "users.parquet")
    parts = tmp_path / "user_factors"
    parts.mkdir()
    for i, start in enumerate((0, 20, 35)):  # three parts, row groups of 4 users
        pq.write_table(users.slice(start, {0: 20, 20: 15, 35: 15}[start]),
                       parts / f"part-{i:05d}.snappy.parquet", row_group_size=4)
    (parts / "_SUCCESS").touch()
    audience(parts, root / "tracks.parquet", tmp_path / "audience.parquet", k=8, user_batch=3,
             track_batch=4)
    table = pq.read_table(tmp_path / "audience.parquet").to_pydict()
    for track in range(30, 40):
        exact = np.argsort(-(x @ y[track]), kind="stable")[:8]
        got = [(u, s) for t, u, s in zip(table["track_id"], table["user_id"], table["score"])
               if t == f"t{track}"]
        assert [u for u, _ in got] == [f"u{i}" for i in exact]
        np.testing.assert_allclose([s for _, s in got], (x @ y[track])[exact], rtol=1e-5)
    # a night without new releases: an empty table, still readable
    tracks = pq.read_table(root / "tracks.parquet")
    pq.write_table(tracks.filter(pc.equal(tracks["source"], "als")), tmp_path / "warm.parquet")
    assert audience(parts, tmp_path / "warm.parquet", tmp_path / "none.parquet") == 0
    assert pq.read_table(tmp_path / "none.parquet").num_rows == 0
    pq.write_table(pa.table({"user_id": ["u0"], "vector": [1.0]}), parts / "part-00009.parquet")
    with pytest.raises(ValueError, match="part-00009.parquet: does not match"):
        audience(parts, root / "tracks.parquet", tmp_path / "again.parquet")


def test_the_audience_in_pieces_on_two_worker_processes_equals_it_in_one(tmp_path):
    """Parts of 3 tracks, ranges of 7 users, on Beam's local runner with two worker
    processes: the same table as one piece, ties (users with equal factors in other
    ranges) to the earlier user."""
    rng = np.random.default_rng(1)
    # halves: every score is exact whatever the blocks it is computed in, so ties are ties
    x = rng.integers(-4, 5, size=(40, 4)) / 2
    x[30:] = x[:10]  # every score of users 30-39 ties with one of users 0-9
    y = rng.integers(-4, 5, size=(10, 4)) / 2
    storage.write_table(pa.table({"user_id": [f"u{i}" for i in range(40)],
                                  "factors": factors_column(x)}),
                        tmp_path / "users.parquet", schemas.USER_FACTORS)
    storage.write_table(pa.table({"track_id": [f"t{i}" for i in range(10)],
                                  "factors": factors_column(y), "source": ["audio"] * 10,
                                  "model_version": ["v"] * 10, "listeners": [0] * 10,
                                  "plays": [0] * 10}), tmp_path / "tracks.parquet",
                        schemas.TRACK_FACTORS)
    audience(tmp_path / "users.parquet", tmp_path / "tracks.parquet", tmp_path / "one.parquet",
             k=12)
    covered = audience(tmp_path / "users.parquet", tmp_path / "tracks.parquet",
                       tmp_path / "pieces.parquet", k=12, user_batch=3, tracks_per_part=3,
                       users_per_part=7, beam_args=["--direct_num_workers=2",
                                                    "--direct_running_mode=multi_processing"])
    assert covered == 10
    one, pieces = pq.read_table(tmp_path / "one.parquet"), pq.read_table(tmp_path / "pieces.parquet")
    assert pieces.to_pydict() == one.to_pydict()
    scores = (x @ y.T).astype(np.float32)
    for track in range(10):
        exact = np.lexsort((np.arange(40), -scores[:, track]))[:12]
        got = pieces.filter(pc.equal(pieces["track_id"], f"t{track}"))
        assert got["user_id"].to_pylist() == [f"u{i}" for i in exact]
        assert got["score"].to_pylist() == scores[exact, track].tolist()
    assert not list(tmp_path.glob(".tmp-*")), "the parts are removed"


def test_the_audience_of_every_new_release(snapshot):
    root, x, y, _ = snapshot
    table = pq.read_table(root / "published" / "latest" / layout.AUDIENCE).to_pydict()
    assert sorted(set(table["track_id"])) == sorted(f"t{i}" for i in range(30, 40))
    assert len(table["track_id"]) == 10 * 5
    t35 = [u for t, u in zip(table["track_id"], table["user_id"]) if t == "t35"]
    assert t35 == [f"u{i}" for i in np.argsort(-(x @ y[35]), kind="stable")[:5]]
    assert table["rank"][:5] == [1, 2, 3, 4, 5]


def test_similar_tracks_by_cosine_with_titles_and_sources(snapshot, capsys):
    root, _, y, _ = snapshot
    code, out, err = query(capsys, root, "--json", "-n", "4", "similar", "--track", "t33",
                           "--among", "all")
    assert code == 0 and "searching exactly" not in err  # the index answers
    rows = json.loads(out)
    unit = y / np.linalg.norm(y, axis=1, keepdims=True)
    cosine = unit @ unit[33]
    cosine[33] = -np.inf
    assert [r["track_id"] for r in rows] == [f"t{i}" for i in np.argsort(-cosine)[:4]]
    assert [r["score"] for r in rows] == pytest.approx(np.sort(cosine)[::-1][:4], abs=1e-3)
    assert rows[0]["title"] == f"Song {rows[0]['track_id']}" and rows[0]["artist"].startswith("Band")
    assert {r["source"] for r in rows} <= {"als", "audio"}
    assert all(r["tags"] == [f"tag{r['track_id'][1:]}", f"tag{int(r['track_id'][1:]) % 3}"]
               for r in rows)
    code, out, _ = query(capsys, root, "similar", "--track", "t33")
    assert code == 0 and out.splitlines()[0].split() == ["track_id", "title", "artist", "score",
                                                         "source", "tags"]
    shown = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert all(line.rstrip().endswith(f"tag{t[1:]}, tag{int(t[1:]) % 3}")
               for t, line in shown.items() if t not in ("t38", "t39"))


def test_n_and_json_go_anywhere_on_the_command_line(snapshot, capsys):
    root, *_ = snapshot
    answers = []
    for words in (["--json", "-n", "3", "similar", "--track", "t33"],
                  ["similar", "--track", "t33", "-n", "3", "--json"],
                  ["-n", "7", "similar", "--json", "--track", "t33", "-n", "3"]):
        code, out, err = query(capsys, root, *words)
        assert code == 0, err
        answers.append([row["track_id"] for row in json.loads(out)])
    assert len(answers[0]) == 3 and answers[0] == answers[1] == answers[2]
    # given before the query's name, a setting is not undone by the query's default
    code, out, _ = query(capsys, root, "--json", "-n", "2", "audience", "--track", "t33")
    assert code == 0 and len(json.loads(out)) == 2


def test_tracks_the_taggers_never_heard_and_snapshots_without_tags(snapshot, capsys):
    root, _, y, _ = snapshot
    code, out, _ = query(capsys, root, "--json", "-n", "39", "similar", "--track", "t0",
                         "--among", "all")
    rows = {r["track_id"]: r for r in json.loads(out)}
    assert code == 0 and rows["t38"]["tags"] is None and rows["t5"]["tags"] == ["tag5", "tag2"]
    code, out, _ = query(capsys, root, "-n", "39", "similar", "--track", "t0", "--among", "all")
    line = next(line for line in out.splitlines() if line.startswith("t38 "))
    assert line.rstrip().endswith("-")
    # A snapshot published before tracks had tags: no tags column, the same answers.
    tracks = root / "published" / "latest" / layout.SNAPSHOT_TRACKS
    old = pq.read_table(tracks).drop_columns(["tags"])
    pq.write_table(old, tracks)
    code, out, _ = query(capsys, root, "--json", "-n", "39", "similar", "--track", "t0",
                         "--among", "all")
    assert code == 0 and {r["track_id"] for r in json.loads(out)} == set(rows)
    assert all("tags" not in r for r in json.loads(out))
    code, out, _ = query(capsys, root, "similar", "--track", "t0")
    assert code == 0 and out.splitlines()[0].split()[-1] == "source"


def nearest(y: np.ndarray, row: int, rows: range) -> list[str]:
    """Ids of ``rows`` by exact cosine to ``row``, nearest first, without ``row``."""
    unit = y / np.linalg.norm(y, axis=1, keepdims=True)
    others = [r for r in rows if r != row]
    return [f"t{others[i]}" for i in np.argsort(-(unit[others] @ unit[row]))]


@pytest.mark.parametrize("exact", [False, True])
def test_similar_tracks_among_warm_or_cold_ones_only(snapshot, capsys, exact):
    root, _, y, _ = snapshot
    if exact:  # an index of other factors is not used: the search is exact
        manifest = root / "published" / "latest" / layout.INDEX / layout.INDEX_MANIFEST
        manifest.write_text(json.dumps(dict(json.loads(manifest.read_text()), factor_table="x")))
    for among, rows in (("warm", range(30)), ("cold", range(30, 40))):
        code, out, err = query(capsys, root, "--json", "-n", "4", "similar", "--track", "t33",
                               "--among", among)
        assert code == 0 and ("searching exactly" in err) == exact
        assert [r["track_id"] for r in json.loads(out)] == nearest(y, 33, rows)[:4]
    # by default, the warm ones
    code, out, _ = query(capsys, root, "--json", "-n", "4", "similar", "--track", "t33")
    assert [r["track_id"] for r in json.loads(out)] == nearest(y, 33, range(30))[:4]
    # fewer of the kind than asked for: all of them
    code, out, _ = query(capsys, root, "--json", "-n", "20", "similar", "--track", "t3",
                         "--among", "cold")
    assert [r["track_id"] for r in json.loads(out)] == nearest(y, 3, range(30, 40))


def test_a_tracks_audience_matches_the_published_table(snapshot, capsys):
    root, _, _, _ = snapshot
    code, out, _ = query(capsys, root, "--json", "-n", "5", "audience", "--track", "t31")
    assert code == 0
    table = pq.read_table(root / "published" / "latest" / layout.AUDIENCE).to_pydict()
    assert [r["user_id"] for r in json.loads(out)] == \
        [u for t, u in zip(table["track_id"], table["user_id"]) if t == "t31"]


def test_a_warm_tracks_audience_leaves_out_its_listeners(snapshot, capsys):
    root, x, y, played = snapshot
    listeners = {u for u, t in played if t == "t3"}
    code, out, _ = query(capsys, root, "--json", "-n", "5", "audience", "--track", "t3")
    assert code == 0
    score = x @ y[3]
    others = [u for u in np.argsort(-score) if f"u{u}" not in listeners]
    assert [r["user_id"] for r in json.loads(out)] == [f"u{u}" for u in others[:5]]
    assert listeners and not listeners & {r["user_id"] for r in json.loads(out)}


def test_recommendations_leave_out_what_was_played_and_mix_in_cold_tracks(snapshot, capsys):
    root, x, y, played = snapshot
    code, out, _ = query(capsys, root, "--json", "-n", "10", "recommend", "--user", "u3",
                         "--cold-share", "0.3")
    assert code == 0
    rows = json.loads(out)
    mine = {t for u, t in played if u == "u3"}
    assert len(rows) == 10 and not mine & {r["track_id"] for r in rows}
    assert [r["source"] for r in rows].count("audio") == 3
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    best_cold = sorted(range(30, 40), key=lambda i: -(x[3] @ y[i]))[:3]
    assert {r["track_id"] for r in rows if r["source"] == "audio"} == {f"t{i}" for i in best_cold}
    code, out, _ = query(capsys, root, "--json", "-n", "10", "recommend", "--user", "u3",
                         "--cold-share", "0")
    assert code == 0 and all(r["source"] == "als" for r in json.loads(out))


def test_queries_answer_from_the_snapshots_own_plays_as_from_the_plays_file(snapshot, capsys):
    """The snapshot keeps who played what (played/) and the users' factors as a matrix:
    answers equal those from the plays file given with --plays, stay once the file is
    gone (a later night rewrites it), and a snapshot published before either answers
    the same from the file its manifest names."""
    root, x, _, played = snapshot
    latest = root / "published" / "latest"
    matrix = np.load(latest / layout.SNAPSHOT_USER_MATRIX)
    users = pq.read_table(latest / layout.SNAPSHOT_USERS)
    np.testing.assert_array_equal(matrix, schemas.factor_matrix(users))
    kept = Played(latest / layout.SNAPSHOT_PLAYED)
    user_row = users["user_id"].to_pylist().index("u3")
    assert {f"t{j}" for j in kept.tracks_of(user_row)} == {t for u, t in played if u == "u3"}
    assert {users["user_id"][int(i)].as_py() for i in kept.users_of(3)} == \
        {u for u, t in played if t == "t3"}
    asked = (["audience", "--track", "t3"], ["audience", "--track", "t31"],
             ["recommend", "--user", "u3"], ["recommend", "--user", "u17"])

    def answers(*extra):
        found = []
        for argv in asked:
            code, out, _ = query(capsys, root, "--json", "-n", "7", *argv, *extra)
            assert code == 0
            found.append(json.loads(out))
        return found
    own = answers()
    assert answers("--plays", str(root / "plays.parquet")) == own
    (root / "plays.parquet").rename(root / "elsewhere.parquet")
    assert answers() == own
    shutil.rmtree(latest / layout.SNAPSHOT_PLAYED)
    (latest / layout.SNAPSHOT_USER_MATRIX).unlink()
    (root / "elsewhere.parquet").rename(root / "plays.parquet")
    assert answers() == own


def test_unknown_ids_and_a_missing_snapshot_are_errors_naming_them(snapshot, capsys, tmp_path):
    root, _, _, _ = snapshot
    code, _, err = query(capsys, root, "similar", "--track", "nope")
    assert code == 1 and "track 'nope' is not in the snapshot night-1" in err
    code, _, err = query(capsys, root, "recommend", "--user", "nobody")
    assert code == 1 and "user 'nobody' is not in the snapshot" in err
    code = query_main(["--published", str(tmp_path / "empty"), "audience", "--track", "t1"])
    assert code == 1 and "no published snapshot" in capsys.readouterr().err


def test_an_index_of_other_factors_is_not_used(snapshot, capsys):
    root, _, y, _ = snapshot
    manifest = root / "published" / "latest" / layout.INDEX / layout.INDEX_MANIFEST
    built = json.loads(manifest.read_text())
    assert built["tracks"] == 40
    manifest.write_text(json.dumps(dict(built, factor_table="another table")))
    code, out, err = query(capsys, root, "--json", "-n", "3", "similar", "--track", "t2")
    assert code == 0 and "searching exactly" in err
    unit = y / np.linalg.norm(y, axis=1, keepdims=True)
    cosine = unit @ unit[2]
    cosine[2] = -np.inf
    assert [r["track_id"] for r in json.loads(out)] == [f"t{i}" for i in np.argsort(-cosine)[:3]]


def test_an_index_in_shards_built_by_two_workers_answers_as_one(snapshot, capsys):
    """Shards of 7 tracks (6 of them) built on Beam's local runner with two worker
    processes; the query asks every shard and keeps the nearest."""
    root, _, y, _ = snapshot
    folder = root / "published" / "latest" / layout.INDEX
    shutil.rmtree(folder)
    assert build_index(root / "tracks.parquet", folder, tracks_per_shard=7, beam_args=[
        "--direct_num_workers=2", "--direct_running_mode=multi_processing"]) == 40
    built = json.loads((folder / layout.INDEX_MANIFEST).read_text())
    assert built["shards"] == [layout.index_shard(i, 6) for i in range(6)]
    assert sorted(p.name for p in folder.glob("*.voy")) == built["shards"]
    index = ShardedIndex.load(folder)
    assert len(index) == 40 and [len(shard) for shard in index.shards] == [7] * 5 + [5]
    for track, among, rows in ((33, "warm", range(30)), (2, "all", range(40))):
        code, out, err = query(capsys, root, "--json", "-n", "6", "similar", "--track",
                               f"t{track}", "--among", among)
        assert code == 0 and "searching exactly" not in err
        assert [r["track_id"] for r in json.loads(out)] == nearest(y, track, rows)[:6]


def test_the_same_factors_build_the_same_index_files(tmp_path):
    # 3,000 tracks: enough for threads inserting in any order to build another graph
    y = np.random.default_rng(2).normal(size=(3000, 16))
    storage.write_table(pa.table({"track_id": [f"t{i}" for i in range(3000)],
                                  "factors": factors_column(y), "source": ["als"] * 3000,
                                  "model_version": pa.nulls(3000, pa.string()),
                                  "listeners": [1] * 3000, "plays": [1] * 3000}),
                        tmp_path / "tracks.parquet", schemas.TRACK_FACTORS)
    built = [tmp_path / "first", tmp_path / "second"]
    for out in built:
        build_index(tmp_path / "tracks.parquet", out)
    assert (built[0] / layout.INDEX_FILE).read_bytes() == (built[1] / layout.INDEX_FILE).read_bytes()


HEAVY = ("pandas", "pyarrow.dataset", "scipy", "sklearn", "torch", "pyspark", "apache_beam")


@pytest.mark.parametrize("argv", [["similar", "--track", "t35"], ["audience", "--track", "t35"],
                                  ["audience", "--track", "t3"], ["recommend", "--user", "u7"]])
def test_a_query_imports_only_what_it_needs_and_reads_the_snapshot_in_part(snapshot, argv):
    # a fresh process, as a user runs it: no pandas (pyarrow imports it on its first
    # conversion of Python values or to numpy), no dataset scanner, no engine
    root = snapshot[0]
    code = ("import contextlib, io, json, sys; from jobs.query import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out: code = main(sys.argv[1:])\n"
            f"print(json.dumps([code, [m for m in {HEAVY!r} if m in sys.modules], out.getvalue()]))")
    result = subprocess.run([sys.executable, "-c", code, "--published", str(root / "published"),
                             *argv], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    exit_code, heavy, printed = json.loads(result.stdout)
    assert (exit_code, heavy) == (0, []) and printed.count("\n") >= 3

