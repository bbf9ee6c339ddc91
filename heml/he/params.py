"""CKKS parameter sets: a ring degree N and one NTT-friendly prime q, 128-bit secure.

Every heml layout works at one modulus level (no rescaling), so one prime suffices. The
security check is SEAL's HE-standard table for a ternary secret and σ ≈ 3.2 error (the same
table SEAL enforces when a context is created): log2(q) ≤ 54 bits at N = 2048, 109 at N = 4096.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import tenseal.sealapi as seal

from ..errors import ParameterError

# SEAL's tc128 limits on the total coefficient-modulus bits (hestdparms.h).
MAX_MODULUS_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
SUPPORTED_DEGREES = (2048, 4096)
PRIME_BITS = 54  # one prime; the largest that is 128-bit secure at N = 2048
SEED_PRNG = "aes256ctr"  # heml.he.prng; clients refuse parameters naming another
ERROR_STDDEV = math.sqrt(10.5)  # centered binomial, 21 + 21 coins (heml.he.prng), as SEAL 4.x
ERROR_MAX = 21  # |e| ≤ 21


@dataclass(frozen=True)
class HEParams:
    """Ring degree ``n`` and prime modulus ``q`` (one level, symmetric CKKS, no eval keys)."""

    n: int
    q: int

    def __post_init__(self) -> None:
        check_params(self.n, self.q)

    @property
    def q_bits(self) -> int:
        return self.q.bit_length()

    @property
    def context(self) -> seal.SEALContext:
        return _context(self.n, self.q)

    @property
    def parms_id(self) -> tuple[int, ...]:
        return tuple(self.context.first_parms_id())

    def to_dict(self) -> dict:
        return {"scheme": "CKKS", "n": self.n, "q": self.q, "security_bits": 128}


@functools.lru_cache(maxsize=64)
def check_params(n: int, q: int) -> None:
    """Raise ParameterError unless (n, q) is one of heml's 128-bit-secure parameter sets."""
    if n not in SUPPORTED_DEGREES:
        raise ParameterError(f"ring degree N={n} is not supported (use one of {SUPPORTED_DEGREES})")
    if not isinstance(q, int) or q < 3:
        raise ParameterError(f"modulus must be an integer prime, got {q!r}")
    limit = MAX_MODULUS_BITS_128[n]
    if q.bit_length() > min(limit, 60):
        raise ParameterError(
            f"modulus of {q.bit_length()} bits is not 128-bit secure at N={n} "
            f"(max {min(limit, 60)})"
        )
    if q % (2 * n) != 1:
        raise ParameterError(f"modulus {q} is not 1 mod 2N={2 * n} (no negacyclic NTT)")
    if not _is_prime(q):
        raise ParameterError(f"modulus {q} is not prime")


@functools.lru_cache(maxsize=8)
def _context(n: int, q: int) -> seal.SEALContext:
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(n)
    parms.set_coeff_modulus([seal.Modulus(q)])
    ctx = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    if not ctx.parameters_set():
        raise ParameterError(f"SEAL rejects N={n}, q={q}: {ctx.parameters_error_message()}")
    return ctx


@functools.lru_cache(maxsize=8)
def default_params(n: int) -> HEParams:
    """heml's parameter set for ring degree n: the largest 54-bit prime that is 1 mod 2n."""
    (modulus,) = seal.CoeffModulus.Create(n, [PRIME_BITS])
    return HEParams(n, int(modulus.value()))


def _is_prime(q: int) -> bool:
    """SEAL's primality test of q < 2^61 (Miller-Rabin with 40 random bases: a composite
    passes with probability at most 4^-40). A reviewed library's test instead of our own: a
    fixed set of bases is deterministic only up to a bound that no test can show, so breaking
    one base of a hand-written one went unnoticed (docs/testing.md)."""
    if not 2 <= q < 1 << 61:
        raise ValueError(f"the primality test takes 2 <= q < 2^61, got {q}")
    return bool(seal.Modulus(q).is_prime())
