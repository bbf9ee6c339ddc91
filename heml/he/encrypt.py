"""Client-side encryption of integer coefficient vectors (seeded symmetric RLWE, CKKS-style).

For each prime q of the parameters: c1 = a, expanded from a fresh public seed, and
c0 = NTT(m + e) - a ⊙ NTT(s) (mod q), everything in SEAL's NTT domain, so SEAL's Decryptor
recovers m + e (tests check). It is what SEAL's ``encrypt_symmetric`` computes, except that the
message sits in coefficients (not CKKS slots) and the randomness comes from heml.he.prng
(AES-256-CTR), which is several times faster than SEAL's BLAKE2Xb on both sides of the wire.
"""

from __future__ import annotations

import numpy as np

from . import kernels, modmath, prng, wire
from .keys import SecretKey
from .params import HEParams


def encrypt_coefficients(
    key: SecretKey,
    coeffs: np.ndarray,
    shift: int = 0,
    *,
    seeds: list[bytes] | None = None,
    noise_key: bytes | None = None,
) -> list[bytes]:
    """Encrypt each row of an int64 array (rows, N) of message coefficients; wire bytes out.

    With several primes (model-privacy mode) c0 is sent prime by prime. ``shift`` multiplies
    the message (not the noise) by 2^shift modulo q (scales wider than int64). ``seeds`` (one
    per row) and ``noise_key`` fix the randomness; only the known-answer vectors
    (heml._vectors) pass them: a real call must draw both fresh.
    """
    params = key.params
    primes = key.primes
    n = params.n
    coeffs = np.asarray(coeffs, dtype=np.int64).reshape(-1, n)
    if np.any(np.abs(coeffs) >= min(primes) // 4):
        raise ValueError("message coefficients exceed the capacity of the modulus")
    rows = coeffs.shape[0]
    if seeds is None:
        seeds = prng.fresh_seeds(rows)
    elif len(seeds) != rows:
        raise ValueError(f"{rows} rows need {rows} seeds, got {len(seeds)}")
    noise = prng.sample_error((rows, n), key=noise_key)
    a = np.empty((len(primes), rows, n), dtype=np.uint64)  # prime-major: a[j] is contiguous
    for r, seed in enumerate(seeds):
        prng.expand(seed, n, primes, out=a[:, r])
    c0 = np.empty((rows, len(primes), n), dtype=np.uint64)
    for j, q in enumerate(primes):
        ker = kernels.for_params(HEParams(n, q))
        if shift:
            message = modmath._mul_pow2(modmath.reduce_signed(coeffs, q), shift, q)
            plain = modmath.add_mod(message, modmath.lift_small(noise, q), q)
        else:
            plain = modmath.lift_small(coeffs + noise, q)
        a_s = ker.mul_rows(a[j], key.s_ntt[j])
        c0[:, j] = modmath.sub_mod(ker.ntt(plain), a_s, q)
    return wire.pack_ciphertexts(c0.reshape(rows, -1), seeds)
