"""CRC-32C (Castagnoli), the checksum a TensorFlow checkpoint keeps for each table block
and each tensor.

A byte-at-a-time loop in Python takes seconds over a few megabytes of weights, so the
message is cut into equal lanes whose registers advance together in numpy, and the
lanes' registers are then joined pairwise (the register update is linear over GF(2)).
"""
from __future__ import annotations

import numpy as np

_POLYNOMIAL = np.uint32(0x82F63B78)  # Castagnoli, bit-reflected
_MAX_LANES = 1024  # a power of two, so that lanes join pairwise down to one


def _byte_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ _POLYNOMIAL, table >> 1).astype(np.uint32)
    return table


_TABLE = _byte_table()


def _advance(registers: np.ndarray, lanes: np.ndarray) -> np.ndarray:
    """registers: (k,) uint32, each run over its row of lanes: (k, length) uint8."""
    for column in lanes.T:
        registers = _TABLE[(registers ^ column) & 0xFF] ^ (registers >> 8)
    return registers


def _apply(operator: np.ndarray, registers: np.ndarray) -> np.ndarray:
    """A linear map of 32-bit registers given by the images of its 32 unit vectors."""
    out = np.zeros_like(registers)
    for bit in range(32):
        out ^= np.where((registers >> np.uint32(bit)) & 1, operator[bit], np.uint32(0))
    return out


def crc32c(data: bytes | memoryview | np.ndarray) -> int:
    """The CRC-32C of data's bytes (initial register and final xor all ones)."""
    message = np.frombuffer(data, dtype=np.uint8)
    if message.size < 4:
        return int(_advance(np.full(1, 0xFFFFFFFF, np.uint32), message[None])[0]) ^ 0xFFFFFFFF
    lanes = min(_MAX_LANES, 1 << ((message.size // 4).bit_length() - 1))
    length = -(-message.size // lanes)
    # Starting from all ones is the same as starting from zero with the first four bytes
    # complemented; and from zero, leading zero bytes change nothing, so the message is
    # padded at the front to fill equal lanes that all start from zero.
    padded = np.zeros(lanes * length, dtype=np.uint8)
    padded[padded.size - message.size:] = message
    padded[padded.size - message.size:][:4] ^= 0xFF
    registers = _advance(np.zeros(lanes, np.uint32), padded.reshape(lanes, length))
    # shift: what `length` zero bytes do to a register; crc(a + b) = shift(crc(a)) ^ crc(b).
    shift = _advance(np.uint32(1) << np.arange(32, dtype=np.uint32),
                     np.zeros((32, length), np.uint8))
    while registers.size > 1:
        registers = _apply(shift, registers[0::2]) ^ registers[1::2]
        shift = _apply(shift, shift)
    return int(registers[0]) ^ 0xFFFFFFFF
