"""heml.he building blocks against SEAL itself and exact integer arithmetic."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tenseal.sealapi as seal

from heml.errors import InvalidCiphertext, ParameterError
from heml.he import kernels, modmath, prng, seal_bridge, wire
from heml.he.params import HEParams, check_params, default_params

P2048 = default_params(2048)
P4096 = default_params(4096)
RNG = np.random.default_rng(42)


def test_default_parameters_are_128_bit_and_one_prime():
    for p in (P2048, P4096):
        assert p.q_bits == 54 and p.q % (2 * p.n) == 1
        assert p.context.parameters_set()
    with pytest.raises(ParameterError, match="not 128-bit secure"):
        check_params(2048, (1 << 58) + 1)
    with pytest.raises(ParameterError, match="not supported"):
        check_params(1024, 12289)
    with pytest.raises(ParameterError, match="not prime"):
        check_params(2048, 4 * 4096 + 1)  # 16385 = 5 · 3277


@pytest.mark.parametrize("params", [P2048, P4096], ids=["N2048", "N4096"])
def test_reference_ntt_is_bit_exact_with_seal(params):
    import _sealapi_cpp

    tables_ptr = _sealapi_cpp.util.CreateNTTTables(
        params.n.bit_length() - 1, [seal.Modulus(params.q)]
    )
    tables = tables_ptr.get()
    ref = modmath.reference_ntt(params.n, params.q)
    assert modmath.minimal_primitive_root(params.n, params.q) == tables.get_root()
    x = RNG.integers(0, params.q, size=params.n, dtype=np.uint64)
    seal_ntt = np.array(
        _sealapi_cpp.util.ntt_negacyclic_harvey(x.tolist(), tables), dtype=np.uint64
    )
    np.testing.assert_array_equal(ref.forward(x), seal_ntt % np.uint64(params.q))
    np.testing.assert_array_equal(ref.inverse(ref.forward(x)), x)


@pytest.mark.parametrize("params", [P2048, P4096], ids=["N2048", "N4096"])
def test_seal_kernels_equal_numpy_kernels(params):
    if not seal_bridge.zero_copy_enabled():
        pytest.skip("zero-copy route unavailable on this platform; numpy kernels are in use")
    fast, slow = kernels.SealKernels(params), kernels.NumpyKernels(params)
    x = RNG.integers(0, params.q, size=(3, params.n), dtype=np.uint64)
    np.testing.assert_array_equal(fast.ntt(x), slow.ntt(x))
    np.testing.assert_array_equal(fast.intt(x), slow.intt(x))
    ct = x[:2]
    p = RNG.integers(0, params.q, size=params.n, dtype=np.uint64)
    np.testing.assert_array_equal(fast.mul(ct, p), slow.mul(ct, p))
    np.testing.assert_array_equal(fast.mul_rows(x, p), slow.mul_rows(x, p))  # odd row count
    cts = RNG.integers(0, params.q, size=(3, 2, params.n), dtype=np.uint64)
    plains = RNG.integers(0, params.q, size=(3, params.n), dtype=np.uint64)
    plains[1] = 0  # an all-zero weight polynomial is skipped, not handed to SEAL
    np.testing.assert_array_equal(fast.dot_to_coeffs(cts, plains), slow.dot_to_coeffs(cts, plains))
    zero = np.zeros((1, params.n), dtype=np.uint64)
    np.testing.assert_array_equal(fast.dot_to_coeffs(cts[:1], zero), np.zeros((2, params.n)))


def test_modular_helpers_match_python_integers():
    q = P2048.q
    x = RNG.integers(0, q, size=500, dtype=np.uint64)
    y = RNG.integers(0, q, size=500, dtype=np.uint64)
    want = np.array([int(a) * int(b) % q for a, b in zip(x, y, strict=True)], dtype=np.uint64)
    np.testing.assert_array_equal(modmath.mulmod(x, y, q), want)
    D = RNG.integers(-(1 << 19), 1 << 19, size=(3, 40))
    X = RNG.integers(0, q, size=(40, 64), dtype=np.uint64)
    exact = [
        [sum(int(D[r, j]) * int(X[j, c]) for j in range(40)) % q for c in range(64)]
        for r in range(3)
    ]
    np.testing.assert_array_equal(modmath.dot_mod(D, X, q), np.array(exact, dtype=np.uint64))
    v = RNG.integers(0, q, size=1000, dtype=np.uint64)
    for bits in (32, 40, 48, 56):
        got = modmath.switch_modulus(v, q, bits).astype(object)
        ideal = [(int(a) * (1 << bits) * 2 + q) // (2 * q) % (1 << bits) for a in v]
        diff = [
            min((g - i) % (1 << bits), (i - g) % (1 << bits))
            for g, i in zip(got, ideal, strict=True)
        ]
        assert max(diff) <= 1 + (1 << max(0, bits - 52))


@pytest.mark.parametrize("route", ["seal", "numpy"])
@pytest.mark.parametrize("params", [P2048, P4096], ids=["N2048", "N4096"])
def test_seal_decrypts_heml_encryption_to_message_plus_small_noise(params, route, monkeypatch):
    from heml.he.encrypt import encrypt_coefficients
    from heml.he.keys import SecretKey

    if route == "numpy":  # the kernels used where SEAL's zero-copy route is unavailable
        monkeypatch.setattr(kernels, "for_params", kernels.NumpyKernels)
    key = SecretKey.generate(params)
    message = RNG.integers(-(1 << 40), 1 << 40, size=(3, params.n))
    blobs = encrypt_coefficients(key, message)
    decryptor = seal.Decryptor(params.context, key.seal_key)
    ker = kernels.for_params(params)
    seeds = set()
    for blob, m in zip(blobs, message, strict=True):
        c0, seed = wire.unpack_ciphertext(blob, params.n, params.q)
        seeds.add(seed)
        a = prng.expand_seed(seed, params.n, params.q)
        ct = seal_bridge.ciphertext_from_words(params, np.stack([c0, a]), ntt=True)
        plain = seal.Plaintext()
        decryptor.decrypt(ct, plain)  # SEAL's own decryption, NTT form
        coeffs = ker.intt(seal_bridge.plaintext_words_serialized(plain)[: params.n])
        q = np.int64(params.q)
        centered = np.where(coeffs > params.q // 2, coeffs.astype(np.int64) - q, coeffs)
        noise = centered.astype(np.int64) - m
        assert np.abs(noise).max() <= prng.ERROR_COINS
        assert noise.std() > 2.5  # the noise is really there
    assert len(seeds) == 3  # a fresh public polynomial per ciphertext


def test_seed_expansion_is_pinned():
    # the upload format: AES-256-CTR(key = seed) words, low 54 bits below q (docs/protocol.md)
    seed = bytes(range(32))
    words = np.frombuffer(prng.keystream(seed, 32), dtype="<u8")
    a = prng.expand_seed(seed, P2048.n, P2048.q)
    np.testing.assert_array_equal(a[:4], words & np.uint64((1 << 54) - 1))
    assert [int(x) for x in a[:2]] == [8806172068974834, 15532652230276009]


def test_rejected_words_are_replaced_in_order_from_after_the_first_n():
    q = 3 << 62  # not a prime, but expand only needs the bound: a quarter of the words is rejected
    seed = os.urandom(32)
    n = 512
    words = [int(w) for w in np.frombuffer(prng.keystream(seed, 8 * 4 * n), dtype="<u8")]
    expected, spare = [], iter(words[n:])
    for w in words[:n]:
        while w >= q:  # bit_length(q) = 64: the whole word is kept
            w = next(spare)
        expected.append(w)
    got = prng.expand(seed, n, (q,))[0]
    assert [int(x) for x in got] == expected


def test_error_is_a_centered_binomial_with_21_coins_a_side():
    e = prng.sample_error((64, 4096), key=bytes(32))
    assert e.dtype == np.int64 and np.abs(e).max() <= 21
    assert abs(e.mean()) < 0.05  # σ/√n ≈ 0.006
    assert abs(e.var() - 10.5) < 0.3  # the estimate's standard error is ≈ 0.03
    assert abs(np.mean(e == 0) - 0.1224) < 0.005  # C(42, 21) / 2^42
    assert not np.array_equal(prng.sample_error((8,)), prng.sample_error((8,)))  # fresh keys


def test_zero_copy_views_agree_with_serialization():
    if not seal_bridge.zero_copy_enabled():
        pytest.skip("zero-copy route unavailable on this platform")
    words = RNG.integers(0, P2048.q, size=(2, P2048.n), dtype=np.uint64)
    ct = seal_bridge.ciphertext_from_words(P2048, words, ntt=True)
    np.testing.assert_array_equal(seal_bridge.ciphertext_view(ct), words.reshape(-1))
    with pytest.raises(RuntimeError, match="layout"):
        seal_bridge.ciphertext_view(ct, expect=(3, P2048.n, 1))


def test_wire_round_trip_and_validation():
    n, q = P2048.n, P2048.q
    c0 = RNG.integers(0, q, size=n, dtype=np.uint64)
    seed = os.urandom(32)
    blob = wire.pack_ciphertext(c0, seed)
    assert len(blob) == wire.ciphertext_size(n) == 7 * n + 32
    back, s = wire.unpack_ciphertext(blob, n, q)
    np.testing.assert_array_equal(back, c0)
    assert s == seed
    with pytest.raises(InvalidCiphertext, match="exactly"):
        wire.unpack_ciphertext(blob[:-1], n, q)
    big = bytearray(blob)
    big[:7] = b"\xff" * 7
    with pytest.raises(InvalidCiphertext, match="not below the modulus"):
        wire.unpack_ciphertext(bytes(big), n, q)
    for bits in (24, 29, 31, 32, 37, 40, 53, 56):
        r = RNG.integers(0, 1 << bits, size=n + 5, dtype=np.uint64)
        packed = wire.pack_reply(r[:5], r[5:], bits)
        assert len(packed) == -(-(n + 5) * bits // 8)  # exactly the bits, no padding per word
        c0r, c1r = wire.unpack_reply(packed, 5, n, bits)
        np.testing.assert_array_equal(np.concatenate([c0r, c1r]), r)


def test_heparams_rejects_foreign_moduli():
    with pytest.raises(ParameterError):
        HEParams(2048, P4096.q + 2)
