"""Byte layouts of ciphertexts and replies (docs/protocol.md is the specification).

Upload, one seeded ciphertext:   c0 as N little-endian 7-byte words (each < q), then the
                                 32-byte seed that expands to c1 (heml.he.prng).
Reply, one output polynomial:    words modulo 2^bits as a little-endian bit stream (bits per
                                 word): first c0 at the output positions, then all N words of c1.

Sizes are fixed by the parameters, so a length check rejects most garbage before any
arithmetic; every c0 word is then checked against q.
"""

from __future__ import annotations

import functools

import numpy as np

from ..errors import InvalidCiphertext
from .prng import SEED_BYTES

C0_WORD_BYTES = 7  # q < 2^54 < 2^56


def pack_words(values: np.ndarray, nbytes: int) -> bytes:
    """uint64 values (each < 2^(8*nbytes)) -> little-endian nbytes-byte words."""
    v = np.ascontiguousarray(values, dtype="<u8").reshape(-1)
    if nbytes == 8:
        return v.tobytes()
    return v.view(np.uint8).reshape(-1, 8)[:, :nbytes].tobytes()


def unpack_words(buf: bytes | memoryview, count: int, nbytes: int, offset: int = 0) -> np.ndarray:
    raw = np.frombuffer(buf, dtype=np.uint8, count=count * nbytes, offset=offset)
    if nbytes == 8:
        return raw.view("<u8").astype(np.uint64)
    full = np.zeros((count, 8), dtype=np.uint8)
    full[:, :nbytes] = raw.reshape(count, nbytes)
    return full.view("<u8").reshape(count).astype(np.uint64, copy=False)


def ciphertext_size(n: int) -> int:
    return C0_WORD_BYTES * n + SEED_BYTES


def pack_ciphertext(c0: np.ndarray, seed: bytes) -> bytes:
    return pack_ciphertexts(np.asarray(c0).reshape(1, -1), [seed])[0]


def pack_ciphertexts(c0: np.ndarray, seeds: list[bytes]) -> list[bytes]:
    """Rows of c0 words (rows, W) and one seed per row -> one upload blob per row."""
    for seed in seeds:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"seeds are {SEED_BYTES} bytes, got {len(seed)}")
    rows = np.ascontiguousarray(c0, dtype="<u8")
    body = rows.view(np.uint8).reshape(rows.shape[0], -1, 8)[:, :, :C0_WORD_BYTES]
    records = np.empty((rows.shape[0], body.shape[1] * C0_WORD_BYTES + SEED_BYTES), np.uint8)
    records[:, :-SEED_BYTES] = body.reshape(rows.shape[0], -1)
    records[:, -SEED_BYTES:] = np.frombuffer(b"".join(seeds), dtype=np.uint8).reshape(
        -1, SEED_BYTES
    )
    return [r.tobytes() for r in records]


def unpack_ciphertext(buf: bytes, n: int, q: int, index: int = 0) -> tuple[np.ndarray, bytes]:
    """Validate one uploaded ciphertext and return (c0 words, seed)."""
    c0, seeds = unpack_ciphertexts([buf], n, q, index)
    return c0[0], seeds[0]


def unpack_ciphertexts(
    bufs: list[bytes], n: int, q: int, first_index: int = 0
) -> tuple[np.ndarray, list[bytes]]:
    """Validate many uploaded ciphertexts at once: (c0 words (m, N), seeds)."""
    expected = ciphertext_size(n)
    for i, buf in enumerate(bufs):
        if len(buf) != expected:
            raise InvalidCiphertext(
                f"ciphertext {first_index + i} has {len(buf)} bytes; parameters N={n} need "
                f"exactly {expected}"
            )
    m = len(bufs)
    joined = b"".join(bufs)
    raw = np.frombuffer(joined, dtype=np.uint8).reshape(m, expected)
    # 8-byte little-endian reads at 7-byte strides (the seed follows c0, so the last read stays
    # inside the record), keeping the low 56 bits
    words = np.ndarray((m, n), dtype="<u8", buffer=joined, strides=(expected, C0_WORD_BYTES))
    c0 = (words & np.uint64((1 << 56) - 1)).astype(np.uint64, copy=False)
    bad = c0 >= np.uint64(q)
    if bad.any():
        i = int(np.flatnonzero(bad.any(axis=1))[0])
        raise InvalidCiphertext(
            f"ciphertext {first_index + i} has {int(bad[i].sum())} coefficient(s) not below the "
            "modulus q (corrupt or encrypted under other parameters)"
        )
    seeds = [bytes(raw[i, expected - SEED_BYTES :]) for i in range(m)]
    return c0, seeds


def packed_size(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


@functools.lru_cache(maxsize=64)
def _pack_plan(count: int, bits: int):
    """Index arrays for packing ``count`` words of ``bits`` bits (cached: replies repeat)."""
    start = np.arange(count, dtype=np.uint64) * np.uint64(bits)
    word = (start >> np.uint64(6)).astype(np.int64)
    off = start & np.uint64(63)
    high_shift = (np.uint64(64) - off) & np.uint64(63)
    spills = off + np.uint64(bits) > np.uint64(64)  # the value continues in the next word
    first = np.flatnonzero(np.r_[True, word[1:] != word[:-1]])  # word is non-decreasing
    return off, high_shift, spills, first, word[first], int(word[-1]) + 2


@functools.lru_cache(maxsize=64)
def _unpack_plan(count: int, bits: int):
    start = np.arange(count, dtype=np.int64) * bits
    gather = (start >> 3)[:, None] + np.arange(8)
    return gather, (start & 7).astype(np.uint64)


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Values < 2^bits (24 ≤ bits ≤ 56) as a little-endian bit stream: value i occupies bits
    i·bits .. (i+1)·bits - 1 (byte k holds stream bits 8k..8k+7, least significant first)."""
    v = np.ascontiguousarray(values, dtype=np.uint64).reshape(-1)
    if bits % 8 == 0:
        return pack_words(v, bits // 8)
    count = v.size
    if not count:
        return b""
    off, high_shift, spills, first, words, size = _pack_plan(count, bits)
    low = v << off
    high = v >> high_shift
    high[~spills] = 0
    out = np.zeros(size, dtype=np.uint64)
    out[words] = np.bitwise_or.reduceat(low, first)
    out[words + 1] |= np.bitwise_or.reduceat(high, first)
    return out.astype("<u8", copy=False).view(np.uint8)[: packed_size(count, bits)].tobytes()


def unpack_bits(buf: bytes, count: int, bits: int) -> np.ndarray:
    if bits % 8 == 0:
        return unpack_words(buf, count, bits // 8)
    nbytes = packed_size(count, bits)
    raw = np.zeros(nbytes + 8, dtype=np.uint8)
    raw[:nbytes] = np.frombuffer(buf, dtype=np.uint8, count=nbytes)
    gather, shift = _unpack_plan(count, bits)
    gathered = raw[gather].view("<u8").reshape(count)
    return (gathered >> shift) & np.uint64((1 << bits) - 1)


def reply_size(positions: int, n: int, bits: int) -> int:
    return packed_size(positions + n, bits)


def pack_reply(c0_out: np.ndarray, c1: np.ndarray, bits: int) -> bytes:
    return pack_bits(np.concatenate([c0_out, c1]), bits)


def unpack_reply(buf: bytes, positions: int, n: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    expected = reply_size(positions, n, bits)
    if len(buf) != expected:
        raise InvalidCiphertext(f"reply has {len(buf)} bytes, expected {expected}")
    words = unpack_bits(buf, positions + n, bits)
    return words[:positions], words[positions:]
