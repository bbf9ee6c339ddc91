"""heml.he.params: the primality test and the parameter check at their edges.

check_params is cached (functools.lru_cache) and the default sets are built when test modules
are imported, so these tests call the uncached check (``check_params.__wrapped__``) and the
primality test directly (docs/testing.md: mutation testing).
"""

from __future__ import annotations

import pytest

from heml.errors import ParameterError
from heml.he.params import _is_prime, check_params, default_params

LIMIT = 20_000


def _sieve(limit: int) -> list[bool]:
    prime = [False, False] + [True] * (limit - 2)
    for p in range(2, int(limit**0.5) + 1):
        if prime[p]:
            prime[p * p :: p] = [False] * len(prime[p * p :: p])
    return prime


def test_the_primality_test_agrees_with_a_sieve():
    prime = _sieve(LIMIT)
    wrong = [q for q in range(3, LIMIT) if _is_prime(q) != prime[q]]
    assert wrong == []


# strong pseudoprimes to several of the first prime bases, and Carmichael numbers
HARD_COMPOSITES = [
    561,
    1105,
    1729,
    2047,  # base 2
    1373653,  # bases 2, 3
    25326001,  # bases 2, 3, 5
    3215031751,  # bases 2, 3, 5, 7
    2152302898747,  # bases 2 .. 11
    3474749660383,  # bases 2 .. 13
    341550071728321,  # bases 2 .. 17
    (2**27 - 39) * (2**27 - 57),  # two 27-bit primes: a 54-bit semiprime
]
LARGE_PRIMES = [
    2**31 - 1,
    2**61 - 1,
    default_params(2048).q,
    default_params(4096).q,
    2**54 - 33,
]


@pytest.mark.parametrize("q", HARD_COMPOSITES)
def test_hard_composites_are_not_prime(q):
    assert not _is_prime(q)


@pytest.mark.parametrize("q", LARGE_PRIMES)
def test_large_primes_are_prime(q):
    assert _is_prime(q)


def test_check_params_at_each_bound():
    check = check_params.__wrapped__  # uncached
    q = default_params(2048).q
    assert check(2048, q) is None
    assert check(4096, default_params(4096).q) is None
    with pytest.raises(
        ParameterError, match=r"N=1024 is not supported \(use one of \(2048, 4096\)"
    ):
        check(1024, q)
    with pytest.raises(ParameterError, match="modulus must be an integer prime, got 2"):
        check(2048, 2)
    with pytest.raises(ParameterError, match="got 4097.0"):
        check(2048, 4097.0)
    assert check(2048, 12289) is None  # 3 ≤ a 14-bit prime that is 1 mod 4096
    # 55 bits at N = 2048 (limit 54); 61 bits at N = 4096 (limit min(109, 60))
    with pytest.raises(ParameterError, match=r"55 bits is not 128-bit secure at N=2048 \(max 54\)"):
        check(2048, (1 << 54) + 4097)
    with pytest.raises(ParameterError, match=r"61 bits is not 128-bit secure at N=4096 \(max 60\)"):
        check(4096, (1 << 60) + 8193)
    with pytest.raises(ParameterError, match="not 1 mod 2N=4096"):
        check(2048, q + 2)
    with pytest.raises(ParameterError, match="modulus 8193 is not prime"):
        check(4096, 8193)  # 1 mod 8192, 3 · 2731


def test_params_describe_themselves():
    p = default_params(2048)
    assert p.to_dict() == {"scheme": "CKKS", "n": 2048, "q": p.q, "security_bits": 128}
    assert p.q_bits == p.q.bit_length() == 54
    assert p.q % 4096 == 1 and _is_prime(p.q)


def test_the_primality_test_refuses_to_answer_beyond_61_bits():
    """3825123056546413051, a strong pseudoprime to every prime base up to 23, is 62 bits:
    check_params refuses it by its size before any primality test runs."""
    assert _is_prime(2) and _is_prime(2**61 - 1)
    for q in (2**61, 3825123056546413051, 318665857834031151167461, 0, 1):
        with pytest.raises(ValueError):
            _is_prime(q)
    with pytest.raises(ParameterError, match="62 bits is not 128-bit secure"):
        check_params.__wrapped__(4096, 3825123056546413051)
