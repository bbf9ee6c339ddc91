"""heml.he.wire at its edges: every word width, buffers longer than the record, empty input,
and the messages that name the offending ciphertext (docs/protocol.md is the format).

These tests kill the mutants of wire.py that the rest of the suite let live (docs/testing.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from heml.errors import InvalidCiphertext
from heml.he import wire
from heml.he.params import default_params
from heml.he.prng import SEED_BYTES


@pytest.mark.parametrize("nbytes", range(1, 9))
@pytest.mark.parametrize("dtype", [np.uint64, np.int64, np.uint32])
def test_words_round_trip_at_every_width_from_any_integer_array(nbytes, dtype):
    """nbytes-byte little-endian words, whatever integer dtype the values come in."""
    rng = np.random.default_rng(nbytes)
    top = min(1 << (8 * nbytes), int(np.iinfo(dtype).max) + 1)
    values = rng.integers(0, top, size=(3, 5), dtype=np.uint64).astype(dtype)
    blob = wire.pack_words(values, nbytes)
    assert len(blob) == values.size * nbytes
    expected = b"".join(int(v).to_bytes(nbytes, "little") for v in values.reshape(-1))
    assert blob == expected
    # read back from the middle of a longer buffer: only `count` words after `offset`
    padded = b"\xff" * 3 + blob + b"\xee" * 11
    out = wire.unpack_words(padded, values.size, nbytes, offset=3)
    assert out.dtype == np.uint64
    np.testing.assert_array_equal(out, values.reshape(-1).astype(np.uint64))


@pytest.mark.parametrize("bits", [24, 31, 32, 40, 47, 54, 56])
def test_bit_streams_round_trip_and_ignore_trailing_bytes(bits):
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 1 << bits, size=37, dtype=np.uint64)
    blob = wire.pack_bits(values, bits)
    assert len(blob) == wire.packed_size(37, bits) == (37 * bits + 7) // 8
    # the stream, bit by bit: value i at bits i*bits .. (i+1)*bits - 1, little-endian
    stream = int.from_bytes(blob, "little")
    for i, v in enumerate(values):
        assert (stream >> (i * bits)) & ((1 << bits) - 1) == int(v)
    np.testing.assert_array_equal(wire.unpack_bits(blob + b"\xff" * 9, 37, bits), values)
    assert wire.pack_bits(values.astype(np.int64), bits) == blob
    assert wire.pack_bits(np.zeros(0, dtype=np.uint64), bits) == b""


def test_reply_length_is_checked_and_named():
    n, positions, bits = 2048, 3, 40
    size = wire.reply_size(positions, n, bits)
    c0, c1 = np.arange(positions, dtype=np.uint64), np.arange(n, dtype=np.uint64)
    blob = wire.pack_reply(c0, c1, bits)
    assert len(blob) == size
    got0, got1 = wire.unpack_reply(blob, positions, n, bits)
    np.testing.assert_array_equal(got0, c0)
    np.testing.assert_array_equal(got1, c1)
    with pytest.raises(InvalidCiphertext, match=f"reply has {size - 1} bytes, expected {size}"):
        wire.unpack_reply(blob[:-1], positions, n, bits)


def test_ciphertext_errors_name_the_ciphertext_and_the_sizes():
    n = 2048
    q = default_params(n).q
    seed = bytes(SEED_BYTES)
    good = wire.pack_ciphertext(np.zeros(n, dtype=np.uint64), seed)
    size = wire.ciphertext_size(n)
    assert size == 7 * n + SEED_BYTES == len(good)
    with pytest.raises(InvalidCiphertext, match=f"ciphertext 0 has {size - 1} bytes; "):
        wire.unpack_ciphertext(good[:-1], n, q)
    with pytest.raises(InvalidCiphertext, match=f"ciphertext 5 has {size + 1} bytes; .*N=2048"):
        wire.unpack_ciphertext(good + b"\0", n, q, 5)
    with pytest.raises(InvalidCiphertext, match=f"ciphertext 9 has 3 bytes; .*exactly {size}"):
        wire.unpack_ciphertexts([good, good, b"abc"], n, q, first_index=7)
    with pytest.raises(InvalidCiphertext, match="ciphertext 2 has 0 bytes"):
        wire.unpack_ciphertexts([good, good, b""], n, q)
    bad = bytearray(good)
    bad[0:7] = b"\xff" * 7  # 2^56 - 1 > q
    with pytest.raises(InvalidCiphertext, match="ciphertext 4 has 1 coefficient"):
        wire.unpack_ciphertext(bytes(bad), n, q, 4)
    with pytest.raises(InvalidCiphertext, match="ciphertext 0 has 1 coefficient"):
        wire.unpack_ciphertext(bytes(bad), n, q)
    with pytest.raises(ValueError, match=f"seeds are {SEED_BYTES} bytes, got 31"):
        wire.pack_ciphertext(np.zeros(n, dtype=np.uint64), bytes(31))


def test_ciphertext_records_round_trip_from_any_integer_dtype():
    n = 2048
    q = default_params(n).q
    rng = np.random.default_rng(5)
    c0 = rng.integers(0, q, size=(4, n), dtype=np.uint64)
    seeds = [bytes([i]) * SEED_BYTES for i in range(4)]
    blobs = wire.pack_ciphertexts(c0, seeds)
    assert wire.pack_ciphertexts(c0.astype(np.int64), seeds) == blobs
    for i, blob in enumerate(blobs):
        assert blob[:7] == int(c0[i, 0]).to_bytes(7, "little") and blob[-SEED_BYTES:] == seeds[i]
    words, got = wire.unpack_ciphertexts(blobs, n, q)
    np.testing.assert_array_equal(words, c0)
    assert got == seeds
