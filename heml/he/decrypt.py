"""Client-side decryption of heml replies (coefficient form, modulo 2^bits) in numpy.

A reply carries c0 at the output positions and all of c1; the message at position p is
c0[p] + (c1 · s)[p] modulo 2^bits, with s the ternary secret and · the negacyclic product.
All arithmetic is on uint64 (wrapping modulo 2^64, hence exact modulo 2^bits).
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..errors import InvalidCiphertext
from .keys import SecretKey

LIMB = 16
# honest row values stay below 0.45 q (plan.CAPACITY_FRACTION, noise included); the margin
# covers the modulus switch's rounding, which is orders of magnitude smaller than 0.025 q
RANGE_FRACTION = 0.475


def check_range(values: np.ndarray, modulus: int) -> None:
    """Reject decrypted row values (units of the modulus) that no honest reply produces."""
    limit = RANGE_FRACTION * float(modulus)
    bad = np.abs(values) > limit
    if np.any(bad):
        raise InvalidCiphertext(
            f"{int(bad.sum())} decrypted value(s) outside the range the model's plan allows "
            f"(|v| ≤ {RANGE_FRACTION} q): the reply was not computed by the published model"
        )


def uniform_noise(shape: tuple[int, ...], bound: float) -> np.ndarray:
    """Fresh noise, uniform on [-bound, bound), from os.urandom (53-bit resolution)."""
    count = int(np.prod(shape))
    words = np.frombuffer(os.urandom(8 * count), dtype="<u8") >> np.uint64(11)
    unit = words.astype(np.float64) / float(1 << 53)
    return ((2.0 * unit - 1.0) * bound).reshape(shape)


def flood(scores: np.ndarray, bound: float) -> np.ndarray:
    """Scores plus fresh uniform noise on [-bound, bound): hides the key-dependent part of
    the decryption error (see the module docstring); ``bound`` from plan.flood_bound."""
    return scores + uniform_noise(scores.shape, bound)


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
