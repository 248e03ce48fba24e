"""The Beam spectrogram job: its graph under TestPipeline, its DoFns, and main."""
import dataclasses
import datetime
import errno
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import torchaudio
from apache_beam.pvalue import TaggedOutput
from apache_beam.utils.windowed_value import WindowedValue
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

import schemas
from jobs.spectrograms import job as spectrograms
from jobs.spectrograms import mel as mel_module
from jobs.spectrograms.decode import SystemicError, decode_excerpt
from jobs.spectrograms.pool import IsolatedDecoder
from jobs.spectrograms.job import main, parse_options
from jobs.spectrograms.migrate import main as migrate_main
from jobs.spectrograms.pipeline import DEAD_LETTERS, ComputeSpectrograms, build, mel_table

from schemas.config import MelParams, SpectrogramOptions
from schemas import layout
from schemas import mels as mel_values
from schemas.layout import final_dead_letter_files, run_dir
from tests.test_mel import (musicnn_input, spectrograms_or_crash, spectrograms_slowly, tone,
                            write_audio)

EXCERPT_S = 1.0
PARAMS = MelParams(excerpt_s=EXCERPT_S)
FRAMES = 1 + round(EXCERPT_S * 22050) // 512
# the pretrained tagger's input, which the job writes beside by default
FRONTEND = PARAMS.frontend()
FRONTEND_FRAMES = 1 + round(EXCERPT_S * 16000) // 256
CODECS = {"flac": "flac", "ogg": "vorbis", "mp3": "libmp3lame", "m4a": "aac"}
# Each good track is a tone of its own frequency, so mixing tracks up shows.
GOOD = {"low": (300.0, "flac", "mono"), "mid": (1200.0, "ogg", "stereo"),
        "high": (4000.0, "mp3", "mono")}
IN_PROCESS = ["--direct_running_mode", "in_memory", "--direct_num_workers", "1"]
REPO = Path(__file__).resolve().parent.parent


def write_catalogue(path, rows) -> str:
    """The catalogue ``rows`` as Parquet; nulls allowed, as real catalogues have them."""
    nullable = pa.schema([field.with_nullable(True) for field in schemas.CATALOGUE])
    pq.write_table(pa.Table.from_pylist(rows, schema=nullable), path)
    return str(path)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """Three good tracks, a corrupt file and a missing one.

    "high" lives inside a zip archive, reached through an fsspec URL, so that the
    job's worker and decoder processes all open it through fsspec.
    """
    root = tmp_path_factory.mktemp("catalogue")
    rows = []
    for track_id, (freq, ext, channels) in GOOD.items():
        path = write_audio(root / f"{track_id}.{ext}", tone(freq, 2.0, 44100), 44100,
                           CODECS[ext], channels)
        rows.append({"track_id": track_id, "audio_uri": path, "title": track_id})
    with zipfile.ZipFile(root / "archive.zip", "w") as archive:
        archive.write(rows[2]["audio_uri"], "tracks/high.mp3")
    os.remove(rows[2]["audio_uri"])
    rows[2]["audio_uri"] = f"zip://tracks/high.mp3::{root / 'archive.zip'}"
    (root / "corrupt.mp3").write_bytes(np.random.default_rng(1).bytes(30_000))
    rows.append({"track_id": "corrupt", "audio_uri": str(root / "corrupt.mp3")})
    rows.append({"track_id": "missing", "audio_uri": str(root / "missing.ogg")})
    return {"path": write_catalogue(root / "catalogue.parquet", rows), "rows": rows,
            "root": root}


def peak_band(mel: np.ndarray) -> int:
    return int(mel.mean(axis=1).argmax())


def graph_options(**settings) -> SpectrogramOptions:
    return SpectrogramOptions(isolate_decoding=False, **settings)


# -- The graph ------------------------------------------------------------------------

def test_graph_computes_mels_and_routes_failures_to_dead_letters(catalogue):
    low_uri = catalogue["rows"][0]["audio_uri"]
    rows = catalogue["rows"] + [{"track_id": "mid", "audio_uri": low_uri},
                                {"track_id": None, "audio_uri": "x.ogg"}]

    def check_mels(mels):
        by_id = {m["track_id"]: m["mel"].reshape(m["n_mels"], m["n_frames"]) for m in mels}
        assert sorted(by_id) == ["high", "low"]  # "mid" is skipped as already done
        assert all(mel.shape == (128, FRAMES) for mel in by_id.values())
        assert peak_band(by_id["low"]) < peak_band(by_id["high"])

    with BeamTestPipeline(runner="FnApiRunner") as pipeline:
        done = pipeline | "Done" >> beam.Create(["mid", "gone-from-catalogue"])
        (outputs,) = build(pipeline | beam.Create(rows), PARAMS, graph_options(), [done])
        assert_that(outputs.mels, check_mels, label="CheckMels")
        assert_that(outputs.dead_letters | beam.Map(lambda d: (d["track_id"], d["stage"])),
                    equal_to([("corrupt", "decode"), ("missing", "decode"),
                              (None, "catalogue")]),
                    label="CheckDeadLetters")


@pytest.mark.parametrize("retry", [False, True])
def test_graph_skips_earlier_failures_of_the_same_uri_unless_retried(catalogue, retry):
    low, corrupt = catalogue["rows"][0], catalogue["rows"][3]
    earlier_failures = [corrupt, {**low, "audio_uri": "/old/low.flac"},
                        {"track_id": None, "audio_uri": "x.ogg"}]
    rows = [low, corrupt, {"track_id": None, "audio_uri": "x.ogg"}]
    options = graph_options(retry_dead_letters=retry)

    with BeamTestPipeline(runner="FnApiRunner") as pipeline:
        failed = pipeline | "Failed" >> beam.Create(earlier_failures)
        (outputs,) = build(pipeline | beam.Create(rows), PARAMS, options, failed=[failed])
        # "low" failed before from another URI: its new one is tried.
        assert_that(outputs.mels | beam.Map(lambda m: m["track_id"]), equal_to(["low"]),
                    label="CheckMels")
        assert_that(outputs.dead_letters | beam.Map(lambda d: d["track_id"]),
                    equal_to(["corrupt", None] if retry else []), label="CheckDeadLetters")


def test_duplicate_track_ids_keep_one_row(catalogue):
    low = catalogue["rows"][0]
    # Of duplicates, the row with the smallest audio_uri is kept.
    rows = [low, {**low, "audio_uri": "/zzz/nowhere.ogg"}, {"track_id": "x", "audio_uri": None}]

    with BeamTestPipeline(runner="FnApiRunner") as pipeline:
        (outputs,) = build(pipeline | beam.Create(rows), PARAMS, graph_options())
        assert_that(outputs.mels | beam.Map(lambda m: m["track_id"]), equal_to(["low"]),
                    label="CheckMels")
        assert_that(outputs.dead_letters | beam.Map(lambda d: (d["audio_uri"], d["stage"])),
                    equal_to([("/zzz/nowhere.ogg", "catalogue"), (None, "catalogue")]),
                    label="CheckDeadLetters")


def test_a_decoder_crash_costs_one_track_not_the_pipeline(catalogue):
    # The decoder child really dies (SIGSEGV in native code) on one track, with another
    # track queued behind it, which a fresh child then does.
    low, mid = catalogue["rows"][0], catalogue["rows"][1]
    crash = {"track_id": "crash", "audio_uri": low["audio_uri"] + ".segfault"}

    with BeamTestPipeline(runner="FnApiRunner") as pipeline:
        computed = (pipeline | beam.Create([low, crash, mid, low | {"track_id": "again"}])
                    | beam.ParDo(ComputeSpectrograms(PARAMS, isolate=True, decoders=1,
                                                     spectrograms=spectrograms_or_crash))
                    .with_outputs(DEAD_LETTERS, main="mels"))
        assert_that(computed.mels | beam.Map(lambda m: (m["track_id"], m["mel"].shape)),
                    equal_to([(track, (128 * FRAMES,)) for track in ("low", "mid", "again")]),
                    label="CheckMels")
        died = "decoder process died (killed by SIGSEGV)"
        assert_that(computed[DEAD_LETTERS]
                    | beam.Map(lambda d: (d["track_id"], d["stage"], died in d["error"])),
                    equal_to([("crash", "decode", True)]), label="CheckDeadLetters")


# -- DoFns ----------------------------------------------------------------------------

@pytest.mark.parametrize("isolate", [False, True])
def test_spectrogram_dofn_outputs_mel_shard_rows_and_dead_letters(catalogue, isolate):
    compute = ComputeSpectrograms(PARAMS, isolate=isolate, decoders=2)
    compute.setup()
    good, corrupt = catalogue["rows"][0], catalogue["rows"][3]
    try:
        compute.start_bundle()
        outputs = [*compute.process(good), *compute.process(corrupt), *compute.finish_bundle()]
    finally:
        compute.teardown()

    def unwrapped(value):  # rows that come at the bundle's end are windowed
        return value.value if isinstance(value, WindowedValue) else value

    (mel_row,) = [unwrapped(o) for o in outputs if not isinstance(o, TaggedOutput)]
    (dead,) = [o for o in outputs if isinstance(o, TaggedOutput)]
    assert mel_row["track_id"] == "low" and mel_row["dtype"] == PARAMS.dtype
    assert (mel_row["n_mels"], mel_row["n_frames"]) == (128, FRAMES)
    assert mel_row["mel"].shape == (128 * FRAMES,) and mel_row["mel"].dtype == np.float16
    dead_letter = unwrapped(dead.value)
    assert dead.tag == DEAD_LETTERS and dead_letter["stage"] == "decode"
    assert dead_letter["track_id"] == "corrupt" and corrupt["audio_uri"] in dead_letter["error"]


def test_rows_come_out_in_the_order_the_tracks_came_in_whichever_child_is_first(catalogue):
    # The first track takes a second longer; the other child does the rest meanwhile.
    # Rows in the order sent make a rerun write the same shards, so train the same network.
    low, mid, high = catalogue["rows"][:3]
    rows = [low | {"track_id": "slow", "audio_uri": low["audio_uri"] + "#slow"},
            mid, high, low, mid | {"track_id": "mid again"}, catalogue["rows"][3]]
    compute = ComputeSpectrograms(PARAMS, isolate=True, decoders=2,
                                  spectrograms=spectrograms_slowly)
    compute.setup()
    try:
        compute.start_bundle()
        outputs = [o for row in rows for o in compute.process(row)] + list(compute.finish_bundle())
    finally:
        compute.teardown()
    values = [o.value if isinstance(o, TaggedOutput) else o for o in outputs]
    track_ids = [(v.value if isinstance(v, WindowedValue) else v)["track_id"] for v in values]
    assert track_ids == [row["track_id"] for row in rows]


def test_a_spectrogram_that_cannot_be_computed_is_a_mel_dead_letter(catalogue):
    # 10 ms of audio decode, but are shorter than the STFT's reflection padding.
    compute = ComputeSpectrograms(MelParams(excerpt_s=0.01), isolate=False)
    compute.setup()
    compute.start_bundle()

    (dead,) = compute.process(catalogue["rows"][0])

    assert dead.tag == DEAD_LETTERS and dead.value["stage"] == "mel"
    assert dead.value["error"].startswith(catalogue["rows"][0]["audio_uri"])


def test_mel_table_round_trips_through_the_schema():
    rng = np.random.default_rng(0)
    mels = [rng.standard_normal((4, n)).astype(np.float32) for n in (3, 5)]
    rows = [{"track_id": f"t{i}", "n_mels": 4, "n_frames": m.shape[1], "dtype": "float16",
             "mel": m.astype(np.float16).reshape(-1)} for i, m in enumerate(mels)]

    table = schemas.conform(mel_table(rows), schemas.MEL_SHARD)

    assert table.column("track_id").to_pylist() == ["t0", "t1"]
    for i, mel in enumerate(mels):
        back = mel_values.values(table.slice(i, 1))[0]
        assert back.dtype == np.float16
        np.testing.assert_allclose(back, mel, atol=2e-3)  # float16 keeps about 3 digits
    assert mel_table([]).num_rows == 0


# -- The job --------------------------------------------------------------------------

def read_run(path):
    mels = [pq.read_table(p) for p in sorted(path.glob("mels-*.parquet"))]
    dead = [pq.read_table(p) for p in sorted(path.glob("dead_letters-*.parquet"))]
    return mels, dead


def n_rows(tables) -> int:
    return sum(table.num_rows for table in tables)


def test_main_writes_both_outputs_then_rerun_skips_everything(catalogue, tmp_path):
    out = tmp_path / "mels"
    args = ["--catalogue", catalogue["path"], "--out", str(out),
            "--excerpt-s", str(EXCERPT_S), "--max-bad-fraction", "0.5"]

    assert main([*args, "--run-id", "r1"]) == 0  # default: worker processes, isolated decoding

    first, tagger = run_dir(out, PARAMS, "r1"), run_dir(out, FRONTEND, "r1")
    assert first.parent.name == PARAMS.params_hash()
    assert tagger.parent.name == FRONTEND.params_hash() != PARAMS.params_hash()
    shapes = {PARAMS: (128, FRAMES), FRONTEND: (96, FRONTEND_FRAMES)}
    for params, directory in ((PARAMS, first), (FRONTEND, tagger)):
        mels, dead = read_run(directory)
        assert mels and dead
        for table in mels:
            assert table.schema.equals(schemas.MEL_SHARD)
            assert schemas.params_of(table.schema) == params.to_dict()
        table = pa.concat_tables(mels)
        by_id = dict(zip(table.column("track_id").to_pylist(), mel_values.values(table)))
        assert sorted(by_id) == sorted(GOOD)
        assert {mel.shape for mel in by_id.values()} == {shapes[params]}
        assert peak_band(by_id["low"]) < peak_band(by_id["mid"]) < peak_band(by_id["high"])
        dead_letters = pa.concat_tables(dead)
        assert dead_letters.schema.equals(schemas.DEAD_LETTERS)
        assert schemas.params_of(dead_letters.schema) == params.to_dict()
        reasons = {r["track_id"]: (r["stage"], r["error"]) for r in dead_letters.to_pylist()}
        assert reasons["corrupt"][0] == reasons["missing"][0] == "decode"
        assert "Invalid data" in reasons["corrupt"][1] and "No such file" in reasons["missing"][1]
        # No temp dirs left behind; beside the run, the table of failing tracks.
        assert sorted(p.name for p in directory.parent.iterdir()) == ["dead_letters.parquet", "r1"]
    # the tagger's input is that of the decoded excerpt, by its definition
    low = pa.concat_tables(read_run(tagger)[0]).filter(pc.equal(pc.field("track_id"), "low"))
    samples = decode_excerpt(catalogue["rows"][0]["audio_uri"], PARAMS)
    at_16k = torchaudio.functional.resample(torch.from_numpy(samples), 22050, 16000).numpy()
    np.testing.assert_allclose(mel_values.values(low)[0].astype(np.float32),
                               musicnn_input(at_16k), rtol=2e-3, atol=2e-3)

    # The rerun processes no track: the good ones are done, the bad ones failed
    # in a published run with the same URI.
    summary = spectrograms.run(parse_options([*args, "--run-id", "r2", *IN_PROCESS]))
    assert summary.catalogue_rows == 5 and len(summary.outputs) == 2
    for params in (PARAMS, FRONTEND):
        output = summary.of(params)
        assert (output.mels, output.dead_letters) == (0, 0)
        assert (output.skipped_done, output.skipped_failed) == (3, 2)
        mels, dead = read_run(run_dir(out, params, "r2"))
        assert n_rows(mels) == n_rows(dead) == 0 and mels[0].schema.equals(schemas.MEL_SHARD)

    # Asked to, it retries them; they fail again, which is above the bound:
    # non-zero exit, outputs kept aside, no spectrogram written twice.
    assert main([*args, "--run-id", "r3", "--retry-dead-letters", *IN_PROCESS,
                 "--max-bad-fraction", "0.3"]) == 1
    for params in (PARAMS, FRONTEND):
        assert not run_dir(out, params, "r3").exists()
        [rejected] = run_dir(out, params, "r3").parent.glob("r3.rejected-*")
        mels, dead = read_run(rejected)
        assert (n_rows(mels), n_rows(dead)) == (0, 2)
        assert spectrograms.existing_track_ids(rejected.parent) == set(GOOD)


@pytest.mark.parametrize("main_params, fails", [
    # 240 samples at 16 kHz are fewer than the tagger's STFT pads by: its input fails alone
    (MelParams(n_fft=256, hop_length=128, n_mels=32, excerpt_s=0.015), "frontend"),
    # 441 samples at 22050 Hz, fewer than a 1024-sample STFT pads by: the spectrogram fails
    (MelParams(excerpt_s=0.02), "main")])
def test_an_output_that_fails_alone_is_a_dead_letter_of_that_output_alone(catalogue, tmp_path,
                                                                          main_params, fails):
    rows = catalogue["rows"][:2]
    out = tmp_path / "mels"
    summary = spectrograms.run(parse_options([
        "--catalogue", write_catalogue(tmp_path / "c.parquet", rows), "--out", str(out),
        "--run-id", "r1", "--excerpt-s", str(main_params.excerpt_s), "--n-fft",
        str(main_params.n_fft), "--hop-length", str(main_params.hop_length), "--n-mels",
        str(main_params.n_mels), "--min-duration-s", "0", "--max-bad-fraction", "1",
        *IN_PROCESS]))

    failing, kept = ((main_params.frontend(), main_params) if fails == "frontend"
                     else (main_params, main_params.frontend()))
    assert (summary.of(kept).mels, summary.of(kept).dead_letters) == (2, 0)
    assert (summary.of(failing).mels, summary.of(failing).dead_letters) == (0, 2)
    mels, _ = read_run(summary.of(kept).run_dir)
    assert sorted(pa.concat_tables(mels).column("track_id").to_pylist()) == ["low", "mid"]
    _, dead = read_run(summary.of(failing).run_dir)
    for letter in pa.concat_tables(dead).to_pylist():
        assert letter["stage"] == "mel" and letter["error"].startswith(letter["audio_uri"])
        assert "Padding size should be less than" in letter["error"]


def test_each_output_is_incremental_and_a_track_is_decoded_once(catalogue, tmp_path,
                                                                 monkeypatch):
    decoded = []

    def counted(uri, params, *args, **limits):
        decoded.append(uri)
        return decode_excerpt(uri, params, *args, **limits)
    monkeypatch.setattr(mel_module, "decode_excerpt", counted)
    out = tmp_path / "mels"
    args = ["--catalogue", catalogue["path"], "--out", str(out), "--excerpt-s", str(EXCERPT_S),
            "--max-bad-fraction", "0.5", "--no-isolate-decoding", *IN_PROCESS]
    uris = sorted(row["audio_uri"] for row in catalogue["rows"])

    def run(*flags):
        decoded.clear()
        return spectrograms.run(parse_options([*args, *flags]))

    def counts(output):  # (skipped done, skipped failed, written, dead letters)
        return output.skipped_done, output.skipped_failed, output.mels, output.dead_letters

    # as before the tagger's input existed
    before = run("--run-id", "r1", "--no-frontend")
    assert [output.params for output in before.outputs] == [PARAMS]
    assert not layout.params_dir(out, FRONTEND).exists() and sorted(decoded) == uris

    # the first run after: only tagger inputs, every track decoded once for them; the
    # bad files are tried for the new output, not again for the old one
    after = run("--run-id", "r2")
    assert counts(after.of(PARAMS)) == (3, 2, 0, 0)
    assert counts(after.of(FRONTEND)) == (0, 0, 3, 2)
    assert sorted(decoded) == uris

    # spectrograms of other settings share the tagger's input, which has every track
    other = MelParams(excerpt_s=EXCERPT_S, n_mels=64)
    assert other.frontend() == FRONTEND
    more = run("--run-id", "r3", "--n-mels", "64")
    assert counts(more.of(other)) == (0, 0, 3, 2)
    assert counts(more.of(FRONTEND)) == (3, 2, 0, 0)
    assert sorted(decoded) == uris

    # everything done: nothing decoded
    again = run("--run-id", "r4")
    assert [counts(output) for output in again.outputs] == [(3, 2, 0, 0)] * 2
    assert decoded == []


def test_a_run_made_before_the_tagger_input_is_completed_under_its_run_id(catalogue, tmp_path):
    out = tmp_path / "mels"
    args = ["--catalogue", catalogue["path"], "--out", str(out), "--excerpt-s", str(EXCERPT_S),
            "--max-bad-fraction", "0.5", "--run-id", "r1", *IN_PROCESS]
    assert main([*args, "--no-frontend"]) == 0
    made = {path: path.stat().st_ino for path in run_dir(out, PARAMS, "r1").iterdir()}

    summary = spectrograms.run(parse_options(args))

    [output] = summary.outputs  # the run's spectrograms are there: only the tagger's input
    assert output.params == FRONTEND and output.run_dir == run_dir(out, FRONTEND, "r1")
    assert (output.mels, output.dead_letters) == (3, 2)
    assert {path: path.stat().st_ino for path in run_dir(out, PARAMS, "r1").iterdir()} == made
    assert main(args) == 2  # both there: nothing left for this run id


def test_migrate_converts_runs_of_before_the_dtype_so_the_job_redoes_nothing(catalogue, tmp_path):
    out = tmp_path / "mels"
    args = ["--catalogue", catalogue["path"], "--out", str(out), "--excerpt-s", str(EXCERPT_S),
            "--max-bad-fraction", "0.5", *IN_PROCESS]
    old_params = dataclasses.replace(PARAMS, dtype="float32")
    assert main([*args, "--dtype", "float32", "--run-id", "r1"]) == 0
    old = run_dir(out, old_params, "r1")
    # as shards were written before the dtype existed: a float32 list column, no dtype
    before = {k: v for k, v in PARAMS.to_dict().items() if k != "dtype"}
    expected = {}
    for shard in old.glob("mels-*.parquet"):
        table = pq.read_table(shard)
        values = mel_values.values(table)
        expected.update(zip(table.column("track_id").to_pylist(), values))
        legacy = pa.table({"track_id": table.column("track_id"), "n_mels": table.column("n_mels"),
                           "n_frames": table.column("n_frames"),
                           "mel": schemas.factors_column(values.reshape(len(values), -1))})
        pq.write_table(legacy.replace_schema_metadata(
            schemas.with_metadata(legacy.schema, before).metadata), shard)
    assert sorted(expected) == sorted(GOOD)

    assert migrate_main(["--mels", str(out)]) == 0

    new = run_dir(out, PARAMS, "r1")
    table = pa.concat_tables(pq.read_table(p) for p in sorted(new.glob("mels-*.parquet")))
    assert schemas.params_of(table.schema) == PARAMS.to_dict()
    for track, mel in zip(table.column("track_id").to_pylist(), mel_values.values(table)):
        assert mel.dtype == np.float16
        np.testing.assert_allclose(mel, expected[track], atol=0.01)
    (dead,) = [pq.read_table(p) for p in new.glob("dead_letters-*.parquet")]
    assert dead.num_rows == 2 and schemas.params_of(dead.schema) == PARAMS.to_dict()
    assert layout.dead_letter_history(new.parent).exists()
    assert migrate_main(["--mels", str(out)]) == 0  # again: what is there is left alone
    assert sorted(p.name for p in new.parent.iterdir()) == ["dead_letters.parquet", "r1"]

    # the spectrogram job with the new default finds every track done or failed, for
    # both outputs (the tagger's input, made as float32 too, was converted alike)
    summary = spectrograms.run(parse_options([*args, "--run-id", "r2"]))
    assert [(output.mels, output.dead_letters, output.skipped_done, output.skipped_failed)
            for output in summary.outputs] == [(0, 0, 3, 2)] * 2


def test_adding_five_tracks_processes_exactly_those_five(catalogue, tmp_path):
    good = catalogue["rows"][:3]
    new = []
    for index, freq in enumerate([500.0, 700.0, 900.0, 1100.0, 1300.0]):
        path = write_audio(tmp_path / f"new{index}.m4a", tone(freq, 1.5, 44100), 44100, "aac")
        new.append({"track_id": f"new{index}", "audio_uri": path})
    out = tmp_path / "mels"
    # Row groups of about two spectrograms, to see them sized by the mel column.
    mel_bytes = 128 * FRAMES * np.dtype(PARAMS.dtype).itemsize
    args = ["--out", str(out), "--excerpt-s", str(EXCERPT_S), "--row-group-mb",
            str(2 * mel_bytes / 2**20), *IN_PROCESS]

    first = spectrograms.run(parse_options(
        ["--catalogue", write_catalogue(tmp_path / "v1.parquet", good), "--run-id", "r1", *args]))
    second = spectrograms.run(parse_options(
        ["--catalogue", write_catalogue(tmp_path / "v2.parquet", good + new), "--run-id", "r2",
         *args]))

    for output in (PARAMS, FRONTEND):
        assert (first.of(output).mels, first.of(output).dead_letters) == (3, 0)
        assert (second.of(output).mels, second.of(output).dead_letters,
                second.of(output).skipped_done) == (5, 0, 3)
    [shard] = sorted(second.of(PARAMS).run_dir.glob("mels-*.parquet"))
    track_ids = pq.read_table(shard).column("track_id").to_pylist()
    assert sorted(track_ids) == [row["track_id"] for row in new]
    metadata = pq.ParquetFile(shard).metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [2, 2, 1]


def test_a_shard_is_closed_at_its_size_bound_and_another_begun(catalogue, tmp_path):
    rows = [{"track_id": f"t{i}", "audio_uri": write_audio(
        tmp_path / f"t{i}.m4a", tone(300.0 + 100 * i, 1.5, 44100), 44100, "aac")} for i in range(5)]
    mel_bytes = 128 * FRAMES * np.dtype(PARAMS.dtype).itemsize
    row_group_mb = 2 * mel_bytes / 2**20  # two spectrograms a row group
    summary = spectrograms.run(parse_options(
        ["--catalogue", write_catalogue(tmp_path / "c.parquet", rows), "--run-id", "r1",
         "--out", str(tmp_path / "mels"), "--excerpt-s", str(EXCERPT_S),
         "--row-group-mb", str(row_group_mb), "--shard-mb", str(row_group_mb / 2), *IN_PROCESS]))

    shards = sorted(summary.of(PARAMS).run_dir.glob("mels-*.parquet"))
    # each shard passed its bound with its first row group, so holds just that one
    assert sorted(pq.ParquetFile(s).metadata.num_rows for s in shards) == [1, 2, 2]
    assert all(pq.ParquetFile(s).metadata.num_row_groups == 1 for s in shards)
    assert sorted(t for s in shards for t in pq.read_table(s)["track_id"].to_pylist()) == \
        [row["track_id"] for row in rows]
    # the tagger's inputs, a little larger, fill a row group each, and a shard each
    tagger = sorted(summary.of(FRONTEND).run_dir.glob("mels-*.parquet"))
    assert [pq.ParquetFile(s).metadata.num_rows for s in tagger] == [1] * 5
    assert sorted(t for s in tagger for t in pq.read_table(s)["track_id"].to_pylist()) == \
        [row["track_id"] for row in rows]


def test_every_kind_of_bad_input_lands_once_in_the_dead_letters(catalogue, tmp_path):
    from tests.test_mel import (write_truncated, write_unknown_codec, write_video_only)

    good = catalogue["rows"][:2]
    empty = tmp_path / "empty.ogg"
    empty.write_bytes(b"")
    full = write_audio(tmp_path / "full.mp3", tone(440, 4.0, 44100), 44100, "libmp3lame")
    long = write_audio(tmp_path / "long.mp3", tone(440, 6.0, 44100), 44100, "libmp3lame")
    bad = {
        "empty": (str(empty), "empty file"),
        "truncated": (write_truncated(tmp_path / "cut.mp3", full), "truncated"),
        "random": (catalogue["rows"][3]["audio_uri"], "Invalid data"),
        "missing": (str(tmp_path / "missing.flac"), "No such file"),
        "unsupported": (write_unknown_codec(tmp_path / "odd.wav", seconds=2.0),
                        "unsupported audio codec"),
        "video": (write_video_only(tmp_path / "video.mp4"), "no audio stream"),
        "too_long": (long, "too long: 6 s > 5 s"),
    }
    rows = good + [{"track_id": t, "audio_uri": uri} for t, (uri, _) in bad.items()]
    rows += [{"track_id": "no_uri", "audio_uri": None}]
    path = write_catalogue(tmp_path / "catalogue.parquet", rows)

    code = main(["--catalogue", path, "--out", str(tmp_path / "mels"), "--run-id", "r1",
                 "--excerpt-s", str(EXCERPT_S), "--max-duration-s", "5",
                 "--max-bad-fraction", "0.9", *IN_PROCESS])

    assert code == 0
    mels, dead = read_run(run_dir(tmp_path / "mels", PARAMS, "r1"))
    assert sorted(pa.concat_tables(mels).column("track_id").to_pylist()) == ["low", "mid"]
    dead_letters = pa.concat_tables(dead).to_pylist()
    assert sorted(d["track_id"] for d in dead_letters) == sorted([*bad, "no_uri"])
    # the same in the tagger's input: every failure here is the audio's or the catalogue's
    tagger_mels, tagger_dead = read_run(run_dir(tmp_path / "mels", FRONTEND, "r1"))
    assert sorted(pa.concat_tables(tagger_mels).column("track_id").to_pylist()) == ["low", "mid"]
    assert sorted((d["track_id"], d["stage"], d["error"]) for d in
                  pa.concat_tables(tagger_dead).to_pylist()) == \
        sorted((d["track_id"], d["stage"], d["error"]) for d in dead_letters)
    for letter in dead_letters:
        if letter["track_id"] == "no_uri":
            assert (letter["stage"], letter["error"]) == ("catalogue", "missing audio_uri")
            continue
        uri, reason = bad[letter["track_id"]]
        assert (letter["audio_uri"], letter["stage"]) == (uri, "decode")
        assert letter["error"].startswith(uri) and reason in letter["error"]


def test_silent_and_truncated_audio_are_set_aside_with_their_reasons(tmp_path):
    from tests.test_mel import write_truncated

    rate = 22050
    noise = np.random.default_rng(0).standard_normal(4 * rate)

    def ogg(name, samples):
        return write_audio(tmp_path / name, samples, rate, "vorbis", "stereo")
    good = {  # (samples, the catalogue's duration_s)
        "loud": (tone(440, 4.0, rate), 4.0),
        "quiet": (noise * 10 ** (-45 / 20), 4.0),   # a quiet passage, -45 dBFS: music
        "rounded": (tone(330, 4.0, rate), 4.6),     # a catalogue rounding up: within a second
        "unknown": (tone(550, 4.0, rate), None),    # no duration given: not checked
    }
    bad = {
        "silence": (np.zeros(4 * rate), 4.0, "silent: the excerpt's loudest second is at -inf"),
        "hiss": (noise * 10 ** (-80 / 20), 4.0, "silent: the excerpt's loudest second is at -8"),
        "cut": (None, 12.0, "truncated: the file holds"),
    }
    rows = [{"track_id": t, "audio_uri": ogg(f"{t}.ogg", samples), "duration_s": seconds}
            for t, (samples, seconds) in good.items()]
    rows += [{"track_id": t, "duration_s": seconds,
              "audio_uri": ogg(f"{t}.ogg", samples) if samples is not None else None}
             for t, (samples, seconds, _) in bad.items()]
    # an Ogg cut to 40% of its bytes declares its own shorter length, ~4.8 s of 12
    whole = ogg("whole.ogg", tone(440, 12.0, rate))
    rows[-1]["audio_uri"] = write_truncated(tmp_path / "cut.ogg", whole)
    path = write_catalogue(tmp_path / "catalogue.parquet", rows)

    code = main(["--catalogue", path, "--out", str(tmp_path / "mels"), "--run-id", "r1",
                 "--excerpt-s", "2", "--max-bad-fraction", "0.9", *IN_PROCESS])

    assert code == 0
    mels, dead = read_run(run_dir(tmp_path / "mels", MelParams(excerpt_s=2.0), "r1"))
    assert sorted(pa.concat_tables(mels).column("track_id").to_pylist()) == sorted(good)
    letters = {d["track_id"]: d for d in pa.concat_tables(dead).to_pylist()}
    assert sorted(letters) == sorted(bad)
    for track, (_, _, reason) in bad.items():
        assert letters[track]["stage"] == "decode"
        assert letters[track]["error"].startswith(f"{letters[track]['audio_uri']}: {reason}")


def test_audio_on_an_fsspec_filesystem(catalogue, tmp_path):
    import fsspec

    rows = []
    for row in catalogue["rows"][:2]:
        uri = f"memory://audio/{os.path.basename(row['audio_uri'])}"
        with fsspec.open(uri, "wb") as remote:
            remote.write(open(row["audio_uri"], "rb").read())
        rows.append({"track_id": row["track_id"], "audio_uri": uri})
    rows.append({"track_id": "gone", "audio_uri": "memory://audio/gone.ogg"})
    path = write_catalogue(tmp_path / "catalogue.parquet", rows)

    # The memory filesystem lives in this process: decode here, in one worker.
    summary = spectrograms.run(parse_options(
        ["--catalogue", path, "--out", str(tmp_path / "mels"), "--excerpt-s", str(EXCERPT_S),
         "--no-isolate-decoding", "--max-bad-fraction", "0.5", *IN_PROCESS]))

    assert (summary.of(PARAMS).mels, summary.of(PARAMS).dead_letters) == (2, 1)
    mels, dead = read_run(summary.of(PARAMS).run_dir)
    assert sorted(pa.concat_tables(mels).column("track_id").to_pylist()) == ["low", "mid"]
    [letter] = pa.concat_tables(dead).to_pylist()
    assert letter["audio_uri"] == "memory://audio/gone.ogg"
    assert "FileNotFoundError" in letter["error"]


def test_main_fails_above_bad_fraction_but_keeps_outputs(catalogue, tmp_path, capsys):
    out = tmp_path / "mels"

    code = main(["--catalogue", catalogue["path"], "--out", str(out), "--run-id", "r1",
                 "--excerpt-s", str(EXCERPT_S), *IN_PROCESS])

    assert code == 1
    log = capsys.readouterr().err  # main configures logging to stderr
    assert catalogue["path"] in log and "--max-bad-fraction" in log
    assert "most frequent errors: " in log
    assert "InvalidDataError (1)" in log and "FileNotFoundError (1)" in log
    # Not published as the run (a scheduler would take it for done), but kept: a
    # rerun skips the 3 good tracks and retries only the 2 bad ones.
    for params in (PARAMS, FRONTEND):
        assert not run_dir(out, params, "r1").exists()
        [rejected] = run_dir(out, params, "r1").parent.glob("r1.rejected-*")
        mels, dead = read_run(rejected)
        assert (n_rows(mels), n_rows(dead)) == (3, 2)
        assert spectrograms.existing_track_ids(rejected.parent) == set(GOOD)
        assert final_dead_letter_files(rejected.parent) == []


def test_final_dead_letters_come_from_published_runs_only(tmp_path):
    for run in ("r1", "r2.rejected-20240101T000000", "r3.pending-20240101T000000", ".tmp-r4",
                "2024.01.02"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "dead_letters-00000-of-00001.parquet").touch()

    found = final_dead_letter_files(tmp_path)

    assert [path.parent.name for path in found] == ["2024.01.02", "r1"]


def test_failed_pipeline_leaves_no_run_dir(catalogue, tmp_path, monkeypatch):
    def broken_write(*args, **kwargs):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(spectrograms, "write", broken_write)
    out = tmp_path / "mels"
    options = parse_options(["--catalogue", catalogue["path"], "--out", str(out),
                             "--run-id", "r1", *IN_PROCESS])

    with pytest.raises(RuntimeError, match="disk on fire"):
        spectrograms.run(options)

    assert list((out / options.params.params_hash()).iterdir()) == []
    assert list((out / options.params.frontend().params_hash()).iterdir()) == []


def test_an_existing_run_id_is_bad_usage_and_bad_catalogues_fail(catalogue, tmp_path):
    out = tmp_path / "mels"
    for params in (MelParams(), MelParams().frontend()):  # both outputs of the run exist
        run_dir(out, params, "taken").mkdir(parents=True)
    no_uri = tmp_path / "no_uri.parquet"
    pq.write_table(pa.table({"track_id": ["a"]}), no_uri)

    assert main(["--catalogue", catalogue["path"], "--out", str(out),
                 "--run-id", "taken"]) == 2
    assert main(["--catalogue", str(tmp_path / "nope.parquet"), "--out", str(out)]) == 1
    assert main(["--catalogue", str(no_uri), "--out", str(out)]) == 1


def test_options_defaults_passthrough_and_help(capsys):
    options = parse_options(["--catalogue", "c.parquet", "--out", "o", "--n-mels", "64",
                             "--pad", "reject", "--job_name", "nightly"])
    everything = options.beam.get_all_options()

    assert options.params == MelParams(n_mels=64, pad="reject")
    assert everything["runner"] == "FnApiRunner"
    # one worker, whose children do the work
    assert everything["direct_num_workers"] == 1 and options.options.decoder_count == os.cpu_count()
    assert everything["direct_running_mode"] == "in_memory"
    in_workers = parse_options(["--catalogue", "c", "--out", "o", "--no-isolate-decoding"]
                               ).beam.get_all_options()
    assert in_workers["direct_running_mode"] == "multi_processing"
    assert in_workers["direct_num_workers"] == max(2, os.cpu_count())
    assert everything["job_name"] == "nightly"  # unknown here, Beam's own option
    assert everything["retry_dead_letters"] is False
    assert everything["max_duration_s"] == 3 * 3600

    with pytest.raises(SystemExit) as exited:
        parse_options(["--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ["--catalogue", "--out", "--run-id", "--excerpt-s", "--max-bad-fraction",
                 "--sample-rate", "--n-fft", "--hop-length", "--n-mels", "--log-offset",
                 "--pad", "--min-duration-s", "--max-duration-s", "--max-file-mb",
                 "--decode-timeout-s", "--no-isolate-decoding", "--decoders", "--torch-threads",
                 "--row-group-mb", "--retry-dead-letters", "--filterbank", "--compression",
                 "--frontend", "--no-frontend", "--runner",
                 "--direct_num_workers", "--direct_running_mode"]:
        assert flag in help_text


def test_run_dir_rejects_hidden_or_nested_ids():
    for bad in ["", ".tmp", "a/b"]:
        with pytest.raises(ValueError):
            run_dir("out", MelParams(), bad)


# -- A broken environment stops the job ------------------------------------------------

def no_space_left(uri: str, params: MelParams, *args, **limits) -> tuple:
    """A decoder on a machine whose disk is full: every track would fail alike."""
    raise OSError(errno.ENOSPC, "No space left on device", uri)


def fake_package(root, name: str, error: str) -> str:
    """A directory holding a package ``name`` whose import raises ``error``."""
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(f"raise {error}\n")
    return str(root)


def test_a_mel_library_that_does_not_load_stops_the_job_with_no_dead_letters(catalogue,
                                                                              tmp_path):
    # What a torchaudio built for another torch does: its native library fails to load.
    broken = fake_package(tmp_path / "site", "torchaudio",
                          "OSError('Could not load this library: libtorchaudio.so')")
    out = tmp_path / "mels"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([broken, str(REPO)]))

    result = subprocess.run(
        [sys.executable, "-m", "jobs.spectrograms", "--catalogue", catalogue["path"],
         "--out", str(out), "--excerpt-s", str(EXCERPT_S)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    assert result.returncode == 1, result.stderr
    assert "environment is broken" in result.stderr
    assert "torchaudio does not load: OSError: Could not load this library" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() or not list(out.rglob("dead_letters-*"))


def test_a_systemic_error_inside_the_pipeline_fails_it_and_says_why(catalogue):
    rows = catalogue["rows"][:3]
    with pytest.raises(Exception) as raised:
        with BeamTestPipeline(runner="FnApiRunner") as pipeline:
            computed = (pipeline | beam.Create(rows) | beam.ParDo(ComputeSpectrograms(
                PARAMS, isolate=True, spectrograms=no_space_left)).with_outputs(
                    DEAD_LETTERS, main="mels"))
            assert_that(computed[DEAD_LETTERS], equal_to([]))

    assert "No space left on device" in spectrograms.systemic_failure(raised.value)
    # A track's own failure is not mistaken for a broken environment.
    assert spectrograms.systemic_failure(RuntimeError("x.mp3: InvalidDataError: bad")) is None


@pytest.mark.parametrize("isolate", [True, False])
def test_spectrogram_dofn_raises_systemic_errors_instead_of_dead_letters(catalogue, isolate):
    dofn = ComputeSpectrograms(PARAMS, isolate=isolate, spectrograms=no_space_left)
    dofn.setup()
    dofn.start_bundle()
    try:
        with pytest.raises((SystemicError, OSError), match="No space left"):
            list(dofn.process(catalogue["rows"][0]))
            list(dofn.finish_bundle())
    finally:
        dofn.teardown()


def test_a_decoder_process_that_cannot_start_is_systemic(catalogue, tmp_path, monkeypatch):
    # The child imports PyAV afresh; here its FFmpeg libraries fail to load.
    broken = fake_package(tmp_path / "site", "av", "ImportError('libavcodec.so.61: not found')")
    monkeypatch.setenv("PYTHONPATH", broken)
    with IsolatedDecoder(PARAMS) as decoder:
        with pytest.raises(SystemicError, match="decoder process did not start"):
            decoder(catalogue["rows"][0]["audio_uri"])


def test_error_kinds_group_like_errors():
    assert spectrograms.error_kind("/a/x.mp3: truncated: decoded 2.00 s of 10.00 s",
                                   "/a/x.mp3") == "truncated"
    assert spectrograms.error_kind("/a/y.mp3: InvalidDataError: [Errno 1094995529] Invalid",
                                   "/a/y.mp3") == "InvalidDataError"
    assert spectrograms.error_kind("/a/z.ogg: decoder process died (killed by SIGSEGV)",
                                   "/a/z.ogg") == "decoder process died (killed by SIGSEGV)"
    assert spectrograms.error_kind("x.ogg: too short: 0.50 s < 1 s", "x.ogg") == "too short"


def test_failing_tracks_are_retried_with_backoff_and_listed_with_their_history(catalogue, tmp_path):
    out = tmp_path / "mels"
    args = ["--catalogue", catalogue["path"], "--out", str(out), "--excerpt-s", str(EXCERPT_S),
            "--max-bad-fraction", "0.5", *IN_PROCESS]
    assert main([*args, "--run-id", "n1"]) == 0
    params_dir = run_dir(out, PARAMS, "n1").parent
    listed = pq.read_table(layout.dead_letter_history(params_dir)).to_pylist()
    assert sorted(row["track_id"] for row in listed) == ["corrupt", "missing"]
    assert {row["attempts"] for row in listed} == {1}
    assert all(row["next_attempt"] - row["last_attempt"] == datetime.timedelta(days=1)
               for row in listed)

    # Not due yet: skipped, and still counted against the catalogue's bound.
    second = spectrograms.run(parse_options([*args, "--run-id", "n2"])).of(PARAMS)
    assert (second.mels, second.dead_letters, second.skipped_failed) == (0, 0, 2)
    assert second.bad_fraction == pytest.approx(2 / 5)
    # Due (a zero wait): tried again, and the wait doubles with each failure.
    third = spectrograms.run(parse_options([*args, "--run-id", "n3", "--retry-after-days", "0"]))
    assert (third.of(PARAMS).dead_letters, third.of(PARAMS).skipped_failed) == (2, 0)
    listed = pq.read_table(layout.dead_letter_history(params_dir)).to_pylist()
    assert {row["attempts"] for row in listed} == {2}
    assert all(row["first_attempt"] <= row["last_attempt"] for row in listed)


def test_the_bad_fraction_is_taken_over_the_catalogue():
    one_new_bad = spectrograms.OutputSummary(params=PARAMS, run_dir=Path("r"), skipped_done=135,
                                             skipped_failed=0, mels=4, dead_letters=1)
    assert one_new_bad.bad_fraction == pytest.approx(1 / 140)


def test_a_killed_run_keeps_the_parts_it_finished(catalogue, tmp_path):
    import signal
    import time

    out = tmp_path / "mels"
    command = [sys.executable, "-m", "jobs.spectrograms", "--catalogue", catalogue["path"],
               "--out", str(out), "--run-id", "r1", "--excerpt-s", str(EXCERPT_S),
               "--tracks-per-part", "1", "--max-bad-fraction", "0.5"]
    params_dir = run_dir(out, PARAMS, "r1").parent
    killed = subprocess.Popen(command, cwd=REPO, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while len(list(params_dir.glob("r1.part-*"))) < 2 and time.time() < deadline:
        assert killed.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    finished = {path.name: path.stat().st_ino for path in params_dir.glob("r1.part-*")}
    assert len(finished) >= 2 and not run_dir(out, PARAMS, "r1").exists()

    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)

    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stderr.count("was finished by an earlier attempt") == len(finished)
    assert {name: (params_dir / name).stat().st_ino for name in finished} == finished
    for output in (params_dir, run_dir(out, FRONTEND, "r1").parent):
        decoded = [track for shard in layout.mel_shards(output)
                   for track in pq.read_table(shard, columns=["track_id"]).column(0).to_pylist()]
        assert sorted(decoded) == sorted(GOOD), "every good track once, none twice"
    assert not [path for path in params_dir.iterdir() if path.name.startswith(".tmp-")]
