"""Reading TensorFlow checkpoints without TensorFlow; damaged files are covered with the
taggers that use them, in tests/test_musicnn.py."""
import numpy as np
import pytest

from model.crc32c import crc32c
from model.musicnn import checkpoint_dir
from model.tf_checkpoint import read_checkpoint, read_index


def bitwise_crc32c(data: bytes) -> int:
    register = 0xFFFFFFFF
    for byte in data:
        register ^= byte
        for _ in range(8):
            register = (register >> 1) ^ (0x82F63B78 if register & 1 else 0)
    return register ^ 0xFFFFFFFF


def test_crc32c_matches_the_standard_check_value():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue's check value


@pytest.mark.parametrize("length", [0, 1, 3, 4, 5, 31, 1000, 4097, 12_345])
def test_crc32c_in_lanes_matches_the_bitwise_definition(length):
    data = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8).tobytes()
    assert crc32c(data) == bitwise_crc32c(data)


def test_every_variable_is_read_with_its_shape():
    prefix = f"{checkpoint_dir('MTT_musicnn')}/"
    shards, entries = read_index(f"{prefix}.index")
    weights = read_checkpoint(prefix)
    assert shards == 1 and weights.keys() == entries.keys()
    assert weights["conv2d/kernel"].shape == (7, 38, 1, 204)  # (frames, bands, in, out)
    assert weights["dense/kernel"].dtype == np.float32
    data = checkpoint_dir("MTT_musicnn") / ".data-00000-of-00001"
    assert sum(w.nbytes for w in weights.values()) == data.stat().st_size


def test_only_the_variables_asked_for_are_read():
    prefix = f"{checkpoint_dir('MTT_musicnn')}/"
    wanted = ["dense_1/bias", "dense_1/kernel"]
    assert sorted(read_checkpoint(prefix, include=lambda name: name in wanted)) == wanted
