"""The model-privacy evaluator at its edges (heml.he.private, docs/model-privacy.md), with real
keys and ciphertexts.

* A model with more features than the ring has coefficients (d > N = 4096) is scored chunk by
  chunk: the client's predictions stay within the published error bound, again for a second
  block of the same shape (the weight polynomials are computed once and reused), and an upload
  one ciphertext short of ⌈n/s⌉·chunks is refused with the count it needed.
* The flooding noise is Box–Muller of os.urandom words with u1 = (w1 + 1)/2^53, never 0: at the
  extreme words (w1 = 0, the largest |z| = √(106 ln 2); w1 = 2^53 − 1, z = 0) the residues are
  exactly the documented staircase value.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from heml.errors import InvalidCiphertext
from heml.he import private
from heml.he.codec import ClientCodec
from heml.he.encrypt import public_key_p0
from heml.he.keys import KeySet
from heml.he.plan import normalized_weights
from heml.he.private import KEY_NONCE_BYTES, PRIVATE, PrivateEvaluator, make_private_plan

from .guard_support import replay_urandom


@pytest.fixture(scope="module")
def wide():
    rng = np.random.default_rng(5)
    d, k = 4100, 2
    W = rng.normal(size=(k, d)) * 0.01
    b, center, hw = np.array([0.3, -0.2]), np.zeros(d), np.ones(d)
    plan = make_private_plan(W, b, center, hw, tolerance=1e-3)
    Wn, bn = normalized_weights(W, b, center, hw)
    evaluator = PrivateEvaluator(plan, Wn, bn)
    keys = KeySet()
    nonce = bytes(range(KEY_NONCE_BYTES))
    key_id = evaluator.keys.register(nonce, public_key_p0(keys.get(plan.params), nonce), "peer:t")
    codec = ClientCodec({PRIVATE: plan}, d, k, keys)
    return rng, plan, Wn, bn, evaluator, key_id, codec


def test_a_model_wider_than_the_ring_is_scored_chunk_by_chunk(wide):
    rng, plan, Wn, bn, evaluator, key_id, codec = wide
    d = Wn.shape[1]
    assert d > plan.params.n
    for _ in range(2):  # the second block reuses the weight polynomials
        (block,) = codec.blocks(3)
        assert evaluator.geometry(block.s).chunks == 2
        Z = rng.uniform(-1, 1, size=(3, d))
        cts = codec.encrypt(Z, block)
        assert len(cts) == 3 // block.s * 2
        scores = codec.decrypt(evaluator.evaluate(cts, 3, block.s, key_id), block)
        err = np.abs(scores - (Z @ Wn.T + bn)).max()
        assert err <= plan.error_bound


def test_an_upload_one_ciphertext_short_of_its_chunks_is_refused(wide):
    rng, _plan, Wn, _bn, evaluator, key_id, codec = wide
    (block,) = codec.blocks(3)
    cts = codec.encrypt(rng.uniform(-1, 1, size=(3, Wn.shape[1])), block)
    with pytest.raises(
        InvalidCiphertext, match=r"^3 samples at 1 per ciphertext need 6 ciphertexts, got 5$"
    ):
        evaluator.evaluate(cts[:-1], 3, 1, key_id)


def test_the_flood_at_the_extreme_uniform_words(monkeypatch):
    """w1 = 0 gives u1 = 2^-53 (not 0: no infinite logarithm), the largest |z|; w1 = 2^53 − 1
    gives u1 = 1 and z = 0; w2 picks the cosine. σ = 2^60 so that z is resolved to 2^-28."""
    primes = private.default_privacy_params().primes
    w1 = [0, 0, 1, 2**53 - 1]
    w2 = [0, 2**52, 0, 123]
    lo = [0, 7, 2**32 - 1, 5]
    stream = b"".join((w << 11).to_bytes(8, "little") for w in w1 + w2)
    stream += b"".join(v.to_bytes(4, "little") for v in lo)
    replay_urandom(monkeypatch, private, stream)
    log2_sigma = 60.0
    got = private._gaussian_residues(len(w1), log2_sigma, primes)
    for j in range(len(w1)):
        u1, u2 = (w1[j] + 1) / 2.0**53, w2[j] / 2.0**53
        z = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
        noise = round(z * 2.0 ** (log2_sigma - 32)) * 2**32 + lo[j]
        for i, q in enumerate(primes):
            assert int(got[i, j]) == noise % q, (i, j)
    assert math.sqrt(-2.0 * math.log(2.0**-53)) == pytest.approx(math.sqrt(106 * math.log(2)))


def test_samples_per_ciphertext_beyond_the_ring_are_refused_with_the_range():
    """s must be in [1, N // min(d, N)]: the refusal (INVALID_ARGUMENT through the server)
    names the range, d and the s that was asked for."""
    evaluator = PrivateEvaluator(*_small_model())
    assert evaluator.geometry(819).s == 819
    for s in (0, 820):
        with pytest.raises(
            InvalidCiphertext,
            match=rf"^samples per ciphertext must be in \[1, 819\] for d=5, got {s}$",
        ):
            evaluator.geometry(s)


def _small_model():
    rng = np.random.default_rng(9)
    d = 5
    W, b = rng.normal(size=(1, d)), np.array([0.1])
    plan = make_private_plan(W, b, np.zeros(d), np.ones(d), tolerance=1e-4)
    return (plan, *normalized_weights(W, b, np.zeros(d), np.ones(d)))
