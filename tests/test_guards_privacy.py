"""Model privacy and reply validation at their bounds (issue 18; docs/testing.md).

Written from the promises in docs/model-privacy.md, docs/protocol.md and the SDK's reply
checks: a degenerate public key p0 (more than 64 small coefficients in any prime) or one with
a word not below its prime is refused; key ids are 64 lowercase hex characters, the SHA-256 of
nonce and p0; a per-key quota above the crafted-ciphertext estimate is refused, one at the cap
is served; a reply value beyond 0.475 q is refused; the client's flooding is uniform on
[-bound, bound) from os.urandom, with bound = 2^FLOOD_BITS times the switch term. Each test
checks both sides of its bound, so it fails when the bound moves either way.
"""

from __future__ import annotations

import hashlib
import math
import struct

import numpy as np
import pytest

from heml.errors import InvalidCiphertext, ModelError
from heml.he import decrypt, kernels
from heml.he.decrypt import RANGE_FRACTION, check_range, flood, uniform_noise
from heml.he.plan import (
    COLUMN,
    FLOOD_BITS,
    NOISE_SIGMAS,
    ROW,
    flood_bound,
    key_noise_bound,
    make_plan,
)
from heml.he.private import (
    KEY_ID_CHARS,
    PublicKeyStore,
    check_private_quota,
    check_public_key_p0,
    default_privacy_params,
    key_id_of,
    make_private_plan,
    max_private_quota,
    valid_key_id,
    weight_equations_needed,
)
from heml.he.scoring import default_layout_params

PARAMS = default_privacy_params()


# ----------------------------------------------------------------------------- reply range
@pytest.mark.parametrize("q", [(1 << 40) + 15, 0x3FFFFFFFFFFFFF])
def test_a_reply_value_beyond_0_475_q_is_refused_and_one_at_it_accepted(q):
    limit = 0.475 * float(q)
    assert RANGE_FRACTION == 0.475
    above = np.nextafter(limit, math.inf)
    # at the limit, on both sides of zero, and ordinary values: accepted
    check_range(np.array([[0.0, limit, -limit, 0.25 * q]]), q)
    for bad in (above, -above, 0.49 * q, -float(q)):
        values = np.array([[0.0, 1.0, bad, -3.0]])
        with pytest.raises(InvalidCiphertext, match=r"^1 decrypted value\(s\) outside"):
            check_range(values, q)
    # every offending value is counted
    with pytest.raises(InvalidCiphertext, match=r"^3 decrypted value\(s\)"):
        check_range(np.array([above, 1.0, -above, q]), q)


# ----------------------------------------------------------------------------- flooding
class FakeUrandom:
    def __init__(self, label: bytes) -> None:
        self.label, self.counter, self.stream = label, 0, b""

    def __call__(self, size: int) -> bytes:
        out = b""
        while len(out) < size:
            out += hashlib.sha256(self.label + self.counter.to_bytes(8, "little")).digest()
            self.counter += 1
        self.stream += out[:size]
        return out[:size]


def test_flooding_is_uniform_on_the_bound_from_os_urandom_only(monkeypatch):
    """Each draw: 8 bytes of os.urandom, little-endian, top 53 bits -> u in [0, 1) ->
    (2u - 1)·bound; numpy's generators play no part."""
    fake = FakeUrandom(b"flood")
    monkeypatch.setattr(decrypt.os, "urandom", fake)
    np.random.seed(1)
    scores = np.arange(6.0).reshape(3, 2) - 2.5
    out = flood(scores, 3.5)
    words = struct.unpack("<6Q", fake.stream)
    expected = [(2.0 * ((w >> 11) / 2.0**53) - 1.0) * 3.5 for w in words]
    assert out.shape == (3, 2)
    assert (out - scores).ravel().tolist() == pytest.approx(expected, rel=0, abs=1e-15)
    np.random.seed(2)
    again = FakeUrandom(b"flood")
    monkeypatch.setattr(decrypt.os, "urandom", again)
    assert np.array_equal(flood(scores, 3.5), out)


def test_flooding_covers_the_whole_interval_and_no_more(monkeypatch):
    """The extreme words give -bound exactly and the largest value below +bound."""
    monkeypatch.setattr(decrypt.os, "urandom", lambda size: b"\0" * 8 + b"\xff" * 8)
    lo, hi = uniform_noise((2,), 2.0)
    assert lo == -2.0
    assert hi == (2.0 * ((2**53 - 1) / 2.0**53) - 1.0) * 2.0 and hi < 2.0
    monkeypatch.undo()
    real = uniform_noise((20000,), 1.0)
    assert real.min() >= -1.0 and real.max() < 1.0
    assert abs(real.mean()) < 0.03 and real.std() == pytest.approx(1 / math.sqrt(3), rel=0.03)


def _plan(layout):
    rng = np.random.default_rng(5)
    W, b = rng.normal(size=(2, 4)), rng.normal(size=2)
    params = default_layout_params()[layout]
    # a wide target forces several digits, so the digit weights 2^(b·t) matter
    return make_plan(W * 1e4, b, np.zeros(4), np.ones(4), layout=layout, params=params,
                     tolerance=1e-4)  # fmt: skip


@pytest.mark.parametrize("layout", [ROW, COLUMN])
def test_the_flood_bound_is_2_to_the_flood_bits_times_the_switch_term(layout):
    """docs: the client floods with 2^FLOOD_BITS times the key-dependent switch term, the 6σ
    bound on the rounding of c1 (half a unit of q/2^reply_bits per word, n + 1 terms) times s,
    summed over the digit weights 2^(b·t), in score units."""
    plan = _plan(layout)
    assert FLOOD_BITS == 2 and NOISE_SIGMAS == 6.0
    n, q, bits = plan.params.n, plan.params.q, plan.reply_bits
    per_word = 0.5 + 2.0 ** (bits - 52)
    weights = sum(2.0 ** (plan.digit_bits * t) for t in range(plan.digits))
    switch = 6.0 * per_word * math.sqrt((n + 1) / 3) * weights * q / 2.0**bits
    switch /= plan.scale_x * plan.scale_w
    assert key_noise_bound(plan) == pytest.approx(switch, rel=1e-12)
    assert flood_bound(plan) == pytest.approx(4 * switch, rel=1e-12)


# ----------------------------------------------------------------------------- keys
def _honest_like_p0(rng, small_counts):
    """p0 words (NTT form) whose coefficients are uniform except for the given number of
    coefficients planted just below q/2^16 (alternately as +c and q - c) in each prime."""
    words = []
    for pp, count in zip(PARAMS.prime_params, small_counts, strict=True):
        coeffs = rng.integers(pp.q >> 15, pp.q - (pp.q >> 15), size=pp.n, dtype=np.uint64)
        c = (pp.q >> 16) - 1
        coeffs[:count] = [c if i % 2 else pp.q - c for i in range(count)]
        words.append(kernels.for_params(pp).ntt(coeffs))
    return np.stack(words).astype(np.uint64)


@pytest.mark.parametrize("prime", [0, 1])
def test_a_p0_with_more_than_64_small_coefficients_in_any_prime_is_refused(prime):
    rng = np.random.default_rng(11 + prime)
    counts = [0, 0]
    counts[prime] = 64
    check_public_key_p0(_honest_like_p0(rng, counts), PARAMS)  # 64: accepted
    counts[prime] = 65
    with pytest.raises(InvalidCiphertext, match=rf"65 of 4096 coefficients modulo prime {prime}"):
        check_public_key_p0(_honest_like_p0(rng, counts), PARAMS)


def test_a_coefficient_at_q_over_2_to_the_16_is_not_small():
    """The small-coefficient test is |c| < q >> 16: 100 coefficients exactly there pass."""
    rng = np.random.default_rng(13)
    words = []
    for pp in PARAMS.prime_params:
        coeffs = rng.integers(pp.q >> 15, pp.q - (pp.q >> 15), size=pp.n, dtype=np.uint64)
        coeffs[:50] = pp.q >> 16
        coeffs[50:100] = pp.q - (pp.q >> 16)
        words.append(kernels.for_params(pp).ntt(coeffs))
    check_public_key_p0(np.stack(words).astype(np.uint64), PARAMS)


@pytest.mark.parametrize("prime", [0, 1])
def test_a_p0_word_equal_to_its_prime_is_refused_and_prime_minus_one_accepted(prime):
    rng = np.random.default_rng(17)
    words = _honest_like_p0(rng, [0, 0])
    q = PARAMS.primes[prime]
    words[prime, 7] = q - 1
    check_public_key_p0(words, PARAMS)
    words[prime, 7] = q
    with pytest.raises(InvalidCiphertext, match="below their primes"):
        check_public_key_p0(words, PARAMS)


def test_key_ids_are_the_sha256_hex_of_nonce_and_p0():
    nonce, p0 = b"n" * 32, b"\x01\x02" * 10
    key_id = key_id_of(nonce, p0)
    assert key_id == hashlib.sha256(nonce + p0).hexdigest() and KEY_ID_CHARS == 64
    assert valid_key_id(key_id)
    assert key_id_of(p0, nonce) != key_id
    for bad in (key_id[:63], key_id + "0", key_id.upper(), "g" + key_id[1:], ""):
        assert not valid_key_id(bad), bad


# ----------------------------------------------------------------------------- quota cap
def _private_plan():
    rng = np.random.default_rng(19)
    return make_private_plan(rng.normal(size=(1, 4)), rng.normal(size=1), np.zeros(4),
                             np.ones(4), tolerance=1e-4)  # fmt: skip


@pytest.mark.parametrize("d", [4, 40])
def test_the_quota_per_key_stays_below_the_crafted_ciphertext_estimate(d):
    """docs/model-privacy.md: each reply gives an equation precise to
    min(log2 Q - log2_flood - 3, reply_bits) bits; d weights of log2_scale_w + 1 bits each
    need d·(log2_scale_w + 1)/bits of them. The cap is one less (rounded up), at least 1."""
    plan = _private_plan()
    bits = min(math.log2(PARAMS.Q) - plan.log2_flood - 3, plan.reply_bits)
    needed = d * (plan.log2_scale_w + 1) / bits
    assert weight_equations_needed(plan, d) == pytest.approx(needed, rel=1e-12)
    cap = max(1, math.ceil(needed) - 1)
    assert max_private_quota(plan, d) == cap and cap < needed
    check_private_quota(plan, d, cap)
    with pytest.raises(ModelError, match=rf"max_predictions_per_key={cap + 1} .*use at most {cap}"):
        check_private_quota(plan, d, cap + 1)


def test_a_keys_own_allowance_grants_up_to_its_limit_and_not_one_more():
    store = PublicKeyStore(PARAMS)
    rng = np.random.default_rng(23)
    words = _honest_like_p0(rng, [0, 0])
    store._install("k", words[:, :], words[:, :], "peer")
    assert store.take("k", 3, 5) is None
    assert store.take("k", 3, 5) == 3  # 6 > 5: refused, the count unchanged
    assert store.take("k", 2, 5) is None  # exactly 5
    assert store.take("k", 1, 5) == 5
    with pytest.raises(KeyError):
        store.take("other", 1, 5)


def test_a_private_plans_noise_bound_uses_the_whole_modulus_and_no_flood():
    """Model-privacy plans have no digits and several primes: the switch term is over Q with
    weight 1, and the client adds no flood of its own (flood_bound is 0)."""
    plan = _private_plan()
    n, bits, Q = PARAMS.n, plan.reply_bits, PARAMS.Q
    switch = 6.0 * (0.5 + 2.0 ** (bits - 52)) * math.sqrt((n + 1) / 3) * Q / 2.0**bits
    switch /= plan.scale_x * plan.scale_w
    assert key_noise_bound(plan) == pytest.approx(switch, rel=1e-12)
    assert flood_bound(plan) == 0.0


def test_refusals_name_what_was_wrong():
    rng = np.random.default_rng(29)
    words = _honest_like_p0(rng, [0, 0])
    words[0, 0] = PARAMS.primes[0]
    with pytest.raises(InvalidCiphertext, match=r"^public key words must be below their primes$"):
        check_public_key_p0(words, PARAMS)
    words = _honest_like_p0(rng, [100, 0])
    with pytest.raises(InvalidCiphertext, match=r"for the p1 expanded from key_nonce \(docs/"):
        check_public_key_p0(words, PARAMS)
    assert not valid_key_id("X" * 64)
    store = PublicKeyStore(PARAMS)
    with pytest.raises(KeyError) as missing:
        store.take("ab" * 32, 1, 5)
    assert missing.value.args == ("ab" * 32,)
