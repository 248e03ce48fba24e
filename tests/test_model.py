"""The network, the data helpers and a real 2-process DDP training run with torchrun."""
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch

import schemas
from jobs import storage
from jobs.mel import MelParams
from jobs.score import factors_column
from model.artefact import load_model
from model.data import CropDataset, mel_array, read_mels, unit_rows
from model.net import FactorNet, NetConfig
from model.train import split_indices

SMALL = dict(channels=(8, 8, 16, 16), dense=32, dropout=0.0)


def test_net_output_shape_and_min_frames():
    config = NetConfig(n_mels=16, n_factors=5, **SMALL)
    net = FactorNet(config)
    out = net(torch.randn(3, 16, config.min_frames()))
    assert out.shape == (3, 5)
    with pytest.raises(RuntimeError):
        net(torch.randn(3, 16, config.min_frames() - 1))


def test_net_is_length_agnostic():
    net = FactorNet(NetConfig(n_mels=16, n_factors=4, **SMALL)).eval()
    for frames in (103, 200, 431):
        assert net(torch.randn(2, 16, frames)).shape == (2, 4)


def test_split_is_disjoint_and_complete():
    train, val = split_indices(101, 0.1, seed=3)
    assert len(val) == 10 and not set(train) & set(val)
    assert sorted([*train, *val]) == list(range(101))


def test_crop_dataset_crops_inside_excerpt():
    mels = np.arange(2 * 4 * 50, dtype=np.float32).reshape(2, 4, 50)
    data = CropDataset(mels, np.zeros((2, 3), np.float32), crop_frames=20)
    mel, _ = data[1]
    assert mel.shape == (4, 20)
    start = int(mel[0, 0] - mels[1, 0, 0])
    np.testing.assert_array_equal(mel.numpy(), mels[1, :, start:start + 20])


def write_toy_set(root, n=96, n_mels=16, frames=160, seed=0):
    """Tracks of two kinds: energy in low or in high mel bands; factors point one of two ways.

    Returns the mels directory, the item-factors file and the kinds.
    """
    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, 2, n)
    mels = rng.normal(0, 1, (n, n_mels, frames)).astype(np.float32)
    for i, kind in enumerate(kinds):
        bands = slice(0, n_mels // 2) if kind == 0 else slice(n_mels // 2, n_mels)
        mels[i, bands] += 3.0
    directions = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], np.float32) * 2.0
    factors = directions[kinds] + rng.normal(0, 0.1, (n, 4)).astype(np.float32)
    ids = [f"t{i:04d}" for i in range(n)]
    params = MelParams(n_mels=n_mels)
    run = root / "mels" / params.params_hash() / "r1"
    run.mkdir(parents=True)
    shard = pa.table({"track_id": ids, "n_mels": [n_mels] * n, "n_frames": [frames] * n,
                      "mel": factors_column(mels.reshape(n, -1))})
    storage.write_table(shard, run / "mels-00000-of-00001.parquet", schemas.MEL_SHARD, params.to_dict())
    warm = n * 3 // 4  # the rest are "cold": no factors
    storage.write_table(pa.table({"track_id": ids[:warm], "factors": factors_column(factors[:warm])}),
                        root / "item_factors.parquet", schemas.ITEM_FACTORS)
    return run.parent, root / "item_factors.parquet", ids, kinds, warm


def test_read_mels_selects_and_reshapes(tmp_path):
    mels_dir, _, ids, _, _ = write_toy_set(tmp_path, n=10)
    table = read_mels(sorted(mels_dir.glob("*/mels-*.parquet")), ids[2:5])
    assert table.column("track_id").to_pylist() == ids[2:5]
    assert mel_array(table).shape == (3, 16, 160)


def test_ddp_training_with_torchrun_learns_the_mapping(tmp_path):
    mels_dir, factors, ids, kinds, warm = write_toy_set(tmp_path)
    out = tmp_path / "model.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "model.train", "--mels", str(mels_dir), "--item-factors", str(factors),
           "--out", str(out), "--snapshot", str(tmp_path / "snap.pt"), "--epochs", "12",
           "--batch-size", "8", "--crop-frames", "120", "--channels", "8", "8", "16", "16",
           "--dense", "32", "--dropout", "0", "--lr", "0.003"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank1" in result.stderr and "rank0" in result.stderr
    model, artefact = load_model(out)
    assert artefact["mel_params"] == MelParams(n_mels=16).to_dict()
    assert artefact["metrics"]["train_tracks"] + artefact["metrics"]["val_tracks"] == warm
    # Cold tracks never seen in training: the prediction must point the way of their kind.
    table = read_mels(sorted(mels_dir.glob("*/mels-*.parquet")), ids[warm:])
    with torch.no_grad():
        pred = unit_rows(model(torch.from_numpy(mel_array(table))).numpy())
    accuracy = np.mean(np.argmax(pred[:, :2], axis=1) == kinds[warm:])
    assert accuracy > 0.9, accuracy
