"""Randomness for encryption: the public polynomial a from a seed, and the secret error e.

A seeded ciphertext sends c0 and a 32-byte seed instead of c1 = a (half the bytes); client and
server expand the seed the same way. Both streams are AES-256 in counter mode (OpenSSL through
``cryptography``, hardware AES where the CPU has it: about 10x faster than SEAL's BLAKE2Xb,
which dominated both the client's encryption and the server's reading of uploads).

* a: the keystream of AES-256-CTR(key = seed, initial counter block = 16 zero bytes), read as
  little-endian uint64 words. For L primes, words j·N .. j·N + N - 1 give a's coefficients
  modulo prime j: keep the low bit_length(q) bits of w; the result is accepted when it is below
  q (exactly uniform, no division; for heml's primes just under 2^54 a rejection has
  probability ~4e-12); a rejected word is replaced by the next accepted word after the first
  L·N words, in order. The seed is public, so a is public; what matters is that it is uniform
  and fresh. (Kyber's "90s" variant expands its public matrix from a seed the same way.)
* e: a centered binomial with 21 + 21 coin flips per coefficient (σ = √10.5 ≈ 3.24, |e| ≤ 21,
  the distribution SEAL 4.x samples its noise from), with the coins from AES-256-CTR under a
  fresh key from ``os.urandom`` for every call.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
ERROR_COINS = 21  # coin flips on each side of the centered binomial
SPARE_WORDS = 64  # words generated beyond L·N for replacements (more only if these run out)
_ZERO_COUNTER = bytes(16)
_HALF_MASK = np.uint64((1 << ERROR_COINS) - 1)


def keystream(key: bytes, nbytes: int) -> bytes:
    """The first ``nbytes`` of AES-256-CTR(key, counter block 0); a longer call extends a
    shorter one (the stream is the same prefix)."""
    if len(key) != 32:
        raise ValueError(f"keys and seeds are 32 bytes, got {len(key)}")
    enc = Cipher(algorithms.AES(key), modes.CTR(_ZERO_COUNTER)).encryptor()
    return enc.update(bytes(nbytes))


def expand(
    seed: bytes, n: int, primes: tuple[int, ...] | list[int], *, out: np.ndarray | None = None
) -> np.ndarray:
    """The public polynomial a for a seed: shape (len(primes), n), row j modulo primes[j]
    (written into ``out``, a uint64 array of that shape, when given)."""
    count = n * len(primes)
    words = np.frombuffer(keystream(seed, 8 * (count + SPARE_WORDS)), dtype="<u8")
    if out is None:
        out = np.empty((len(primes), n), dtype=np.uint64)
    pos = count
    for j, q in enumerate(primes):
        mask, bound = np.uint64((1 << q.bit_length()) - 1), np.uint64(q)
        row = np.bitwise_and(words[j * n : (j + 1) * n], mask, out=out[j])
        for idx in np.flatnonzero(row >= bound):
            while True:
                if pos >= words.size:  # astronomically rare: extend the stream
                    words = np.frombuffer(keystream(seed, 16 * words.size), dtype="<u8")
                w = words[pos] & mask
                pos += 1
                if w < bound:
                    row[idx] = w
                    break
    return out


def expand_seed(seed: bytes, n: int, q: int, *, out: np.ndarray | None = None) -> np.ndarray:
    """``expand`` for one prime: the n coefficients of a (written to ``out`` when given)."""
    return expand(seed, n, (q,), out=None if out is None else out.reshape(1, n))[0]


def fresh_seeds(count: int) -> list[bytes]:
    """``count`` independent seeds from the operating system's CSPRNG."""
    raw = os.urandom(SEED_BYTES * count)
    return [raw[i * SEED_BYTES : (i + 1) * SEED_BYTES] for i in range(count)]


def sample_error(shape: tuple[int, ...], *, key: bytes | None = None) -> np.ndarray:
    """Centered binomial noise (int64, values in [-21, 21]); the coins come from AES-256-CTR
    under a fresh ``os.urandom`` key (``key`` only for reproducible tests)."""
    size = int(np.prod(shape))
    words = np.frombuffer(keystream(key or os.urandom(32), 8 * size), dtype="<u8")
    plus = np.bitwise_count(words & _HALF_MASK).astype(np.int64)
    minus = np.bitwise_count((words >> np.uint64(ERROR_COINS)) & _HALF_MASK)
    return (plus - minus).reshape(shape)
