"""The PyTorch musicnn taggers against outputs of the original TensorFlow code
(tests/data/README.md says how the fixture was made), and their refusal of damaged weights."""
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import musicnn
from model.crc32c import crc32c
from model.tf_checkpoint import WeightsError

FIXTURE = Path(__file__).parent / "data" / "musicnn_parity.npz"
DATA = ".data-00000-of-00001"

# Largest absolute difference allowed from TensorFlow's float32 outputs. Both compute the
# same float32 maths in another summation order; the largest differences seen on CPU were
# probabilities 2.5e-6, penultimate 9.7e-6, mean_pool 1.3e-5 and max_pool 2.0e-4 (whose
# values reach 95). Each bound is about ten times that.
TOLERANCE = {"probabilities": 2e-5, "penultimate": 1e-4, "mean_pool": 1e-4, "max_pool": 2e-3}


@pytest.fixture(scope="module")
def expected():
    with np.load(FIXTURE) as data:
        return dict(data)


@pytest.fixture(scope="module")
def outputs(expected):
    # TensorFlow was fed the stored float16 values, widened to float32 as here.
    patches = torch.from_numpy(expected["patches"].astype(np.float32))
    with torch.inference_mode():
        return {name: musicnn.load(name)(patches) for name in musicnn.TAGGERS}


@pytest.mark.parametrize("name", musicnn.TAGGERS)
@pytest.mark.parametrize("output", sorted(TOLERANCE))
def test_the_port_reproduces_tensorflow(outputs, expected, name, output):
    got = getattr(outputs[name], output).numpy()
    np.testing.assert_allclose(got, expected[f"{name}/{output}"], rtol=0,
                               atol=TOLERANCE[output])


def test_the_tolerance_tells_the_two_taggers_apart(outputs, expected):
    wrong = outputs["MTT_musicnn"].penultimate.numpy() - expected["MSD_musicnn/penultimate"]
    assert np.abs(wrong).max() > 100 * TOLERANCE["penultimate"]


def test_outputs_have_the_documented_shapes(outputs):
    out = outputs["MSD_musicnn"]
    n, frames = 4, musicnn.PATCH_FRAMES
    assert out.frontend.shape == (n, frames, 561)
    assert out.midend.shape == (n, frames, 753)
    assert out.mean_pool.shape == out.max_pool.shape == (n, 753)
    assert out.penultimate.shape == (n, 200)
    assert out.logits.shape == out.probabilities.shape == (n, 50)
    # The mid end's features begin with the front end's (a dense connection).
    torch.testing.assert_close(out.midend[..., :561], out.frontend, rtol=0, atol=0)


def test_pooling_bands_before_normalising_changes_nothing():
    net = musicnn.load("MSD_musicnn")  # its batch norms include negative scales
    spectrogram = torch.randn(2, 1, musicnn.PATCH_FRAMES, musicnn.N_MELS)
    with torch.inference_mode():
        for branch in net.frontend:
            assert (branch.norm.weight < 0).any()
            maps = branch.conv(F.pad(spectrogram, (0, 0, *branch.pad)))
            every_band = branch.norm(F.relu(maps)).amax(dim=3)
            torch.testing.assert_close(branch(spectrogram), every_band, rtol=0, atol=0)


def test_patches_must_have_96_bands():
    with pytest.raises(ValueError, match="96"):
        musicnn.load("MTT_musicnn")(torch.zeros(1, musicnn.PATCH_FRAMES, 128))


@pytest.mark.parametrize("name", musicnn.TAGGERS)
def test_each_tagger_has_fifty_distinct_tags(name):
    tags = musicnn.labels(name)
    assert len(set(tags)) == len(tags) == 50
    assert all(isinstance(tag, str) and tag for tag in tags)


def test_an_unknown_tagger_is_refused():
    with pytest.raises(ValueError, match="MTT_musicnn"):
        musicnn.load("MTT_vgg")


@pytest.fixture
def checkpoint(tmp_path):
    """A copy of the MTT tagger's checkpoint files, to damage."""
    for suffix in (".index", DATA):
        shutil.copy(musicnn.checkpoint_dir("MTT_musicnn") / suffix, tmp_path / suffix)
    return tmp_path


def refused(directory: Path, damaged: Path, reason: str) -> None:
    with pytest.raises(WeightsError) as caught:
        musicnn.load("MTT_musicnn", directory=directory)
    message = str(caught.value)
    assert "\n" not in message and str(damaged) in message and reason in message, message


def test_the_copy_loads(checkpoint):
    assert musicnn.load("MTT_musicnn", directory=checkpoint).backend.output.out_features == 50


def test_a_truncated_data_file_is_refused_by_name(checkpoint):
    data = checkpoint / DATA
    data.write_bytes(data.read_bytes()[:-1000])
    refused(checkpoint, data, "truncated")


def test_a_changed_weight_is_refused_by_name(checkpoint):
    data = checkpoint / DATA
    damaged = bytearray(data.read_bytes())
    damaged[100_000] ^= 0x01  # inside conv2d/kernel
    data.write_bytes(bytes(damaged))
    refused(checkpoint, data, "checksum")


def test_a_damaged_index_is_refused_by_name(checkpoint):
    index = checkpoint / ".index"
    damaged = bytearray(index.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    index.write_bytes(bytes(damaged))
    refused(checkpoint, index, "checksum")


def test_a_file_that_is_not_an_index_is_refused_by_name(checkpoint):
    index = checkpoint / ".index"
    index.write_bytes(b"not a checkpoint index")
    refused(checkpoint, index, "no table footer")


@pytest.mark.parametrize("missing", [".index", DATA])
def test_a_missing_file_is_refused_by_name(checkpoint, missing):
    (checkpoint / missing).unlink()
    refused(checkpoint, checkpoint / missing, "No such file")


def varints(buffer: bytes, count: int) -> list[int]:
    values, value, shift = [], 0, 0
    for byte in buffer:
        value, shift = value | (byte & 0x7F) << shift, shift + 7
        if byte < 0x80:
            values.append(value)
            value = shift = 0
            if len(values) == count:
                return values


def test_a_snappy_compressed_index_is_refused_by_name(checkpoint):
    # Mark the index block compressed, with a valid checksum, as a table written by
    # LevelDB's defaults would be.
    index = checkpoint / ".index"
    table = bytearray(index.read_bytes())
    _, _, offset, size = varints(table[-48:], 4)  # the footer's two block handles
    table[offset + size] = 1
    crc = crc32c(bytes(table[offset:offset + size + 1]))
    masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    struct.pack_into("<I", table, offset + size + 1, masked)
    index.write_bytes(bytes(table))
    refused(checkpoint, index, "snappy")
