"""Client-side decryption of heml replies (coefficient form, modulo 2^bits) in numpy.

A reply carries c0 at the output positions and all of c1; the message at position p is
c0[p] + (c1 · s)[p] modulo 2^bits, with s the ternary secret and · the negacyclic product.
All arithmetic is on uint64 (wrapping modulo 2^64, hence exact modulo 2^bits).
"""

from __future__ import annotations

import math

import numpy as np

from .keys import SecretKey

LIMB = 16


def _signed(words: np.ndarray, bits: int) -> np.ndarray:
    mask = np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
    v = (words & mask).astype(np.int64) if bits < 64 else words.view(np.int64)
    if bits < 64:
        v = np.where(v >= (1 << (bits - 1)), v - (1 << bits), v)
    return v


class Decryptor:
    def __init__(self, key: SecretKey) -> None:
        self.n = key.params.n
        self.q = math.prod(key.primes)  # the modulus replies were switched from
        self._s = key.s.astype(np.int64)
        n = self.n
        pad = np.zeros(2 * n)
        pad[:n] = self._s
        self._s_fft = np.fft.rfft(pad)
        self._rows_cache: dict[bytes, np.ndarray] = {}

    def _product_rows(self, positions: np.ndarray) -> np.ndarray:
        """Rows R[p, j] with (c1 · s)[p] = Σ_j c1[j] R[p, j] (as uint64 two's complement)."""
        key = positions.tobytes()
        rows = self._rows_cache.get(key)
        if rows is None:
            j = np.arange(self.n)[None, :]
            p = positions.reshape(-1, 1)
            idx = (p - j) % self.n
            sign = np.where(j <= p, 1, -1)
            rows = (self._s[idx] * sign).astype(np.int64).view(np.uint64)
            if len(self._rows_cache) >= 64:
                self._rows_cache.pop(next(iter(self._rows_cache)))
            self._rows_cache[key] = rows
        return rows

    def at_positions(self, c0: np.ndarray, c1: np.ndarray, positions: np.ndarray, bits: int):
        """Signed messages (units of q / 2^bits) at the given coefficient positions."""
        rows = self._product_rows(np.asarray(positions))
        with np.errstate(over="ignore"):
            m = c0.astype(np.uint64) + rows @ c1.astype(np.uint64)
        return _signed(m, bits)

    def leading(self, c0: np.ndarray, c1: np.ndarray, count: int, bits: int) -> np.ndarray:
        """Signed messages at positions 0..count-1 (a full negacyclic product via FFT)."""
        n = self.n
        acc = np.zeros(2 * n, dtype=np.uint64)
        words = c1.astype(np.uint64)
        for limb in range(0, bits, LIMB):
            part = ((words >> np.uint64(limb)) & np.uint64((1 << LIMB) - 1)).astype(np.float64)
            pad = np.zeros(2 * n)
            pad[:n] = part
            conv = np.rint(np.fft.irfft(np.fft.rfft(pad) * self._s_fft, 2 * n)).astype(np.int64)
            with np.errstate(over="ignore"):
                acc += conv.view(np.uint64) << np.uint64(limb)
        with np.errstate(over="ignore"):
            prod = acc[:count] - acc[n : n + count]
            m = c0[:count].astype(np.uint64) + prod
        return _signed(m, bits)

    def to_value(self, signed: np.ndarray, bits: int) -> np.ndarray:
        """Messages in units of q/2^bits -> values in units of the modulus q (float64)."""
        return signed.astype(np.float64) * (self.q / float(1 << bits))
