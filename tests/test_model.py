"""Networks, losses, the shard stream, and real torchrun DDP training runs."""
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader

import schemas
from schemas import factors_column, layout, storage
from schemas import mels as mel_values
from schemas.config import MelParams
from model import losses
from model.predictor import Excerpts, FactorSpace, Predictor
from model.data import (ShardStream, band_stats, in_validation, mel_array, plan_pieces,
                        read_mels, unit_rows)
from model.net import NetConfig, build_net

REPO = Path(__file__).resolve().parent.parent

SMALL = dict(channels=(8, 8, 16, 16), dense=32, dropout=0.0)


def test_dieleman_output_shape_and_min_frames():
    config = NetConfig.for_arch("dieleman2014", n_mels=16, n_factors=5, **SMALL)
    net = build_net(config)
    assert net(torch.randn(3, 16, config.min_frames())).shape == (3, 5)
    with pytest.raises(RuntimeError):
        net(torch.randn(3, 16, config.min_frames() - 1))
    for frames in (200, 431):  # global pooling: any length
        assert net(torch.randn(2, 16, frames)).shape == (2, 5)


def test_vandenoord_averages_window_predictions():
    config = NetConfig.for_arch("vandenoord2013", n_mels=16, n_factors=4, channels=(8, 8),
                                dense=16, dropout=0.0, window_frames=40)
    net = build_net(config).eval()
    clip = torch.randn(2, 16, 130)  # three whole windows; the last 10 frames are dropped
    windows = [net(clip[:, :, i * 40:(i + 1) * 40]) for i in range(3)]
    torch.testing.assert_close(net(clip), torch.stack(windows).mean(0))
    assert sum(isinstance(m, torch.nn.Conv1d) for m in net.modules()) == 2
    assert sum(isinstance(m, torch.nn.Linear) for m in net.modules()) == 2


def test_dieleman_scores_a_long_clip_as_the_mean_of_clips_it_was_trained_on():
    length = NetConfig.for_arch("dieleman2014", **SMALL).min_frames()
    config = NetConfig.for_arch("dieleman2014", n_mels=16, n_factors=4, clip_frames=length,
                                **SMALL)
    net = build_net(config).eval()
    clip = torch.randn(2, 16, 3 * length + 8)  # three whole clips; the last 8 frames dropped
    parts = [net(clip[:, :, i * length:(i + 1) * length]) for i in range(3)]
    torch.testing.assert_close(net(clip), torch.stack(parts).mean(0))
    short = clip[:, :, :length + length // 2]  # shorter than two clips: predicted whole
    torch.testing.assert_close(net(short), net.head(net.conv(net.standardise(short))))


def test_wpe_matches_the_sum_over_all_users():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    plays = sp.random(6, 30, density=0.2, random_state=1, format="csr") * 20 + 0
    plays.data = np.ceil(plays.data)
    alpha, eps = 2.0, 0.5
    loss = losses.WeightedPredictionError(x, plays, alpha, eps)
    pred = torch.randn(3, 4, dtype=torch.float32)
    index = torch.tensor([4, 0, 5])
    dense = plays.toarray()
    c = 1 + alpha * np.log1p(dense / eps)
    p = (dense > 0).astype(np.float64)
    expected = np.mean([(c[i] * (p[i] - x @ pred[j].numpy()) ** 2).sum()
                        for j, i in enumerate(index.tolist())]) / len(x)
    assert loss(pred, None, index).item() == pytest.approx(expected, rel=1e-4)


def test_mse_and_cosine_ignore_target_norm():
    pred, target = torch.randn(5, 3), torch.randn(5, 3)
    assert losses.mse(pred, target, None) == pytest.approx(losses.mse(pred, 7 * target, None).item())
    assert losses.cosine(3 * target, target, None).item() == pytest.approx(0.0, abs=1e-6)


def write_toy_set(root, n=96, n_mels=16, frames=160, seed=0, row_group=10):
    """Tracks of two kinds: energy in low or in high mel bands; factors point one of two ways.

    Two shards with several row groups each. The last quarter of tracks are "cold":
    they have no factors. Returns (mels dir, item factors, ids, kinds, n warm).
    """
    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, 2, n)
    mels = rng.normal(0, 1, (n, n_mels, frames)).astype(np.float32)
    for i, kind in enumerate(kinds):
        mels[i, slice(0, n_mels // 2) if kind == 0 else slice(n_mels // 2, n_mels)] += 3.0
    directions = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], np.float32) * 2.0
    factors = directions[kinds] + rng.normal(0, 0.1, (n, 4)).astype(np.float32)
    ids = [f"t{i:04d}" for i in range(n)]
    params = MelParams(n_mels=n_mels)
    run = root / "mels" / params.params_hash() / "r1"
    run.mkdir(parents=True)
    meta = schemas.with_metadata(schemas.MEL_SHARD, params.to_dict())
    half = n // 2
    for s, rows in enumerate([range(0, half), range(half, n)]):
        shard = pa.table({"track_id": [ids[i] for i in rows], "n_mels": [n_mels] * len(rows),
                          "n_frames": [frames] * len(rows), "dtype": [params.dtype] * len(rows),
                          "mel": mel_values.encode(list(mels[list(rows)]), params.dtype)})
        pq.write_table(schemas.conform(shard, schemas.MEL_SHARD).replace_schema_metadata(meta.metadata),
                       run / f"mels-{s:05d}-of-00002.parquet", row_group_size=row_group)
    warm = n * 3 // 4
    storage.write_table(pa.table({"track_id": ids[:warm], "factors": factors_column(factors[:warm])}),
                        root / "item_factors.parquet", schemas.ITEM_FACTORS)
    return run.parent, root / "item_factors.parquet", ids, kinds, warm


def test_read_mels_selects_and_reshapes(tmp_path):
    mels_dir, _, ids, _, _ = write_toy_set(tmp_path, n=10)
    table = read_mels(sorted(mels_dir.glob("*/mels-*.parquet")), ids[2:5])
    assert table.column("track_id").to_pylist() == ids[2:5]
    assert mel_array(table).shape == (3, 16, 160)
    # A night on which every cold track already has factors asks for none.
    assert read_mels(sorted(mels_dir.glob("*/mels-*.parquet")), []).num_rows == 0


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 2), (3, 2), (4, 1)])
def test_stream_splits_by_rank_and_worker_without_loss_or_duplicates(tmp_path, world, workers):
    mels_dir, _, ids, _, warm = write_toy_set(tmp_path, n=60, row_group=7)
    shards = sorted(mels_dir.glob("*/mels-*.parquet"))
    index = {t: i for i, t in enumerate(ids[:warm])}
    pieces = plan_pieces(shards, world * max(1, workers))
    seen = {True: [], False: []}
    for validation in (False, True):
        for rank in range(world):
            stream = ShardStream(pieces, index, np.zeros((warm, 4)), validation=validation,
                                 val_fraction=0.2, crop_frames=50, rank=rank, world=world,
                                 batch_size=4)
            stream.set_epoch(3)
            loader = DataLoader(stream, batch_size=None, num_workers=workers)
            for mel, _, track in loader:
                assert mel.shape[1:] == (16, 50)
                seen[validation] += track.tolist()
    assert sorted(seen[False] + seen[True]) == list(range(warm))  # every warm track once
    assert seen[True] and seen[False]


def examples(stream):
    """(mel, track index) of every example of a stream, batch by batch; and the batch sizes."""
    batches = list(stream)
    return [(mel, int(track)) for mels, _, tracks in batches for mel, track in zip(mels, tracks)], \
        [len(mels) for mels, _, _ in batches]


def test_stream_gives_each_training_track_several_crops(tmp_path):
    mels_dir, _, ids, _, warm = write_toy_set(tmp_path, n=30, frames=160, row_group=4)
    index = {t: i for i, t in enumerate(ids[:warm])}
    pieces = plan_pieces(sorted(mels_dir.glob("*/mels-*.parquet")), 1)
    stream = ShardStream(pieces, index, np.zeros((warm, 4)), validation=False, val_fraction=0.2,
                         crop_frames=40, clips_per_track=3, batch_size=5)
    crops, sizes = examples(stream)
    tracks = [track for _, track in crops]
    training = {index[t] for t in ids[:warm] if not in_validation(t, 0.2)}
    assert set(tracks) == training and len(tracks) == 3 * len(training)
    assert all(tracks.count(t) == 3 for t in set(tracks))
    # batches run across row groups: all full but the last
    assert all(size == 5 for size in sizes[:-1]) and 0 < sizes[-1] <= 5
    first = [mel for mel, track in crops if track == tracks[0]]
    assert all(mel.shape == (16, 40) for mel in first)
    assert not torch.equal(first[0], first[1]) or not torch.equal(first[1], first[2])
    validation = ShardStream(pieces, index, np.zeros((warm, 4)), validation=True,
                             val_fraction=0.2, clips_per_track=3)
    held = [track for _, track in examples(validation)[0]]
    assert len(held) == len(set(held)) and not set(held) & set(tracks)


def test_stream_crops_are_windows_of_the_stored_values(tmp_path):
    mels_dir, _, ids, _, warm = write_toy_set(tmp_path, n=20, frames=160)
    index = {t: i for i, t in enumerate(ids[:warm])}
    pieces = plan_pieces(sorted(mels_dir.glob("*/mels-*.parquet")), 1)
    stored = dict(zip(ids, mel_values.values(read_mels(layout.mel_shards(mels_dir)))))
    stream = ShardStream(pieces, index, np.arange(warm * 4, dtype=np.float32).reshape(warm, 4),
                         validation=False, val_fraction=0.0, crop_frames=30, batch_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning per batch (read-only Arrow memory)
        batches = list(stream)
    for mels, targets, tracks in batches:
        assert mels.dtype == torch.float16  # as stored (MelParams.dtype); the net standardises in float32
        for mel, target, track in zip(mels.numpy(), targets.numpy(), tracks.tolist()):
            whole = stored[ids[track]]
            assert any(np.array_equal(mel, whole[:, s:s + 30]) for s in range(160 - 30 + 1))
            np.testing.assert_array_equal(target, np.arange(4 * track, 4 * track + 4))


def test_shards_of_the_float32_list_format_stay_readable(tmp_path):
    mels_dir, _, ids, _, warm = write_toy_set(tmp_path, n=12, frames=64)
    shards = layout.mel_shards(mels_dir)
    new = read_mels(shards)
    values = mel_array(new)
    legacy = pa.table({"track_id": new.column("track_id"), "n_mels": new.column("n_mels"),
                       "n_frames": new.column("n_frames"),
                       "mel": factors_column(values.reshape(len(values), -1))})
    for shard in shards:
        shard.unlink()
    pq.write_table(legacy, shards[0], row_group_size=5)

    old = read_mels(layout.mel_shards(mels_dir))
    np.testing.assert_array_equal(mel_array(old), values)
    index = {t: i for i, t in enumerate(ids[:warm])}
    stream = ShardStream(plan_pieces(layout.mel_shards(mels_dir), 1), index, np.zeros((warm, 4)),
                         validation=False, val_fraction=0.0, batch_size=4)
    streamed = [track for _, track in examples(stream)[0]]
    assert sorted(streamed) == list(range(warm))


def test_mel_values_refuse_a_wrong_number_of_bytes():
    table = pa.table({"track_id": ["a"], "n_mels": [4], "n_frames": [3], "dtype": ["float16"],
                      "mel": mel_values.encode([np.zeros(11)], "float16")})
    with pytest.raises(ValueError, match="24 bytes of 4 x 3 float16"):
        mel_values.values(table)


def test_band_stats_are_per_band(tmp_path):
    mels_dir, _, ids, kinds, warm = write_toy_set(tmp_path, n=40)
    pieces = plan_pieces(sorted(mels_dir.glob("*/mels-*.parquet")), 1)
    mean, std = band_stats(pieces, {t: i for i, t in enumerate(ids[:warm])})
    assert mean.shape == std.shape == (16,)
    share_low = np.mean(kinds[:warm] == 0)
    assert mean[0].item() == pytest.approx(3.0 * share_low, abs=0.3)


def torchrun(tmp_path, mels_dir, factors, *extra, nproc=2, standalone=True):
    return [sys.executable, "-m", "torch.distributed.run",
            *(["--standalone"] if standalone else []), f"--nproc_per_node={nproc}",
            *extra, "-m", "model.train", "--mels", str(mels_dir), "--item-factors", str(factors),
            "--out", str(tmp_path / "model.pt"), "--snapshot", str(tmp_path / "snap.pt"),
            "--batch-size", "8", "--crop-frames", "120", "--channels", "8", "8", "16", "16",
            "--dense", "32", "--dropout", "0", "--lr", "0.003", "--val-fraction", "0.2",
            "--clips-per-track", "1", "--loss", "mse"]


def direction_accuracy(model_path, mels_dir, ids, kinds, warm):
    """Share of cold tracks whose prediction points the way of their kind."""
    model = Predictor.load(model_path).member("network").module
    table = read_mels(sorted(mels_dir.glob("*/mels-*.parquet")), ids[warm:])
    with torch.no_grad():
        pred = unit_rows(model(torch.from_numpy(mel_array(table))).numpy())
    return np.mean(np.argmax(pred[:, :2], axis=1) == kinds[warm:])


def test_ddp_training_with_torchrun_learns_the_mapping(tmp_path):
    mels_dir, factors, ids, kinds, warm = write_toy_set(tmp_path)
    cmd = torchrun(tmp_path, mels_dir, factors) + ["--epochs", "12", "--loss", "cosine",
                                                   "--tensorboard", str(tmp_path / "tb")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank1" in result.stderr and "rank0" in result.stderr
    predictor = Predictor.load(tmp_path / "model.pt")
    metrics = predictor.metrics
    assert predictor.mel_params == MelParams(n_mels=16).to_dict()
    assert metrics["train_tracks"] + metrics["val_tracks"] == warm
    assert metrics["world_size"] == 2 and metrics["loss"] == "cosine"
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert direction_accuracy(tmp_path / "model.pt", mels_dir, ids, kinds, warm) > 0.9
    # the taste classifier averaged with it (model/taste.py), fitted on every warm track,
    # and again without the validation tracks for choosing to judge on them
    assert predictor.kinds == ("network", "taste")
    clusters = round((warm / 2) ** 0.5)
    assert metrics["taste_clusters"] == predictor.member("taste").arrays["centres"].shape[-2] == clusters
    held_out = round((metrics["train_tracks"] / 2) ** 0.5)
    assert predictor.held_out().member("taste").arrays["centres"].shape[-2] == held_out


def test_the_same_shards_and_factors_train_the_same_model_file(tmp_path):
    # seeded crops, shuffles and initialisation, deterministic CPU kernels and gloo's
    # fixed reduction order: a rerun is the same file, byte for byte
    mels_dir, factors, *_ = write_toy_set(tmp_path)
    files = []
    for run in ("first", "again"):
        (tmp_path / run).mkdir()
        result = subprocess.run(torchrun(tmp_path / run, mels_dir, factors) + ["--epochs", "2"],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        files.append((tmp_path / run / "model.pt").read_bytes())
    assert files[0] == files[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def test_two_nodes_read_disjoint_shares_and_train_as_one_node_of_the_same_size(tmp_path):
    """Two torchrun launchers, one process each, meeting by c10d rendezvous on this
    machine (--nnodes=2, gloo), as two hosts of a cluster would."""
    mels_dir, factors, ids, kinds, warm = write_toy_set(tmp_path)
    endpoint = f"localhost:{free_port()}"
    multi = tmp_path / "multi"
    multi.mkdir()
    nodes = [subprocess.Popen(
        torchrun(multi, mels_dir, factors, "--nnodes=2", "--rdzv-backend=c10d",
                 f"--rdzv-endpoint={endpoint}", "--rdzv-id=two-nodes", nproc=1, standalone=False)
        + ["--epochs", "6"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert all(node.returncode == 0 for node in nodes), outputs[0][1][-3000:] + outputs[1][1][-3000:]
    single = tmp_path / "single"
    single.mkdir()
    done = subprocess.run(torchrun(single, mels_dir, factors, nproc=2) + ["--epochs", "6"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    two_nodes = Predictor.load(multi / "model.pt").metrics
    one_node = Predictor.load(single / "model.pt").metrics
    assert two_nodes["world_size"] == one_node["world_size"] == 2
    shares = two_nodes["rank_shares"]
    assert len(shares) == 2 and min(shares) > 0
    # disjoint (the counts add up to the tracks read) and covering every training track
    assert sum(shares) == two_nodes["tracks_covered"] == two_nodes["train_tracks"]
    assert two_nodes["epochs"] == one_node["epochs"]
    assert [len(h) for h in (two_nodes["history"], one_node["history"])] == [6, 6]
    loss = two_nodes["history"][-1]["validation_loss"], one_node["history"][-1]["validation_loss"]
    assert abs(loss[0] - loss[1]) <= 0.1 * loss[1], loss


def test_a_rank_without_validation_tracks_trains_and_validates_with_the_others(tmp_path):
    """One row group per shard, one shard per rank, and the only validation track in the
    first: the second rank validates nothing, yet must take part in every collective."""
    mels_dir, factors, ids, kinds, warm = write_toy_set(tmp_path, n=40, row_group=40)
    assert [t for t in ids[:warm] if in_validation(t, 0.13)] == [ids[18]]  # shard 0 of 2
    cmd = torchrun(tmp_path, mels_dir, factors) + ["--epochs", "2", "--val-fraction", "0.13",
                                                   "--clips-per-track", "3", "--min-spread", "0"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch 2 of 2:" in result.stderr


def child_pids(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def test_killed_worker_is_restarted_and_resumes_from_snapshot(tmp_path):
    mels_dir, factors, ids, kinds, warm = write_toy_set(tmp_path, n=160)
    cmd = torchrun(tmp_path, mels_dir, factors, "--max-restarts=3") + ["--epochs", "14",
                                                                       "--patience", "14"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not (tmp_path / "snap.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    workers = child_pids(proc.pid)
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    assert "resumed from" in output, output[-3000:]
    resumed_after = int(output.split("resumed from")[1].split("after epoch")[1].split()[0])
    assert 1 <= resumed_after < 14
    assert Predictor.load(tmp_path / "model.pt").metrics["epochs"] == 14
    assert direction_accuracy(tmp_path / "model.pt", mels_dir, ids, kinds, warm) > 0.9


class RunsCode:
    """What a crafted model file holds: unpickling it calls os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def tiny_predictor(factor_space=None) -> Predictor:
    from model.net import Network

    config = NetConfig(arch="dieleman2014", n_mels=16, n_factors=4, channels=(4, 4, 4, 4),
                       dense=8)
    return Predictor((Network(build_net(config), 1.0, True),), MelParams(n_mels=16).to_dict(),
                     factor_space, {"loss": "mse", "validation_loss": float("inf")})


def test_model_and_snapshot_files_that_would_run_code_are_refused(tmp_path):
    from model.artefact import UnsafeFileError, load_weights

    marker = tmp_path / "code-ran"
    crafted = tmp_path / "crafted.pt"
    torch.save({"version": "x", "state": {}, "payload": RunsCode(marker)}, crafted)

    with pytest.raises(UnsafeFileError, match=f"{crafted}: refused to load"):
        Predictor.load(crafted)
    with pytest.raises(UnsafeFileError):
        load_weights(crafted)
    assert not marker.exists()

    # What the project writes itself loads.
    saved = tiny_predictor()
    saved.save(tmp_path / "model.pt")
    loaded = Predictor.load(tmp_path / "model.pt")
    assert loaded.metrics["loss"] == "mse" and loaded.version == saved.version
    assert all(torch.equal(a, b) for a, b in zip(loaded.members[0].module.state_dict().values(),
                                                 saved.members[0].module.state_dict().values()))


def test_model_files_carry_their_format_and_unknown_formats_are_refused(tmp_path):
    from schemas import model_file

    path = tmp_path / "model.pt"
    tiny_predictor().save(path)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == model_file.FORMAT

    future = tmp_path / "future.pt"
    torch.save({**raw, "format": 99}, future)
    with pytest.raises(ValueError, match=f"{future}: model file format 99; this version"):
        Predictor.load(future)
    broken = tmp_path / "broken.pt"
    torch.save({key: value for key, value in raw.items() if key != "members"}, broken)
    with pytest.raises(ValueError, match=r"lacks \['members'\]"):
        Predictor.load(broken)
    unknown = tmp_path / "unknown.pt"
    torch.save({**raw, "members": raw["members"] + [{"kind": "oracle"}]}, unknown)
    with pytest.raises(ValueError, match="a member of kind 'oracle'"):
        Predictor.load(unknown)


def test_model_files_of_format_5_and_before_still_load_and_predict_the_same(tmp_path):
    """Format 5 held the network as keys of the file, the taste classifier beside it."""
    from model import taste

    network = tiny_predictor().members[0]
    rng = np.random.default_rng(0)
    mels = rng.normal(size=(6, 16, 140)).astype(np.float32)
    features = taste.statistics(torch.from_numpy(mels)).double().numpy()
    arrays = taste.fit(features, rng.normal(size=(6, 4)), c=0.1, seed=0,
                       labels=np.array([0, 1] * 3))
    raw = {"format": 5, "version": "old", "net_config": network.module.config.to_dict(),
           "state": network.module.state_dict(), "mel_params": MelParams(n_mels=16).to_dict(),
           "factor_scale": 2.0, "unit_output": True, "metrics": {"loss": "mse"},
           "factor_space": "s", "taste": arrays, "taste_held_out": None}
    torch.save(raw, tmp_path / "v5.pt")
    loaded = Predictor.load(tmp_path / "v5.pt")
    assert loaded.kinds == ("network", "taste") and loaded.version == "old"
    assert loaded.held_out().kinds == ("network",)  # no held-out fit: judged without it
    from model.predictor import Excerpts
    excerpts = Excerpts([f"t{i}" for i in range(6)], mels, loaded.mel_params)
    with torch.no_grad():
        alone = unit_rows(network.module(torch.from_numpy(mels)).numpy()) * 2.0
    expected = (alone + taste.predict(arrays, torch.from_numpy(mels)).numpy()) / 2
    np.testing.assert_allclose(loaded.predict(excerpts, FactorSpace("s", "f")), expected,
                               rtol=1e-5, atol=1e-6)
    # format 1 (no format key) loads too
    torch.save({key: value for key, value in raw.items()
                if key not in ("format", "factor_space", "taste", "taste_held_out")},
               tmp_path / "v1.pt")
    assert Predictor.load(tmp_path / "v1.pt").kinds == ("network",)


def test_a_model_is_tied_to_the_factor_space_it_learned(tmp_path):
    tiny_predictor("night-1").save(tmp_path / "model.pt")
    predictor = Predictor.load(tmp_path / "model.pt")

    predictor.check_space(FactorSpace("night-1", "f1"))
    with pytest.raises(ValueError, match="learned the factor space night-1 but f2 is in night-2"):
        predictor.check_space(FactorSpace("night-2", "f2"))
    with pytest.raises(ValueError, match="does not record which ALS factors it learned"):
        tiny_predictor(None).check_space(FactorSpace("night-1", "f1"))
    # and predicting checks it itself
    from model.predictor import Excerpts
    excerpts = Excerpts(["a"], np.zeros((1, 16, 140), np.float32), predictor.mel_params)
    with pytest.raises(ValueError, match="learned the factor space night-1"):
        predictor.predict(excerpts, FactorSpace("night-2", "f2"))
    with pytest.raises(ValueError, match="mel parameters"):
        predictor.predict(Excerpts(["a"], excerpts.mels, MelParams(n_mels=16, n_fft=512).to_dict()),
                          FactorSpace("night-1", "f1"))


def test_an_input_with_nothing_to_train_on_is_found_by_the_check_alone(tmp_path):
    mels_dir, items, ids, _, warm = write_toy_set(tmp_path)
    strangers = tmp_path / "strangers.parquet"
    storage.write_table(pa.table({"track_id": ["x1", "x2"],
                                  "factors": factors_column(np.ones((2, 4), np.float32))}),
                        strangers, schemas.ITEM_FACTORS)

    def check(item_factors):
        return subprocess.run(
            [sys.executable, "-m", "model.train", "--check", "--mels", str(mels_dir),
             "--item-factors", str(item_factors), "--out", str(tmp_path / "m.pt"),
             "--loss", "mse"],
            cwd=REPO, capture_output=True, text=True, timeout=300)

    good, bad = check(items), check(strangers)
    assert good.returncode == 0, good.stderr
    assert f"{warm} warm tracks to train on" in good.stderr
    assert bad.returncode == 1
    assert f"{strangers}: none of its tracks has a spectrogram" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert not (tmp_path / "m.pt").exists()


def test_a_collapsed_model_fails_training_loudly(tmp_path, capfd):
    """Every warm track has the same factors: the network can only learn one direction,
    and training says so instead of writing a model that gives every track the same."""
    from model.train import main as train_main

    mels_dir, _, ids, _, warm = write_toy_set(tmp_path, n=40)
    same = np.tile(np.array([[1.0, 0.5, 0.0, 0.0]], np.float32), (warm, 1))
    storage.write_table(pa.table({"track_id": ids[:warm], "factors": factors_column(same)}),
                        tmp_path / "same.parquet", schemas.ITEM_FACTORS)
    code = train_main(["--mels", str(mels_dir), "--item-factors", str(tmp_path / "same.parquet"),
                       "--out", str(tmp_path / "model.pt"), "--epochs", "3",
                       "--channels", "8", "8", "16", "16", "--dense", "32", "--crop-frames", "120",
                       "--clips-per-track", "1", "--val-fraction", "0.3", "--loss", "mse"])
    assert code == 1
    err = capfd.readouterr().err
    assert "the trained model collapsed" in err and "spread more than 0.0" in err
    assert not (tmp_path / "model.pt").exists()


def test_a_collapse_under_torchrun_is_not_restarted_and_says_why_in_the_failure_file(tmp_path):
    """The workflow's failure file given: every rank collapses alike, so each exits 0
    with the file saying why, instead of torchrun restarting them to collapse again."""
    mels_dir, _, ids, _, warm = write_toy_set(tmp_path, n=40)
    same = np.tile(np.array([[1.0, 0.5, 0.0, 0.0]], np.float32), (warm, 1))
    storage.write_table(pa.table({"track_id": ids[:warm], "factors": factors_column(same)}),
                        tmp_path / "same.parquet", schemas.ITEM_FACTORS)
    failure = tmp_path / "failure.txt"
    cmd = torchrun(tmp_path, mels_dir, tmp_path / "same.parquet", "--max-restarts=3") \
        + ["--epochs", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, COLDSTART_FAILURE_FILE=str(failure)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert failure.read_text().startswith("the trained model collapsed: in no epoch did")
    assert failure.read_text().count("\n") == 1  # one line
    # once per rank: a restart would resume from the snapshot and collapse again
    assert result.stderr.count("the trained model collapsed") == 2, result.stderr[-3000:]
    assert "resumed from" not in result.stderr
    assert not (tmp_path / "model.pt").exists()


def test_a_warm_start_turns_the_last_network_into_the_new_space(tmp_path):
    """Trained from a model of another factor space, at learning rate 0: the network is
    the old one with its output rotated, so it predicts the old predictions, rotated."""
    from model.train import main as train_main

    mels_dir, factors, ids, _, warm = write_toy_set(tmp_path, n=40)
    items = storage.read_table(factors, schemas.ITEM_FACTORS)
    storage.write_table(items, tmp_path / "then.parquet", schemas.ITEM_FACTORS,
                        {"factor_space": "then"})
    rotation, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(4, 4)))
    now = items.set_column(1, "factors", factors_column(schemas.factor_matrix(items) @ rotation))
    storage.write_table(now, tmp_path / "now.parquet", schemas.ITEM_FACTORS,
                        {"factor_space": "now"})
    common = ["--mels", str(mels_dir), "--channels", "8", "8", "16", "16", "--dense", "32",
              "--crop-frames", "120", "--clips-per-track", "1", "--val-fraction", "0.3",
              "--loss", "mse", "--min-spread", "0", "--taste-tracks", "0"]
    assert train_main([*common, "--item-factors", str(tmp_path / "then.parquet"),
                       "--out", str(tmp_path / "then.pt"), "--epochs", "2"]) == 0
    assert train_main([*common, "--item-factors", str(tmp_path / "now.parquet"),
                       "--out", str(tmp_path / "now.pt"), "--init-from", str(tmp_path / "then.pt"),
                       "--init-factors", str(tmp_path / "then.parquet"), "--warm-epochs", "1",
                       "--epochs", "50", "--lr", "0"]) == 0

    then, now = Predictor.load(tmp_path / "then.pt"), Predictor.load(tmp_path / "now.pt")
    assert now.metrics["epochs"] == 1 and now.metrics["warm_start"] == {
        "model": then.version, "shared_tracks": warm, "residual": 0.0}
    cold = read_mels(sorted(mels_dir.glob("*/mels-*.parquet")), ids[warm:])
    excerpts = Excerpts.of(cold, MelParams(n_mels=16).to_dict())
    np.testing.assert_allclose(now.predict(excerpts, FactorSpace("now", "now")),
                               then.predict(excerpts, FactorSpace("then", "then")) @ rotation,
                               atol=1e-4)


def write_artists(root, ids, warm, factors_path, seed=1):
    """Give each track one of four artists, and add to each warm track's factors a
    direction only its artist tells (dims 2 and 3), which its audio cannot. Returns
    (catalogue path, the artist-only bit of every track)."""
    rng = np.random.default_rng(seed)
    artist = rng.integers(0, 4, len(ids))
    catalogue = root / "catalogue.parquet"
    pq.write_table(pa.table({"track_id": ids, "audio_uri": [f"/audio/{t}.ogg" for t in ids],
                             "artist": [f"Artist {a}" for a in artist],
                             "genre": ["game"] * len(ids)}), catalogue)
    items = storage.read_table(factors_path, schemas.ITEM_FACTORS)
    x = schemas.factor_matrix(items).copy()
    x[np.arange(warm), 2 + artist[:warm] % 2] += 2.0
    storage.write_table(pa.table({"track_id": ids[:warm], "factors": factors_column(x)}),
                        factors_path, schemas.ITEM_FACTORS)
    return catalogue, artist % 2


def test_late_fusion_learns_what_only_the_artist_tells_and_still_hears_the_audio(tmp_path):
    from model import metadata

    mels_dir, factors, ids, kinds, warm = write_toy_set(tmp_path)
    catalogue, artist_bit = write_artists(tmp_path, ids, warm, factors)
    cmd = torchrun(tmp_path, mels_dir, factors) + ["--epochs", "15", "--loss", "cosine",
                                                   "--catalogue", str(catalogue)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    predictor = Predictor.load(tmp_path / "model.pt")
    vocab = predictor.vocabulary
    assert "artist=artist 0" in vocab and "genre=game" in vocab
    assert predictor.metrics["metadata_tokens"] == len(vocab)
    assert predictor.kinds == ("network",)  # an audio-only classifier would blur the artist
    shards = sorted(mels_dir.glob("*/mels-*.parquet"))
    tokens, cold = metadata.read_tokens(catalogue), ids[warm:]
    space = FactorSpace.of(factors)
    with pytest.raises(ValueError, match="give it the catalogue"):
        predictor.predict_tracks(shards, cold, space)

    def accuracy(withhold):
        found, pred = predictor.withholding(withhold).predict_tracks(shards, cold, space, tokens)
        rows = [ids.index(t) for t in found]
        return (np.mean(np.argmax(pred[:, :2], axis=1) == kinds[rows]),
                np.mean(np.argmax(pred[:, 2:], axis=1) == artist_bit[rows]))

    audio, artist = accuracy(())
    assert audio > 0.9 and artist > 0.9
    # a cold track of an artist never seen is predicted from its audio alone
    audio, artist = accuracy(("artist",))
    assert audio > 0.9 and artist < 0.8


def test_metadata_tokens_from_artist_genre_and_tags(tmp_path):
    from model import metadata

    table = pa.table({"track_id": ["a", "b", "c"], "artist": ["The Band", None, " "],
                      "genre": ["Rock", "jazz", None], "tags": ["loud, live", None, "calm"]})
    tokens = metadata.tokens_of(table)
    assert tokens == {"a": ("artist=the band", "genre=rock", "tag=loud", "tag=live"),
                      "b": ("genre=jazz",), "c": ("tag=calm",)}
    listed = metadata.tokens_of(pa.table({"track_id": ["d"], "tags": [["Ambient", "8-bit"]]}))
    assert listed == {"d": ("tag=ambient", "tag=8-bit")}
    vocab = metadata.vocabulary(tokens, ["a", "b"])
    assert vocab == ("artist=the band", "genre=jazz", "genre=rock", "tag=live", "tag=loud")
    ids = metadata.token_ids(vocab, tokens, ["a", "c", "unknown"])
    assert ids.shape == (3, metadata.MAX_TOKENS)
    assert list(ids[0, :4]) == [1, 3, 5, 4] and not ids[1].any() and not ids[2].any()
    assert list(metadata.token_ids(vocab, tokens, ["a"], ("artist", "tags"))[0, :2]) == [3, 0]
    pq.write_table(table.drop(["artist", "genre", "tags"]), tmp_path / "bare.parquet")
    with pytest.raises(ValueError, match="bare.parquet.*none of the metadata columns"):
        metadata.read_tokens(tmp_path / "bare.parquet")


def test_a_fused_network_without_tokens_predicts_from_audio_and_keeps_its_shape():
    vocab = ("artist=a", "artist=b")
    shapes = {"dieleman2014": dict(SMALL, clip_frames=110),
              "vandenoord2013": dict(channels=(8, 8), pools=(4, 2), dense=32)}
    for arch, frames in (("dieleman2014", 220), ("vandenoord2013", 400)):
        net = build_net(NetConfig.for_arch(arch, n_mels=16, n_factors=4, metadata_vocab=vocab,
                                           **shapes[arch])).eval()
        mel = torch.randn(3, 16, frames)
        tokens = torch.tensor([[1, 0], [2, 0], [0, 0]])
        with torch.no_grad():
            fused, bare = net(mel, tokens), net(mel)
        assert fused.shape == (3, 4)
        # a track without tokens is exactly a track given none
        assert torch.allclose(fused[2], bare[2], atol=1e-6)
        assert not torch.allclose(fused[0], bare[0])
        restored = NetConfig.from_dict(net.config.to_dict())
        assert restored == net.config and restored.metadata_vocab == vocab
