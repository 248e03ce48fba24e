"""The whole Luigi chain on a tiny demo catalogue, run as a user runs it.

Each run is `luigi --module workflows BackfillFactors --local-scheduler` in a child
process, with a tiny configuration layered over the repository's luigi.cfg.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import schemas
from jobs.demo_catalogue import ENCODINGS, encode
from jobs.evaluate.choose import ENSEMBLE
from schemas import storage

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = [sys.executable, "-m", "luigi", "--module", "workflows"]
LUIGI = [*WORKFLOWS, "BackfillFactors", "--local-scheduler"]
TINY = """
[DemoCatalogue]
n_tracks = 150
n_users = 900
duration_s = 7
cold_fraction = 0.2
seed = 1

[TrainAls]
rank = 16
iterations = 10

[MelSpectrograms]
excerpt_s = 6

[TrainModel]
epochs = 25
# The validation score of a dozen tracks wanders for a few epochs before it climbs again.
patience = 12
# a faster rate than the default's, for so few epochs
lr = 0.001
batch_size = 16
crop_frames = 192
net = {"dieleman2014": {"channels": [32, 32, 64, 64], "dense": 128, "dropout": 0.2},
       "vandenoord2013": {"channels": [32, 32], "dense": 128, "dropout": 0.2}}

[EvaluateColdStart]
bow_codebook = 64
# two networks, to keep the suite short (the second with the metadata branch);
# jobs.evaluate's tests take any number
models = ["dieleman2014:wpe", "vandenoord2013:mse:meta"]

[ChooseModel]
bow_codebook = 64
"""
# Chance is 0.5; the audio model must do clearly better, and better than the paper's
# bag-of-words baseline by a margin. Noise must not, nor a model that predicts one
# direction for every track.
MIN_AUC = 0.65
MIN_MARGIN = 0.02
CNN = "CNN dieleman2014, wpe loss"  # the default network and loss


def environment(root: Path) -> dict:
    config = root / "tiny.cfg"
    config.write_text(TINY)
    return dict(os.environ, COLDSTART_DATA_ROOT=str(root / "data"), LUIGI_CONFIG_PATH=str(config))


def run_chain(root: Path, *task: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """BackfillFactors, or ``task`` (a task and its flags), with the local scheduler."""
    command = [*WORKFLOWS, *task, "--local-scheduler"] if task else LUIGI
    return subprocess.run(command, cwd=REPO, env=environment(root), capture_output=True,
                          text=True, timeout=timeout)


def only(pattern: str, root: Path) -> Path:
    found = sorted((root / "data").glob(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


def main_mels(root: Path) -> Path:
    """The spectrograms TINY's settings make (the tagger's input has its own directory)."""
    from schemas.config import MelParams

    return only(f"mels/{MelParams(excerpt_s=6).params_hash()}", root)


def method(report: dict, name: str) -> dict:
    return next(m for m in report["methods"] if m["method"] == name)


def ranks_above_chance(report: dict, name: str = CNN) -> bool:
    """The check on the chain's product: the default model's AUC on held-out tracks,
    against chance and against the bag-of-words baseline."""
    bow = method(report, "bag-of-words + linear regression")["auc"]
    auc = method(report, name)["auc"]
    return report["users"] > 50 and auc >= MIN_AUC and auc >= bow + MIN_MARGIN


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (Linux /proc)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue  # the process ended while we looked
    return pids


def kill_and_resume(root: Path) -> tuple[Path, dict, subprocess.CompletedProcess]:
    """Start the chain under ``root``, kill it once the spectrograms and ALS are done,
    start it again: (root, the run folder's entries and inodes when killed, the second
    run), which the session's fixture killed_then_resumed holds (tests/conftest.py)."""
    proc = subprocess.Popen(LUIGI, cwd=REPO, env=environment(root), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if list((root / "data" / "mels").glob("*/backfill")) and \
                list((root / "data" / "runs" / "backfill").glob("als-[0-9a-f]*")):
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the chain ended before it could be killed"
    time.sleep(3)  # let training start
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2)
    assert not processes_mentioning(str(root)), "processes of the killed run are still alive"
    killed = {p.name: p.stat().st_ino for p in (root / "data" / "runs" / "backfill").iterdir()}
    second = run_chain(root)
    return root, killed, second


def test_killed_run_leaves_no_finished_looking_output(killed_then_resumed):
    root, killed, _ = killed_then_resumed
    finished = [name for name in killed if not name.startswith(".")]
    assert any(name.startswith("als-") for name in finished)
    assert not any(name.startswith("als-heldout-") for name in finished), \
        "the evaluation started before the night's factors were published"
    assert not any(name.startswith(("factors-", "evaluation-")) for name in finished)
    assert not any(name.startswith("model-") and name.endswith(".pt") for name in finished)


def test_resumed_run_finishes_without_redoing(killed_then_resumed):
    root, killed, second = killed_then_resumed
    assert second.returncode == 0, second.stderr[-4000:]
    als = only("runs/backfill/als-[0-9a-f]*", root)
    assert als.stat().st_ino == killed[als.name], "ALS output was rebuilt"
    assert f"--out {als}" not in second.stderr, "ALS ran again"
    assert "jobs.spectrograms" not in second.stderr, "spectrograms ran again"
    assert "model.train" in second.stderr


def test_the_shipped_model_was_chosen_on_validation(killed_then_resumed):
    from model.predictor import Predictor

    root, _, _ = killed_then_resumed
    shipped = Predictor.load(only("runs/backfill/model-chosen-*.pt", root))
    selection = shipped.metrics["selection"]
    assert "bag-of-words + linear regression" in selection["candidates"]
    assert any(name.startswith("model-dieleman2014-wpe-") for name in selection["candidates"])
    # The ensemble of the candidates is shipped unless another beats it on validation.
    assert ENSEMBLE in selection["candidates"] and selection["chosen"] in selection["candidates"]
    assert selection["why"].startswith("the ensemble of the candidates") \
        or f"beats {ENSEMBLE}" in selection["why"]
    factors = only("runs/backfill/factors-*", root)
    predicted = storage.read_table(factors / "predicted_factors.parquet", schemas.PREDICTED_FACTORS)
    assert set(predicted.column("model_version").to_pylist()) == {shipped.version}


REPORT_SECTIONS = ("Stages", "Data", "ALS", "Training", "Evaluation", "Map of the factors",
                   "Similar tracks", "What the network learned")
# Put into a copy of the report: once the page has loaded, the body says how many
# images it has and how many the browser could not draw.
IMAGE_PROBE = """<script>window.addEventListener("load", () => {
  const images = [...document.images];
  document.body.dataset.images = images.length;
  document.body.dataset.broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).length;
});</script>"""


def chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))),
                None)


def test_the_run_ends_with_its_summary_and_a_report(killed_then_resumed, tmp_path):
    root, _, second = killed_then_resumed
    report = only("runs/backfill/report-*", root)
    summary = second.stdout[second.stdout.index("stage "):]
    assert f"report: {report / 'index.html'}" in summary
    assert "TrainAls" in summary and "ScoreColdTracks" in summary  # each stage, timed
    markdown = (report / "report.md").read_text()
    for section in REPORT_SECTIONS:
        assert f"## {section}\n" in markdown, section
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", markdown)
    assert {"popularity.png", "map.png", "filters.png"} <= set(images)
    assert all((report / name).stat().st_size > 1000 for name in images)
    page = (report / "index.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == len(images)  # self-contained
    # by hand, from the run's directory alone: the same report
    again = tmp_path / "again"
    done = subprocess.run([sys.executable, "-m", "jobs.report", "--run",
                           str(root / "data" / "runs" / "backfill"), "--out", str(again)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(f"## {section}\n" in (again / "report.md").read_text() for section in REPORT_SECTIONS)


def test_the_report_renders_in_a_real_browser(killed_then_resumed, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium on the PATH (.ci/run installs the distribution's package)")
    root, _, _ = killed_then_resumed
    page = (only("runs/backfill/report-*", root) / "index.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", IMAGE_PROBE + "</body>"))
    shown = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                            "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                           capture_output=True, text=True, timeout=180)
    assert shown.returncode == 0, shown.stderr[-3000:]
    images = re.search(r'data-images="(\d+)"', shown.stdout)
    assert images and int(images.group(1)) >= 3, shown.stdout[:2000]
    assert 'data-broken="0"' in shown.stdout
    for section in REPORT_SECTIONS:
        assert f"<h2>{section}</h2>" in shown.stdout


def test_every_cold_track_gets_factors(killed_then_resumed):
    root, _, _ = killed_then_resumed
    factors = only("runs/backfill/factors-*", root)
    predicted = storage.read_table(factors / "predicted_factors.parquet", schemas.PREDICTED_FACTORS)
    truth = pq.read_table(root / "data" / "demo" / "truth.parquet").to_pylist()
    cold = {row["track_id"] for row in truth if row["cold"]}
    assert set(predicted.column("track_id").to_pylist()) == cold
    assert len(set(predicted.column("model_version").to_pylist())) == 1
    combined = storage.read_table(factors / "track_factors.parquet", schemas.TRACK_FACTORS)
    assert combined.num_rows == len(truth)
    sources = dict(zip(combined.column("track_id").to_pylist(), combined.column("source").to_pylist()))
    assert {t for t, s in sources.items() if s == "audio"} == cold


def test_every_published_track_has_its_tags(killed_then_resumed, capsys):
    """Warm and cold, every demo track decodes, so the taggers heard every one: the
    published table, the report's similar tracks and the query show their tags."""
    from jobs import query
    from schemas import layout
    from schemas.config import TagsConfig

    root, _, _ = killed_then_resumed
    published = root / "data" / "published"
    tracks = storage.read_table(layout.latest(published) / layout.SNAPSHOT_TRACKS,
                                schemas.SNAPSHOT_TRACKS).to_pylist()
    assert {row["source"] for row in tracks} >= {"als", "audio"}
    assert all(row["tags"] and len(row["tags"]) == TagsConfig.top_tags for row in tracks)
    assert len({tuple(row["tags"]) for row in tracks}) > 1  # they follow the audio
    tags = {row["track_id"]: row["tags"] for row in tracks}
    markdown = (only("runs/backfill/report-*", root) / "report.md").read_text()
    similar = markdown[markdown.index("## Similar tracks"):]
    assert "| track | from | cosine | tags |" in similar and "not heard" not in similar
    cold = next(row["track_id"] for row in tracks if row["source"] == "audio")
    capsys.readouterr()
    assert query.main(["--published", str(published), "--json", "similar", "--track", cold]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(row["tags"] == tags[row["track_id"]] for row in rows)


def test_cold_tracks_rank_held_out_plays_above_chance(killed_then_resumed):
    root, _, _ = killed_then_resumed
    report = json.loads(only("runs/backfill/evaluation-*.json", root).read_text())
    assert ranks_above_chance(report), report


def test_evaluation_keeps_the_papers_ordering(killed_then_resumed):
    from model.predictor import Predictor

    root, _, _ = killed_then_resumed
    evaluation = only("runs/backfill/evaluation-*.json", root)
    report = json.loads(evaluation.read_text())
    auc = {m["method"]: m["auc"] for m in report["methods"]}
    fused = "CNN vandenoord2013, mse loss + metadata"
    assert set(auc) == {"random", "bag-of-words + linear regression", "bag-of-words + MLP", CNN,
                        f"{CNN}, network alone", fused, f"{fused}, artist withheld (as if new)",
                        "artist oracle (mean factor of the artist's warm tracks)",
                        "upper bound (ALS sees the plays)"}
    assert auc["random"] < auc["bag-of-words + linear regression"] < auc[CNN] < \
        auc["upper bound (ALS sees the plays)"], report
    # the paper's protocol: a fifth of the warm tracks held out, not the demo's cold ones
    truth = pq.read_table(root / "data" / "demo" / "truth.parquet").to_pylist()
    warm = sum(not row["cold"] for row in truth)
    assert report["heldout_tracks"] == pytest.approx(0.2 * warm, abs=2)
    assert "| method | mAP@500 | AUC |" in evaluation.with_suffix(".md").read_text()
    # every held-out track is of a known artist (with warm tracks) or of a new one
    slices = method(report, fused)["slices"]
    assert sum(slices.get(part, {"tracks": 0})["tracks"] for part in ("known artist", "new artist")) \
        == report["heldout_tracks"]
    fused_model = only("runs/backfill/model-heldout-vandenoord2013-mse-meta-*.pt", root)
    vocab = Predictor.load(fused_model).vocabulary
    assert any(token.startswith("artist=demo artist") for token in vocab)


def test_the_quality_check_fails_for_a_model_of_one_direction(killed_then_resumed, tmp_path):
    """The check the chain's product passes must fail for a network that says the same
    for every track: evaluated on the same held-out tracks by the evaluation job."""
    from model.predictor import Predictor

    root, _, _ = killed_then_resumed
    trained = Predictor.load(only("runs/backfill/model-heldout-dieleman2014-wpe-*.pt", root))
    network = trained.member("network").module
    with torch.no_grad():
        for name, value in network.named_parameters():
            if name.startswith(("conv", "head")):
                value.zero_()
        last = network.head[-1].bias
        last.copy_(torch.linspace(-1, 1, len(last)))  # one direction, whatever it hears
    constant = tmp_path / "constant.pt"
    trained.without("taste").save(constant)
    als = only("runs/backfill/als-heldout-*", root)
    result = subprocess.run(
        [sys.executable, "-m", "jobs.evaluate", "--user-factors", str(als / "user_factors"),
         "--item-factors", str(als / "item_factors"), "--heldout-plays",
         str(als / "heldout_plays"), "--mels", str(main_mels(root)), "--model", str(constant),
         "--bow-codebook", "64", "--out", str(tmp_path / "constant.json")],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "constant.json").read_text())
    assert method(report, CNN)["spread"] < 0.01
    assert not ranks_above_chance(report), report


def test_noise_audio_fails_the_same_check(tmp_path):
    """Replace every track's audio by noise: the same check must fail."""
    first = run_chain(tmp_path, "DemoCatalogue", timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    catalogue = pq.read_table(tmp_path / "data" / "demo" / "catalogue.parquet")
    rng = np.random.default_rng(0)
    for uri in catalogue.column("audio_uri").to_pylist():
        path = Path(uri)
        encoding = next(e for e in ENCODINGS if e.ext == path.suffix[1:])
        noise = rng.normal(0, 0.1, (encoding.channels, encoding.sample_rate * 7))
        path.unlink()
        encode(path, noise.astype(np.float32), encoding)
    # The check reads the evaluation alone: nothing else of the chain needs to run.
    second = run_chain(tmp_path, "EvaluateColdStart", "--EvaluateColdStart-models",
                       '["dieleman2014:wpe"]')
    assert second.returncode == 0, second.stderr[-4000:]
    report = json.loads(only("runs/backfill/evaluation-*.json", tmp_path).read_text())
    refused = list((tmp_path / "data" / "runs" / "backfill").glob(
        "model-heldout-dieleman2014-wpe-*.pt.failed"))
    if refused:  # training refused a model that learned one direction: evaluated without it
        assert "the trained model collapsed" in refused[0].read_text()
        assert CNN not in {row["method"] for row in report["methods"]}, report
        return
    assert not ranks_above_chance(report), report


def test_user_triplet_plays_go_through_trainals(tmp_path):
    """A user's own plays in the MSD triplet format, in a file whose extension says
    nothing, named in luigi.cfg with 2% bad rows and a bound of 10%: TrainAls hands
    format and bound to the job (by default it would read Parquet and allow 1%),
    which quarantines the bad rows and factorises the rest."""
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    lines = [f"u{u}\tt{t}\t{int(rng.integers(1, 20))}"
             for u in range(40) for t in rng.choice(30, 8, replace=False)]
    bad = [(f"u{u}", "t0", "not-a-count") for u in range(7)]
    for position, row in zip((5, 50, 100, 150, 200, 250, 300), bad):
        lines.insert(position, "\t".join(row))
    plays = tmp_path / "taste_profile.dat"
    plays.write_text("\n".join(lines) + "\n")
    pq.write_table(pa.Table.from_pylist(
        [{"track_id": f"t{t}", "audio_uri": f"/audio/t{t}.mp3", "title": f"Track {t}",
          "artist": "Someone", "duration_s": 180.0} for t in range(30)], schemas.CATALOGUE),
        data / "catalogue.parquet")
    config = tmp_path / "user.cfg"
    config.write_text(f"[paths]\nplays = {plays}\n\n"
                      "[TrainAls]\nrank = 4\niterations = 3\nplays_format = triplets\n"
                      "max_bad_fraction = 0.1\n")
    env = dict(os.environ, COLDSTART_DATA_ROOT=str(data), LUIGI_CONFIG_PATH=str(config))
    done = subprocess.run([*WORKFLOWS, "TrainAls", "--local-scheduler"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = only("runs/backfill/als-*", tmp_path)
    quarantined = pq.read_table(out / "quarantine").to_pylist()
    assert sorted((q["user_id"], q["track_id"], q["plays"]) for q in quarantined) == bad
    assert {q["reason"] for q in quarantined} == {"non-numeric play count"}
    assert pq.read_table(out / "user_factors").num_rows == 40
