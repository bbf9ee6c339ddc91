"""heml.he.prng and heml.he.encrypt against independent references (issue 18, second round).

Each promise of the two modules (docs/protocol.md, the module docstrings) is checked against a
reference written here from the document, not from the code: the keystream is AES-256 applied
to counter blocks 0, 1, 2, … (ECB over big-endian counters); the public polynomial a is the
keystream's little-endian words, masked to bit_length(q) bits, with rejected words replaced in
order by accepted words after the first L·N; the error is popcount(low 21 bits) −
popcount(next 21 bits) of each word; an encryption decrypts, under the reference NTT in
heml.he.modmath, to exactly m·2^shift + e. Randomness that must be fresh is traced to
``os.urandom`` by patching it with known bytes.
"""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from heml.he import modmath, prng, wire
from heml.he.encrypt import encrypt_coefficients, public_key_p0
from heml.he.keys import SecretKey
from heml.he.params import HEParams, default_params

from .guard_support import replay_urandom

P2048 = default_params(2048)
KEY = bytes(range(32))


def _aes_ctr_reference(key: bytes, nbytes: int) -> bytes:
    """AES-256 of the big-endian counter blocks 0, 1, 2, … (CTR mode written out by hand)."""
    blocks = -(-nbytes // 16)
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    counters = b"".join(i.to_bytes(16, "big") for i in range(blocks))
    return (enc.update(counters) + enc.finalize())[:nbytes]


def _words(key: bytes, count: int) -> list[int]:
    raw = _aes_ctr_reference(key, 8 * count)
    return [int.from_bytes(raw[8 * i : 8 * i + 8], "little") for i in range(count)]


def _expand_reference(seed: bytes, n: int, primes: list[int]) -> list[list[int]]:
    words = _words(seed, 64 * n * len(primes) + 4096)
    pos = n * len(primes)
    out = []
    for j, q in enumerate(primes):
        mask = (1 << q.bit_length()) - 1
        row = []
        for w in words[j * n : (j + 1) * n]:
            w &= mask
            while w >= q:  # replaced by the next accepted word after the first L·N
                w = words[pos] & mask
                pos += 1
            row.append(w)
        out.append(row)
    return out


# ---------------------------------------------------------------------- keystream
@pytest.mark.parametrize("nbytes", [0, 1, 16, 33, 8 * 100 + 5])
def test_the_keystream_is_aes256_ctr_from_counter_zero(nbytes):
    assert prng.keystream(KEY, nbytes) == _aes_ctr_reference(KEY, nbytes)
    other = bytes(31) + b"\1"
    assert prng.keystream(other, 64) == _aes_ctr_reference(other, 64) != prng.keystream(KEY, 64)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_keys_and_seeds_must_be_32_bytes(size):
    with pytest.raises(ValueError, match=f"^keys and seeds are 32 bytes, got {size}$"):
        prng.keystream(bytes(size), 16)


# ---------------------------------------------------------------------- public polynomial a
def test_a_is_the_masked_keystream_for_heml_primes():
    seed = bytes(range(100, 132))
    a = prng.expand(seed, P2048.n, (P2048.q,))
    assert a.dtype == np.uint64 and a.shape == (1, P2048.n)
    assert a[0].tolist() == _expand_reference(seed, P2048.n, [P2048.q])[0]
    one = prng.expand_seed(seed, P2048.n, P2048.q)
    np.testing.assert_array_equal(one, a[0])
    out = np.zeros(P2048.n, dtype=np.uint64)
    prng.expand_seed(seed, P2048.n, P2048.q, out=out)
    np.testing.assert_array_equal(out, a[0])


@pytest.mark.parametrize(
    "primes",
    [
        [12289],  # 14 bits: a quarter of the words are rejected
        [8193, 12289],  # 14 bits, half rejected: the 64 spare words run out, the stream grows
        [97, 12289, 8193],
        [3, 12289],  # 2 bits: a quarter of the words (and of the replacements) equal q
    ],
)
def test_rejected_words_are_replaced_in_order_after_the_first_l_n(primes):
    """With small moduli many words are rejected: every replacement follows the document, row
    by row in order, including the stream's extension when the spare words run out."""
    n, seed = 256, bytes(range(7, 39))
    out = np.full((len(primes), n), 12345678, dtype=np.uint64)
    got = prng.expand(seed, n, tuple(primes), out=out)
    assert got is out
    assert got.tolist() == _expand_reference(seed, n, primes)
    for j, q in enumerate(primes):
        assert int(got[j].max()) < q


def test_fresh_seeds_are_os_urandom_split_in_32_byte_seeds(monkeypatch):
    calls = []

    def fake(k: int) -> bytes:
        calls.append(k)
        return bytes(i % 251 for i in range(k))

    monkeypatch.setattr(prng.os, "urandom", fake)
    seeds = prng.fresh_seeds(3)
    raw = fake(96)
    assert calls[0] == 96
    assert seeds == [raw[0:32], raw[32:64], raw[64:96]]
    assert prng.fresh_seeds(0) == []


# ---------------------------------------------------------------------- error e
def _error_reference(key: bytes, count: int) -> list[int]:
    half = (1 << 21) - 1
    return [bin(w & half).count("1") - bin((w >> 21) & half).count("1") for w in _words(key, count)]


def test_the_error_is_the_centered_binomial_of_the_keystream_coins():
    e = prng.sample_error((3, 64), key=KEY)
    assert e.shape == (3, 64) and e.dtype == np.int64
    assert e.reshape(-1).tolist() == _error_reference(KEY, 192)
    assert int(np.abs(e).max()) <= 21
    # the bits above the 42 coins are ignored: words of all ones give 21 − 21 = 0 (and a word
    # with only the low 21 coins set gives +21, only the high ones −21)
    assert prng.ERROR_COINS == 21


def test_the_error_extremes_are_plus_and_minus_21(monkeypatch):
    """Coins straight from chosen words: all 42 coins of the low half give +21, of the high
    half −21, bits 42..63 count for nothing."""
    words = np.array([(1 << 21) - 1, ((1 << 21) - 1) << 21, ~np.uint64(0), 1 << 42], "<u8")
    monkeypatch.setattr(prng, "keystream", lambda key, nbytes: words.tobytes()[:nbytes])
    assert prng.sample_error((4,), key=KEY).tolist() == [21, -21, 0, 0]


def test_the_error_key_comes_from_os_urandom_when_not_given(monkeypatch):
    drawn = []

    def fake(k: int) -> bytes:
        drawn.append(k)
        return bytes(range(50, 50 + k))

    monkeypatch.setattr(prng.os, "urandom", fake)
    e = prng.sample_error((2, 32))
    assert drawn == [32]
    assert e.reshape(-1).tolist() == _error_reference(bytes(range(50, 82)), 64)


# ---------------------------------------------------------------------- encryption
@pytest.fixture(scope="module")
def key() -> SecretKey:
    return SecretKey.generate(P2048)


def _decrypt_reference(key: SecretKey, blob: bytes, prime_index: int = 0) -> list[int]:
    """m + e from one prime's c0 and a (from the seed): INTT(c0 + a ⊙ NTT(s)), centered, with
    the reference NTT and exact integers."""
    n, q = key.params.n, key.primes[prime_index]
    words = wire.unpack_words(blob, n * len(key.primes), wire.C0_WORD_BYTES)
    c0 = words[prime_index * n : (prime_index + 1) * n]
    seed = blob[-prng.SEED_BYTES :]
    a = _expand_reference(seed, n, list(key.primes))[prime_index]
    ref = modmath.reference_ntt(n, q)
    s_ntt = ref.forward(np.array([int(v) % q for v in key.s], dtype=np.uint64)).tolist()
    plain = [(int(c) + ai * si) % q for c, ai, si in zip(c0.tolist(), a, s_ntt, strict=True)]
    coeffs = ref.inverse(np.array(plain, dtype=np.uint64)).tolist()
    return [c - q if c > q // 2 else c for c in coeffs]


def test_an_encryption_decrypts_to_exactly_message_plus_the_documented_noise(key):
    n, q = P2048.n, P2048.q
    rng = np.random.default_rng(5)
    m = rng.integers(-(q // 4) + 1, q // 4, size=(2, n), dtype=np.int64)
    seeds = [bytes([1]) * 32, bytes([2]) * 32]
    blobs = encrypt_coefficients(key, m, seeds=seeds, noise_key=KEY)
    e = np.array(_error_reference(KEY, 2 * n)).reshape(2, n)
    assert len(blobs) == 2
    for r in range(2):
        assert len(blobs[r]) == wire.ciphertext_size(n) and blobs[r][-32:] == seeds[r]
        assert _decrypt_reference(key, blobs[r]) == (m[r] + e[r]).tolist()


def test_a_shifted_encryption_multiplies_the_message_not_the_noise(key):
    n, q = P2048.n, P2048.q
    shift = 20
    m = np.zeros((1, n), dtype=np.int64)
    m[0, :4] = [1, -1, 3, (q // 2) - 1]
    (blob,) = encrypt_coefficients(key, m, shift, seeds=[bytes(32)], noise_key=KEY)
    e = _error_reference(KEY, n)
    want = [((int(v) << shift) + ei) % q for v, ei in zip(m[0], e, strict=True)]
    want = [w - q if w > q // 2 else w for w in want]
    assert _decrypt_reference(key, blob) == want


@pytest.mark.parametrize("q", [P2048.q, 12289], ids=["54-bit", "14-bit"])
def test_the_message_capacity_is_a_quarter_of_q_unshifted_and_half_shifted(key, q):
    """|m| < q // 4 (shifted: q // 2), in exact integers (a 14-bit prime shows a limit of
    q / 4 = 3072.25 instead of 3072)."""
    if q != P2048.q:
        key = SecretKey.generate(HEParams(2048, q))
    n = P2048.n
    for limit, shift in ((q // 4, 0), (q // 2, 3)):
        ok = np.zeros((1, n), dtype=np.int64)
        ok[0, 0], ok[0, 1] = limit - 1, -(limit - 1)
        encrypt_coefficients(key, ok, shift, seeds=[bytes(32)], noise_key=KEY)
        for v in (limit, -limit):
            bad = np.zeros((1, n), dtype=np.int64)
            bad[0, 5] = v
            with pytest.raises(
                ValueError, match="^message coefficients exceed the capacity of the modulus$"
            ):
                encrypt_coefficients(key, bad, shift, seeds=[bytes(32)], noise_key=KEY)


def test_one_seed_per_row_or_a_refusal(key):
    m = np.zeros((3, P2048.n), dtype=np.int64)
    for seeds in ([bytes(32)] * 2, [bytes(32)] * 4):
        with pytest.raises(ValueError, match=f"^3 rows need 3 seeds, got {len(seeds)}$"):
            encrypt_coefficients(key, m, seeds=seeds)


def test_a_real_encryption_draws_its_seeds_and_noise_key_from_os_urandom(key, monkeypatch):
    stream = iter(range(1, 1 << 20))
    drawn = []

    def fake(k: int) -> bytes:
        out = bytes(next(stream) % 256 for _ in range(k))
        drawn.append(out)
        return out

    monkeypatch.setattr(prng.os, "urandom", fake)
    m = np.zeros((2, P2048.n), dtype=np.int64)
    blobs = encrypt_coefficients(key, m)
    seeds_raw, noise_key = drawn[0], drawn[1]
    assert [len(d) for d in drawn] == [64, 32]
    assert [b[-32:] for b in blobs] == [seeds_raw[:32], seeds_raw[32:]]
    e = np.array(_error_reference(noise_key, 2 * P2048.n)).reshape(2, -1)
    for r in range(2):
        assert _decrypt_reference(key, blobs[r]) == e[r].tolist()


def test_a_multi_prime_encryption_sends_c0_prime_by_prime():
    from heml.he.private import default_privacy_params

    params = default_privacy_params()
    key = SecretKey.generate(params)
    n = params.n
    m = np.zeros((1, n), dtype=np.int64)
    m[0, :3] = [5, -7, 1 << 40]
    (blob,) = encrypt_coefficients(key, m, 12, seeds=[bytes(range(32))], noise_key=KEY)
    assert len(blob) == wire.C0_WORD_BYTES * n * 2 + prng.SEED_BYTES
    e = _error_reference(KEY, n)
    for j, q in enumerate(params.primes):
        want = [((int(v) << 12) + ei) % q for v, ei in zip(m[0], e, strict=True)]
        want = [w - q if w > q // 2 else w for w in want]
        assert _decrypt_reference(key, blob, j) == want


def test_public_key_p0_is_an_encryption_of_small_noise_under_the_nonce_p1(monkeypatch):
    from heml.he.private import default_privacy_params, key_p1

    params = default_privacy_params()
    key = SecretKey.generate(params)
    noise = bytes(range(9, 41))
    monkeypatch.setattr(prng.os, "urandom", lambda k: noise[:k])
    nonce = bytes(32)
    blob = public_key_p0(key, nonce)
    n = params.n
    assert len(blob) == wire.C0_WORD_BYTES * n * len(params.primes)
    p0 = wire.unpack_words(blob, n * 2, wire.C0_WORD_BYTES).reshape(2, n)
    p1 = key_p1(nonce, params)
    e = _error_reference(noise, n)
    for j, q in enumerate(params.primes):
        ref = modmath.reference_ntt(n, q)
        s_ntt = ref.forward(np.array([int(v) % q for v in key.s], dtype=np.uint64)).tolist()
        plain = [
            (int(a) + int(b) * s) % q
            for a, b, s in zip(p0[j].tolist(), p1[j].tolist(), s_ntt, strict=True)
        ]
        got = [c - q if c > q // 2 else c for c in ref.inverse(np.array(plain, np.uint64)).tolist()]
        assert got == e


# ---------------------------------------------------------------------- primality
# ---------------------------------------------------------------------- model privacy
def test_the_private_quota_unit_is_every_slot_a_block_computes():
    """PrivateEvaluator.computed_samples (the quota unit): ⌈n / s⌉ sample groups of N // m
    slots each (m = features per chunk), as ServerScorer's; never fewer than n."""
    from heml.he.plan import normalized_weights
    from heml.he.private import PRIVATE, PrivateEvaluator, make_private_plan

    rng = np.random.default_rng(2)
    d, k = 5, 2
    W, b = rng.normal(size=(k, d)), rng.normal(size=k)
    center, hw = np.zeros(d), np.ones(d)
    plan = make_private_plan(W, b, center, hw, tolerance=1e-4)
    ev = PrivateEvaluator(plan, *normalized_weights(W, b, center, hw))
    n_ring = plan.params.n
    for n, s in ((1, 1), (5, 2), (7, 7), (8, 3), (700, 512)):
        m = ev.geometry(s).m
        want = -(-n // s) * (n_ring // m)
        got = ev.computed_samples(PRIVATE, n, s)
        assert got == want and isinstance(got, int) and got >= n


def test_the_private_weight_grid_is_the_coarsest_within_an_eighth_of_the_tolerance():
    """docs (heml.he.private): rounding a weight costs ≤ 2^-(ew+1), a row's L1 error is
    ≤ d·2^-(ew+1) ≤ tolerance/8, with the coarsest such grid (ew ≥ 0); beyond 40 bits the
    model is refused."""
    from heml.errors import ModelError
    from heml.he.private import make_private_plan

    rng = np.random.default_rng(4)
    d = 5
    W, b = rng.normal(size=(1, d)) * 0.1, np.array([0.1])
    center, hw = np.zeros(d), np.ones(d)
    for tol in (4 * d / 2**17, 4 * d / 2**17 * 1.01, 1e-3, 3e-2, 8 * d):
        ew = make_private_plan(W, b, center, hw, tolerance=tol).log2_scale_w
        assert d * 2.0 ** -(ew + 1) <= tol / 8  # fine enough
        assert ew == 0 or tol / 8 < d * 2.0**-ew  # and the coarsest that is (ew ≥ 0)
        assert (ew == 0) == (tol == 8 * d)
    for tol in (4 * d / 2**40, 4 * d / 2**41):
        refused = None
        try:
            make_private_plan(W, b, center, hw, tolerance=tol)
        except ModelError as exc:
            refused = str(exc)
        quantize_refusal = "cannot quantize the weights finely enough for model privacy"
        assert (refused == quantize_refusal) == (tol < 4 * d / 2**40)


@pytest.mark.parametrize("unit", [0.0, 1.0])
def test_the_flood_is_sized_by_the_norm_bound_rounded_up_to_a_power_of_two(unit):
    """σ_flood = 2^(HIDING_BITS + ⌈log2(TAIL · σ_e · 2^⌈log2 max(1, ‖Wq‖₂)⌉)⌉): a model whose
    quantized weights have norm 0 or 1 has the norm bound 1."""
    import math

    from heml.he.params import ERROR_STDDEV
    from heml.he.private import HIDING_BITS, TAIL_SIGMAS, make_private_plan

    d = 4
    W = np.zeros((1, d))
    plan = make_private_plan(W, np.array([0.0]), np.zeros(d), np.ones(d), tolerance=1e-4)
    if unit:  # one weight of exactly one grid step: ‖Wq‖₂ = 1
        W[0, 0] = 2.0**-plan.log2_scale_w
        plan = make_private_plan(W, np.array([0.0]), np.zeros(d), np.ones(d), tolerance=1e-4)
    want = HIDING_BITS + math.ceil(math.log2(TAIL_SIGMAS * ERROR_STDDEV))
    assert plan.log2_flood == want


def test_private_ciphertexts_are_checked_prime_by_prime_at_the_modulus():
    """Each c0 word must be below its own prime: q − 1 passes, q is refused, in any prime
    and any ciphertext of an upload; sizes are exact."""
    from heml.errors import InvalidCiphertext
    from heml.he.private import ciphertext_size, default_privacy_params, unpack_rns_ciphertexts

    params = default_privacy_params()
    n, primes = params.n, params.primes
    rng = np.random.default_rng(8)

    def blob(c0: np.ndarray, seed: bytes) -> bytes:
        return wire.pack_words(c0.reshape(-1), wire.C0_WORD_BYTES) + seed

    words = [
        np.stack([rng.integers(0, q, size=n, dtype=np.uint64) for q in primes]) for _ in range(2)
    ]
    for w in words:
        for i, q in enumerate(primes):
            w[i, 7] = q - 1
    seeds = [bytes([1]) * 32, bytes([2]) * 32]
    c0, got_seeds = unpack_rns_ciphertexts(
        [blob(w, s) for w, s in zip(words, seeds, strict=True)], params
    )
    np.testing.assert_array_equal(c0, np.stack(words))
    assert got_seeds == seeds
    for which in range(2):
        for i, q in enumerate(primes):
            bad = [w.copy() for w in words]
            bad[which][i, 3] = q
            with pytest.raises(
                InvalidCiphertext, match="^ciphertext coefficients must be below their primes$"
            ):
                unpack_rns_ciphertexts(
                    [blob(w, s) for w, s in zip(bad, seeds, strict=True)], params
                )
    size = ciphertext_size(params)
    with pytest.raises(
        InvalidCiphertext,
        match=f"^ciphertext 1 has {size - 1} bytes; the privacy parameters need exactly {size}$",
    ):
        unpack_rns_ciphertexts([blob(words[0], seeds[0]), blob(words[1], seeds[1])[:-1]], params)


def test_the_private_flood_is_box_muller_of_os_urandom_on_a_2_to_the_32_staircase(monkeypatch):
    """noise = 2^32 · round(z · σ / 2^32) + U[0, 2^32), z = √(−2 ln u1) cos(2π u2) with
    u1 = (w1 + 1) / 2^53, u2 = w2 / 2^53 from 53-bit words of os.urandom; as residues."""
    import math

    from heml.he import private

    count, log2_sigma = 6, 45.0
    primes = private.default_privacy_params().primes
    stream = bytes((37 * i + 11) % 256 for i in range(20 * count))
    taken = replay_urandom(monkeypatch, private, stream)
    got = private._gaussian_residues(count, log2_sigma, primes)
    assert taken == [16 * count, 4 * count]
    w = [int.from_bytes(stream[8 * j : 8 * j + 8], "little") >> 11 for j in range(2 * count)]
    lo = [
        int.from_bytes(stream[16 * count + 4 * j : 16 * count + 4 * j + 4], "little")
        for j in range(count)
    ]
    for j in range(count):
        u1, u2 = (w[j] + 1) / 2.0**53, w[count + j] / 2.0**53
        z = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
        noise = round(z * 2.0 ** (log2_sigma - 32)) * 2**32 + lo[j]
        for i, q in enumerate(primes):
            assert int(got[i, j]) == noise % q
