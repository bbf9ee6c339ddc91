"""The model-privacy key registry's memory bound and fair eviction (heml.he.private.PublicKeyStore,
docs/model-privacy.md "The key registry"), checked directly on real SEAL keys.

* at most 64 MiB of keys (170 at N = 4096 with two primes: (p0, p1) and SEAL's copies, three
  times 2·8·N·L bytes per key) and at most 8 per identity;
* an identity over its cap loses its own least recently used key;
* a full store drops the least recently used key of the identity holding the most keys; among
  identities holding equally many, the one least recently active (registering or predicting);
* registering the same (nonce, p0) again is idempotent and counts as activity; an unknown id
  keeps nothing; a key's lifetime count goes with it when it is evicted.
"""

from __future__ import annotations

import numpy as np
import pytest

from heml.errors import InvalidCiphertext
from heml.he import kernels, wire
from heml.he.private import (
    MAX_KEYS_PER_IDENTITY,
    PublicKeyStore,
    default_privacy_params,
    key_id_of,
    public_key_size,
)

PARAMS = default_privacy_params()
PER_KEY = 3 * 2 * 8 * PARAMS.n * len(PARAMS.primes)


def _p0_words(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    words = []
    for pp in PARAMS.prime_params:
        coeffs = rng.integers(pp.q >> 15, pp.q - (pp.q >> 15), size=pp.n, dtype=np.uint64)
        words.append(kernels.for_params(pp).ntt(coeffs))
    return np.stack(words).astype(np.uint64)


_WORDS = _p0_words(1)


def _fill(store: PublicKeyStore, names, identity: str) -> None:
    for name in names:
        store.install_checked(name, _WORDS, _WORDS, identity)


def _kept(store: PublicKeyStore, names) -> list[str]:
    return [n for n in names if n in store]


def test_the_default_budget_is_64_mib_or_170_keys():
    assert PublicKeyStore(PARAMS).capacity == (64 << 20) // PER_KEY == 170
    assert PublicKeyStore(PARAMS, budget_bytes=3 * PER_KEY).capacity == 3
    assert PublicKeyStore(PARAMS, budget_bytes=3 * PER_KEY - 1).capacity == 2
    assert PublicKeyStore(PARAMS, budget_bytes=0).capacity == 1  # never zero keys
    assert PublicKeyStore(PARAMS).per_identity == MAX_KEYS_PER_IDENTITY == 8


def test_a_full_store_keeps_exactly_its_capacity():
    store = PublicKeyStore(PARAMS, budget_bytes=3 * PER_KEY, per_identity=10)
    names = [f"k{i}" for i in range(5)]
    _fill(store, names, "a")
    assert len(store) == 3
    assert _kept(store, names) == ["k2", "k3", "k4"]  # least recently used out first


def test_an_identity_over_its_cap_loses_its_own_least_recently_used_key():
    store = PublicKeyStore(PARAMS)
    mine = [f"a{i}" for i in range(MAX_KEYS_PER_IDENTITY)]
    _fill(store, mine, "a")
    _fill(store, ["b0"], "b")
    assert store.encryptor("a0") is not None  # a0 used: a1 is now a's least recently used
    _fill(store, ["a8"], "a")
    assert len(store) == MAX_KEYS_PER_IDENTITY + 1
    assert "a1" not in store and "a0" in store and "a8" in store and "b0" in store
    _fill(store, ["a9"], "a")
    assert "a2" not in store and "b0" in store


def test_a_full_store_evicts_from_the_identity_holding_the_most_keys():
    store = PublicKeyStore(PARAMS, budget_bytes=5 * PER_KEY)
    _fill(store, ["b0"], "b")
    _fill(store, ["a0", "a1", "a2"], "a")
    _fill(store, ["c0"], "c")  # full: b 1, a 3, c 1
    _fill(store, ["d0"], "d")  # a holds the most: its least recently used key goes
    assert _kept(store, ["b0", "a0", "a1", "a2", "c0", "d0"]) == ["b0", "a1", "a2", "c0", "d0"]
    _fill(store, ["e0"], "e")  # a still holds the most (2)
    assert _kept(store, ["a1", "a2"]) == ["a2"]
    assert len(store) == 5


def test_among_equal_holders_the_least_recently_active_identity_loses_a_key():
    store = PublicKeyStore(PARAMS, budget_bytes=3 * PER_KEY)
    _fill(store, ["a0"], "a")
    _fill(store, ["b0"], "b")
    _fill(store, ["c0"], "c")
    assert store.encryptor("a0") is not None  # a predicts: b is now the least recently active
    _fill(store, ["d0"], "d")
    assert _kept(store, ["a0", "b0", "c0", "d0"]) == ["a0", "c0", "d0"]
    # registering the same key again is activity too
    _fill(store, ["c0"], "c")
    _fill(store, ["e0"], "e")
    assert _kept(store, ["a0", "c0", "d0", "e0"]) == ["c0", "d0", "e0"]


def test_register_validates_is_idempotent_and_counts_as_activity():
    store = PublicKeyStore(PARAMS, budget_bytes=2 * PER_KEY)
    p0 = wire.pack_words(_WORDS.reshape(-1), wire.C0_WORD_BYTES)
    assert len(p0) == public_key_size(PARAMS)
    first = store.register(b"\x01" * 32, p0, "a")
    assert first == key_id_of(b"\x01" * 32, p0)
    second = store.register(b"\x02" * 32, p0, "b")
    assert store.register(b"\x01" * 32, p0, "a") == first and len(store) == 2
    store.register(b"\x03" * 32, p0, "c")  # full: b (least recently active) loses its key
    assert first in store and second not in store
    with pytest.raises(InvalidCiphertext):
        store.register(b"\x04" * 32, p0[:-1], "d")
    bad = _WORDS.copy()
    bad[1, 5] = PARAMS.primes[1]
    with pytest.raises(InvalidCiphertext):
        store.register(b"\x04" * 32, wire.pack_words(bad.reshape(-1), wire.C0_WORD_BYTES), "d")
    assert len(store) == 2


def test_an_unknown_key_keeps_nothing_and_an_evicted_key_takes_its_count():
    store = PublicKeyStore(PARAMS, budget_bytes=1 * PER_KEY)
    assert store.encryptor("nope") is None and "nope" not in store and len(store) == 0
    with pytest.raises(KeyError):
        store.take("nope", 1, 5)
    assert len(store) == 0
    _fill(store, ["a0"], "a")
    assert store.take("a0", 4, 5) is None
    _fill(store, ["b0"], "b")
    assert "a0" not in store
    _fill(store, ["a0"], "a")  # back as a new key: a fresh allowance
    assert store.take("a0", 5, 5) is None
    assert store.take("a0", 1, 5) == 5
