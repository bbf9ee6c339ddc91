"""Client-side encryption of integer coefficient vectors (seeded symmetric CKKS).

SEAL encrypts zero (c0 = -a·s + e, c1 = a from a fresh seed); heml adds the NTT of the
message polynomial m to c0, which is exactly what SEAL's encrypt_symmetric does with an
encoded plaintext, but lets heml place values in coefficients instead of CKKS slots.
"""

from __future__ import annotations

import numpy as np

from . import kernels, modmath, seal_bridge, wire
from .keys import SecretKey
from .params import HEParams


def encrypt_coefficients(key: SecretKey, coeffs: np.ndarray, shift: int = 0) -> list[bytes]:
    """Encrypt each row of an int64 array (rows, N) of message coefficients; wire bytes out.

    With several primes (model-privacy mode) the ciphertext is encrypted at SEAL's key level
    (all primes) and c0 is sent prime by prime. ``shift`` multiplies the message by 2^shift
    modulo q (scales wider than int64, used by the model-privacy mode).
    """
    params = key.params
    primes = key.primes
    coeffs = np.asarray(coeffs, dtype=np.int64).reshape(-1, params.n)
    if np.any(np.abs(coeffs) >= min(primes) // 4):
        raise ValueError("message coefficients exceed the capacity of the modulus")
    m_ntt = [
        kernels.for_params(HEParams(params.n, q)).ntt(
            modmath._mul_pow2(modmath.reduce_signed(coeffs, q), shift, q)
        )
        for q in primes
    ]
    encryptor = key.encryptor()
    out = []
    for r in range(coeffs.shape[0]):
        if len(primes) == 1:
            ser = encryptor.encrypt_zero_symmetric()
        else:
            ser = encryptor.encrypt_zero_symmetric(params.key_parms_id)
        c0, seed = seal_bridge.seeded_c0_and_seed(ser, params.n, len(primes))
        c0 = c0.reshape(len(primes), params.n)
        for i, q in enumerate(primes):
            c0[i] = modmath.add_mod(c0[i], m_ntt[i][r], q)
        out.append(wire.pack_ciphertext(c0.reshape(-1), seed))
    return out
