"""Client-side encryption of integer coefficient vectors (seeded symmetric CKKS).

SEAL encrypts zero (c0 = -a·s + e, c1 = a from a fresh seed); heml adds the NTT of the
message polynomial m to c0, which is exactly what SEAL's encrypt_symmetric does with an
encoded plaintext, but lets heml place values in coefficients instead of CKKS slots.
"""

from __future__ import annotations

import numpy as np

from . import kernels, modmath, seal_bridge, wire
from .keys import SecretKey


def encrypt_coefficients(key: SecretKey, coeffs: np.ndarray) -> list[bytes]:
    """Encrypt each row of an int64 array (rows, N) of message coefficients; wire bytes out."""
    params = key.params
    coeffs = np.asarray(coeffs, dtype=np.int64).reshape(-1, params.n)
    limit = params.q // 4
    if np.any(np.abs(coeffs) >= limit):
        raise ValueError("message coefficients exceed the capacity of the modulus")
    m_ntt = kernels.for_params(params).ntt(modmath.reduce_signed(coeffs, params.q))
    encryptor = key.encryptor()
    out = []
    for row in m_ntt:
        c0, seed = seal_bridge.seeded_c0_and_seed(encryptor.encrypt_zero_symmetric(), params.n)
        out.append(wire.pack_ciphertext(modmath.add_mod(c0, row, params.q), seed))
    return out
