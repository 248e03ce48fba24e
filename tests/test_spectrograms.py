"""The Beam spectrogram job: its graph under TestPipeline, its DoFns, and main."""
import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.pvalue import TaggedOutput
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

import schemas
from jobs import spectrograms
from jobs.mel import MelParams, mel_shards
from jobs.spectrograms import (ComputeLogMel, DecodeAudio, MelOptions, build, main, mel_params,
                               mel_table, parse_options, run_dir)
from tests.test_mel import tone, write_audio

EXCERPT_S = 1.0
PARAMS = MelParams(excerpt_s=EXCERPT_S)
FRAMES = 1 + round(EXCERPT_S * 22050) // 512
# Each good track is a tone of its own frequency, so mixing tracks up shows.
GOOD = {"low": (300.0, "flac", "mono"), "mid": (1200.0, "ogg", "stereo"),
        "high": (4000.0, "mp3", "mono")}


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """A catalogue of three good tracks, a corrupt file and a missing one."""
    root = tmp_path_factory.mktemp("catalogue")
    codecs = {"flac": "flac", "ogg": "vorbis", "mp3": "libmp3lame"}
    rows = []
    for track_id, (freq, ext, layout) in GOOD.items():
        path = write_audio(root / f"{track_id}.{ext}", tone(freq, 2.0, 44100), 44100,
                           codecs[ext], 1 if layout == "mono" else 2)
        rows.append({"track_id": track_id, "audio_uri": path, "title": track_id})
    (root / "corrupt.mp3").write_bytes(np.random.default_rng(1).bytes(30_000))
    rows.append({"track_id": "corrupt", "audio_uri": str(root / "corrupt.mp3")})
    rows.append({"track_id": "missing", "audio_uri": str(root / "missing.ogg")})
    path = root / "catalogue.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schemas.CATALOGUE), path)
    return {"path": path, "rows": rows}


def peak_band(mel: np.ndarray) -> int:
    return int(mel.mean(axis=1).argmax())


def graph_options(*flags):
    return MelOptions(["--excerpt-s", str(EXCERPT_S), "--no-isolate-decoding", *flags])


def test_graph_computes_mels_and_routes_failures_to_dead_letters(catalogue):
    low_uri = catalogue["rows"][0]["audio_uri"]
    rows = catalogue["rows"] + [{"track_id": "mid", "audio_uri": low_uri},
                                {"track_id": None, "audio_uri": "x.ogg"}]

    def check_mels(mels):
        by_id = {m["track_id"]: m["mel"].reshape(m["n_mels"], m["n_frames"]) for m in mels}
        assert sorted(by_id) == ["high", "low"]  # "mid" is skipped as already done
        assert all(mel.shape == (128, FRAMES) for mel in by_id.values())
        assert peak_band(by_id["low"]) < peak_band(by_id["high"])

    with BeamTestPipeline(runner="FnApiRunner", options=graph_options()) as pipeline:
        outputs = build(pipeline | beam.Create(rows), graph_options(), skip={"mid"})
        assert_that(outputs.mels, check_mels, label="CheckMels")
        assert_that(outputs.dead_letters | beam.Map(lambda d: (d["track_id"], d["stage"])),
                    equal_to([("corrupt", "decode"), ("missing", "decode"),
                              (None, "catalogue")]),
                    label="CheckDeadLetters")


def test_duplicate_track_ids_keep_one_row(catalogue):
    low = catalogue["rows"][0]
    # Of duplicates, the row with the smallest audio_uri is kept.
    rows = [low, {**low, "audio_uri": "/zzz/nowhere.ogg"}, {"track_id": "x", "audio_uri": None}]

    with BeamTestPipeline(runner="FnApiRunner", options=graph_options()) as pipeline:
        outputs = build(pipeline | beam.Create(rows), graph_options())
        assert_that(outputs.mels | beam.Map(lambda m: m["track_id"]), equal_to(["low"]),
                    label="CheckMels")
        assert_that(outputs.dead_letters | beam.Map(lambda d: (d["audio_uri"], d["stage"])),
                    equal_to([("/zzz/nowhere.ogg", "catalogue"), (None, "catalogue")]),
                    label="CheckDeadLetters")


def test_decode_dofn_sends_failures_to_dead_letters(catalogue, tmp_path):
    decode = DecodeAudio(PARAMS, isolate=False)
    decode.setup()
    good, corrupt = catalogue["rows"][0], catalogue["rows"][3]

    (row, samples), = decode.process(good)
    (dead,) = decode.process(corrupt)

    assert row is good and samples.shape == (22050,)
    assert isinstance(dead, TaggedOutput) and dead.tag == spectrograms.DEAD_LETTERS
    assert dead.value["track_id"] == "corrupt" and dead.value["stage"] == "decode"
    assert corrupt["audio_uri"] in dead.value["error"]


def test_log_mel_dofn_outputs_mel_shard_rows():
    row = {"track_id": "t", "audio_uri": "t.ogg"}
    samples = tone(1000, EXCERPT_S, 22050).astype(np.float32)

    (mel_row,) = ComputeLogMel(PARAMS).process((row, samples))
    (dead,) = ComputeLogMel(PARAMS).process((row, np.zeros(0, np.float32)))

    assert (mel_row["n_mels"], mel_row["n_frames"]) == (128, FRAMES)
    assert mel_row["mel"].shape == (128 * FRAMES,)
    assert dead.tag == spectrograms.DEAD_LETTERS and dead.value["stage"] == "mel"


def test_mel_table_round_trips_through_the_schema():
    rng = np.random.default_rng(0)
    mels = [rng.standard_normal((4, n)).astype(np.float32) for n in (3, 5)]
    rows = [{"track_id": f"t{i}", "n_mels": 4, "n_frames": m.shape[1], "mel": m.reshape(-1)}
            for i, m in enumerate(mels)]

    table = schemas.conform(mel_table(rows), schemas.MEL_SHARD)

    assert table.column("track_id").to_pylist() == ["t0", "t1"]
    for mel, back in zip(mels, table.column("mel").to_pylist()):
        np.testing.assert_array_equal(np.asarray(back, np.float32).reshape(mel.shape), mel)
    assert mel_table([]).num_rows == 0


def read_run(path):
    mels = [pq.read_table(p) for p in sorted(path.glob("mels-*.parquet"))]
    dead = [pq.read_table(p) for p in sorted(path.glob("dead_letters-*.parquet"))]
    return mels, dead


def test_main_writes_run_then_rerun_skips_everything(catalogue, tmp_path):
    out = tmp_path / "mels"
    args = ["--catalogue", str(catalogue["path"]), "--out", str(out),
            "--excerpt-s", str(EXCERPT_S), "--max-bad-fraction", "0.5"]

    assert main([*args, "--run-id", "r1"]) == 0  # default: 2 worker processes

    first = run_dir(out, PARAMS, "r1")
    mels, dead = read_run(first)
    assert mels and dead
    for table in mels:
        assert table.schema.equals(schemas.MEL_SHARD)
        assert schemas.params_of(table.schema) == PARAMS.to_dict()
    table = pa.concat_tables(mels)
    by_id = {r["track_id"]: np.asarray(r["mel"], np.float32).reshape(r["n_mels"], r["n_frames"])
             for r in table.to_pylist()}
    assert sorted(by_id) == sorted(GOOD)
    assert peak_band(by_id["low"]) < peak_band(by_id["mid"]) < peak_band(by_id["high"])
    dead_letters = pa.concat_tables(dead)
    assert dead_letters.schema.equals(schemas.DEAD_LETTERS)
    reasons = {r["track_id"]: (r["stage"], r["error"]) for r in dead_letters.to_pylist()}
    assert reasons["corrupt"][0] == reasons["missing"][0] == "decode"
    assert "Invalid data" in reasons["corrupt"][1] and "No such file" in reasons["missing"][1]
    assert [p.name for p in first.parent.iterdir()] == ["r1"]  # no temp dirs left behind

    # The rerun has only the two bad tracks left to try; they fail again, which is
    # above the bound: non-zero exit, outputs kept aside, no spectrogram written twice.
    assert main([*args, "--run-id", "r2", "--direct_running_mode", "in_memory"]) == 1
    assert not run_dir(out, PARAMS, "r2").exists()
    [rejected] = first.parent.glob("r2.rejected-*")
    mels, dead = read_run(rejected)
    assert sum(t.num_rows for t in mels) == 0
    assert sum(t.num_rows for t in dead) == 2
    assert sorted(p.parent.name for p in mel_shards(first.parent))[-1] == rejected.name
    assert spectrograms.existing_track_ids(first.parent) == set(GOOD)


def test_main_fails_above_bad_fraction_but_keeps_outputs(catalogue, tmp_path, capsys):
    out = tmp_path / "mels"

    code = main(["--catalogue", str(catalogue["path"]), "--out", str(out), "--run-id", "r1",
                 "--excerpt-s", str(EXCERPT_S), "--direct_running_mode", "in_memory",
                 "--direct_num_workers", "1"])

    assert code == 1
    log = capsys.readouterr().err  # main configures logging to stderr
    assert str(catalogue["path"]) in log and "--max-bad-fraction" in log
    # Not published as the run (a scheduler would take it for done), but kept: a
    # rerun skips the 3 good tracks and retries only the 2 bad ones.
    assert not run_dir(out, PARAMS, "r1").exists()
    [rejected] = run_dir(out, PARAMS, "r1").parent.glob("r1.rejected-*")
    mels, dead = read_run(rejected)
    assert sum(t.num_rows for t in mels) == 3 and sum(t.num_rows for t in dead) == 2
    assert spectrograms.existing_track_ids(rejected.parent) == set(GOOD)


def test_failed_pipeline_leaves_no_run_dir(catalogue, tmp_path, monkeypatch):
    def broken_write(*args, **kwargs):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(spectrograms, "write", broken_write)
    out = tmp_path / "mels"
    options = parse_options(["--catalogue", str(catalogue["path"]), "--out", str(out),
                             "--run-id", "r1", "--direct_running_mode", "in_memory"])

    with pytest.raises(RuntimeError, match="disk on fire"):
        spectrograms.run(options)

    assert list((out / mel_params(options).params_hash()).iterdir()) == []


def test_existing_run_id_and_missing_catalogue_exit_2(catalogue, tmp_path):
    out = tmp_path / "mels"
    run_dir(out, MelParams(), "taken").mkdir(parents=True)

    assert main(["--catalogue", str(catalogue["path"]), "--out", str(out),
                 "--run-id", "taken"]) == 2
    assert main(["--catalogue", str(tmp_path / "nope.parquet"), "--out", str(out)]) == 2


def test_options_defaults_passthrough_and_help(capsys):
    options = parse_options(["--catalogue", "c.parquet", "--out", "o", "--n-mels", "64",
                             "--job_name", "nightly"])
    everything = options.get_all_options()

    assert mel_params(options) == MelParams(n_mels=64)
    assert everything["runner"] == "FnApiRunner"
    assert everything["direct_num_workers"] == 2
    assert everything["direct_running_mode"] == "multi_processing"
    assert everything["job_name"] == "nightly"  # unknown here, Beam's own option

    with pytest.raises(SystemExit) as exited:
        parse_options(["--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ["--catalogue", "--out", "--run-id", "--excerpt-s", "--max-bad-fraction",
                 "--sample-rate", "--n-fft", "--hop-length", "--n-mels", "--log-offset",
                 "--pad", "--min-duration-s", "--max-file-mb", "--decode-timeout-s",
                 "--no-isolate-decoding", "--torch-threads", "--row-group-mb", "--runner",
                 "--direct_num_workers", "--direct_running_mode"]:
        assert flag in help_text


def test_run_dir_rejects_hidden_or_nested_ids():
    for bad in ["", ".tmp", "a/b"]:
        with pytest.raises(ValueError):
            run_dir("out", MelParams(), bad)
