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
    # unshifted, the coefficients are the message and must leave room (|m| < q/4); shifted
    # (model-privacy scales above 2^52: |z| ≤ 1 encodes to |m| ≤ 2^52, exactly 2^52 at the
    # bounds) they need only reduce below the smallest prime: the plan checks capacity on Q
    limit = min(primes) // (2 if shift else 4)
    if np.any(np.abs(coeffs) >= limit):
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


def public_key_p0(key: SecretKey, nonce: bytes) -> bytes:
    """Model-privacy mode: the half of the public key the client uploads, as wire bytes.

    p0 = NTT(e) − p1 ⊙ NTT(s) modulo each prime, for the p1 both sides expand from ``nonce``
    (heml.he.private.key_p1): the same computation as an encryption of zero whose public
    polynomial the client did not choose. L·N 7-byte words, prime by prime."""
    from .private import key_p1

    params = key.params
    n = params.n
    p1 = key_p1(nonce, params)
    noise = prng.sample_error((n,))
    p0 = np.empty((len(key.primes), n), dtype=np.uint64)
    for j, q in enumerate(key.primes):
        ker = kernels.for_params(HEParams(n, q))
        p1_s = ker.mul_rows(p1[j][None, :], key.s_ntt[j])[0]
        p0[j] = modmath.sub_mod(ker.ntt(modmath.lift_small(noise, q)), p1_s, q)
    return wire.pack_words(p0, wire.C0_WORD_BYTES)
