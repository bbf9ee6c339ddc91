"""Byte layouts of ciphertexts and replies (docs/protocol.md is the specification).

Upload, one seeded ciphertext:   c0 as N little-endian 7-byte words (each < q), then the
                                 64-byte seed that expands to c1 (heml.he.prng).
Reply, one output polynomial:    words modulo 2^bits as little-endian bits/8-byte words: first
                                 c0 at the output positions, then all N words of c1.

Sizes are fixed by the parameters, so a length check rejects most garbage before any
arithmetic; every c0 word is then checked against q.
"""

from __future__ import annotations

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
    return pack_words(c0, C0_WORD_BYTES) + seed


def unpack_ciphertext(buf: bytes, n: int, q: int, index: int = 0) -> tuple[np.ndarray, bytes]:
    """Validate one uploaded ciphertext and return (c0 words, seed)."""
    expected = ciphertext_size(n)
    if len(buf) != expected:
        raise InvalidCiphertext(
            f"ciphertext {index} has {len(buf)} bytes; parameters N={n} need exactly {expected}"
        )
    c0 = unpack_words(buf, n, C0_WORD_BYTES)
    if np.any(c0 >= np.uint64(q)):
        bad = int(np.count_nonzero(c0 >= np.uint64(q)))
        raise InvalidCiphertext(
            f"ciphertext {index} has {bad} coefficient(s) not below the modulus q (corrupt or "
            "encrypted under other parameters)"
        )
    return c0, bytes(buf[expected - SEED_BYTES :])


def reply_size(positions: int, n: int, bits: int) -> int:
    return (positions + n) * (bits // 8)


def pack_reply(c0_out: np.ndarray, c1: np.ndarray, bits: int) -> bytes:
    return pack_words(np.concatenate([c0_out, c1]), bits // 8)


def unpack_reply(buf: bytes, positions: int, n: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    expected = reply_size(positions, n, bits)
    if len(buf) != expected:
        raise InvalidCiphertext(f"reply has {len(buf)} bytes, expected {expected}")
    words = unpack_words(buf, positions + n, bits // 8)
    return words[:positions], words[positions:]
