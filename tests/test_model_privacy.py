"""Model-privacy mode: an attacker holding the secret key reads both reply polynomials.

Without the mode, the reply's c1 is a·P (the client's own uniform polynomial a times the
weight polynomial P), only rounded by the modulus switch: a small lattice reduction recovers P,
hence W, from one reply. With the mode, c1 is re-randomized by a fresh encryption of zero under
the client's public key, whose uniform half p1 the client cannot choose, and the outputs are
noise-flooded: the same attack (modulo Q, via CRT) finds nothing, and the client still decrypts
correct predictions. Every attack first succeeds against an unprotected reply (positive control).
"""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest

from heml.errors import InvalidCiphertext
from heml.he import kernels, modmath, prng, wire
from heml.he.codec import ClientCodec
from heml.he.encrypt import public_key_p0
from heml.he.keys import KeySet
from heml.he.params import ERROR_STDDEV, HEParams
from heml.he.plan import ROW, normalized_weights, quantize
from heml.he.private import (
    HIDING_BITS,
    KEY_NONCE_BYTES,
    PRIVATE,
    TAIL_SIGMAS,
    PrivateEvaluator,
    RNSParams,
    _expand_rns,
    key_p1,
    make_private_plan,
    unpack_rns_ciphertexts,
)
from heml.he.scoring import Block, ServerScorer


# ---------------------------------------------------------------------- a small exact LLL
def lll(basis: list[list[int]], delta: Fraction = Fraction(99, 100)) -> list[list[int]]:
    """Textbook LLL in exact rational arithmetic (small dimensions only), with the standard
    Gram–Schmidt update on a swap (Cohen, Algorithm 2.6.3) instead of recomputing it."""
    b = [row[:] for row in basis]
    n = len(b)

    def dot(u, v):
        return sum(x * y for x, y in zip(u, v, strict=True))

    bstar, mu, norms = [], [[Fraction(0)] * n for _ in range(n)], []
    for i in range(n):
        v = [Fraction(x) for x in b[i]]
        for j in range(i):
            mu[i][j] = Fraction(dot(b[i], bstar[j])) / norms[j]
            v = [x - mu[i][j] * y for x, y in zip(v, bstar[j], strict=True)]
        bstar.append(v)
        norms.append(dot(v, v))
    k = 1
    while k < n:
        for j in range(k - 1, -1, -1):  # size reduction: b* unchanged, update mu in place
            r = round(mu[k][j])
            if r:
                b[k] = [x - r * y for x, y in zip(b[k], b[j], strict=True)]
                for i in range(j):
                    mu[k][i] -= r * mu[j][i]
                mu[k][j] -= r
        if norms[k] >= (delta - mu[k][k - 1] ** 2) * norms[k - 1]:
            k += 1
            continue
        m = mu[k][k - 1]
        big = norms[k] + m * m * norms[k - 1]
        mu[k][k - 1] = m * norms[k - 1] / big
        norms[k] = norms[k - 1] * norms[k] / big
        norms[k - 1] = big
        b[k], b[k - 1] = b[k - 1], b[k]
        for j in range(k - 1):
            mu[k][j], mu[k - 1][j] = mu[k - 1][j], mu[k][j]
        for i in range(k + 1, n):
            t = mu[i][k]
            mu[i][k] = mu[i][k - 1] - m * t
            mu[i][k - 1] = t + mu[k][k - 1] * mu[i][k]
        k = max(k - 1, 1)
    return b


def recover_weight_poly(c1_words, bits, modulus, a_coeff, support, bound_bits, equations=5):
    """Find small P on `support` with (a * P)[j] ≈ c1[j]·q/2^bits (mod q) for a few j."""
    n = len(a_coeff)
    q = modulus
    err = q >> (bits + 1) or 1
    rows_eq = list(range(n - equations, n))  # any coefficients work; use the last ones
    A = []
    for j in rows_eq:
        row = []
        for pos in support:
            idx = j - pos
            row.append(int(a_coeff[idx]) if idx >= 0 else (-int(a_coeff[idx + n])) % q)
        A.append(row)
    y = [(int(c1_words[j]) * q + (1 << (bits - 1))) >> bits for j in rows_eq]
    c_p = max(1, err >> bound_bits)
    c_d = max(1, (1 << bound_bits) // err)
    d, k = len(support), len(rows_eq)
    basis = []
    for i in range(d):
        basis.append(
            [c_p if t == i else 0 for t in range(d)] + [c_d * A[j][i] for j in range(k)] + [0]
        )
    for j in range(k):
        basis.append([0] * d + [c_d * q if t == j else 0 for t in range(k)] + [0])
    M = c_d * err
    basis.append([0] * d + [-c_d * yj for yj in y] + [M])
    for v in lll(basis):
        if abs(v[-1]) == M:
            sign = 1 if v[-1] == M else -1
            return [sign * v[i] // c_p for i in range(d)]
    return None


# ---------------------------------------------------------------------- the scenario
D = 4
RNG = np.random.default_rng(2)
W = RNG.normal(size=(1, D))
B = np.array([0.3])
CENTER, HW = np.zeros(D), np.full(D, 2.0)
WN, BN = normalized_weights(W, B, CENTER, HW)


def _a_coeff(seed, params: HEParams) -> np.ndarray:
    a = prng.expand_seed(seed, params.n, params.q)
    return kernels.for_params(params).intt(a)


def test_default_reply_leaks_the_weights_from_one_reply():
    server = ServerScorer(W, B, CENTER, HW, 1e-4)
    plan = server.plans[ROW]
    assert plan.digits == 1
    keys = KeySet()
    codec = ClientCodec(server.plans, D, 1, keys)
    block = Block(0, 1, ROW, 1)
    z = RNG.uniform(-1, 1, size=(1, D))
    (ct,) = codec.encrypt(z, block)
    (reply,) = server.evaluate(ROW, 1, 1, [ct])
    # the attacker: knows its seed, hence a; reads c1 of the reply
    _c0, seed = wire.unpack_ciphertext(ct, plan.params.n, plan.params.q)
    pos = np.arange(D)  # P holds the reversed weights on coefficients 0..d-1 (m = d)
    _c0_out, c1 = wire.unpack_reply(reply, 1, plan.params.n, plan.reply_bits)
    wq = quantize(WN, plan.log2_scale_w)[0]
    P = recover_weight_poly(
        c1,
        plan.reply_bits,
        plan.params.q,
        _a_coeff(seed, plan.params),
        pos,
        int(np.abs(wq).max()).bit_length() + 1,
    )
    assert P is not None
    recovered = np.array(P[::-1]) / 2.0**plan.log2_scale_w
    np.testing.assert_allclose(recovered, WN[0], atol=2.0**-plan.log2_scale_w)


# ---------------------------------------------------------------------- model-privacy mode
PLAN = make_private_plan(W, B, CENTER, HW, tolerance=1e-4)


def _a_mod_Q(seed: bytes, params: RNSParams) -> list[int]:
    """The client's public polynomial a in the coefficient domain modulo Q = Π q_i (CRT of
    its residues: the reply's c1 lives modulo Q, so the attack must too)."""
    a = _expand_rns(seed, params)
    residues = [kernels.for_params(pp).intt(a[i]) for i, pp in enumerate(params.prime_params)]
    Q = params.Q
    out = [0] * params.n
    for i, q in enumerate(params.primes):
        basis = (Q // q) * pow(Q // q, -1, q)
        for j in range(params.n):
            out[j] += int(residues[i][j]) * basis
    return [v % Q for v in out]


def _one_private_reply(evaluator: PrivateEvaluator, key_id: str, keys: KeySet):
    """Encrypt one sample, get the reply for it; returns (ciphertext, reply, codec, block)."""
    codec = ClientCodec({PRIVATE: PLAN}, D, 1, keys)
    block = codec.blocks(1)[0]
    z = RNG.uniform(-1, 1, size=(1, D))
    cts = codec.encrypt(z, block)
    replies = evaluator.evaluate(cts, block.n, block.s, key_id)
    return cts, replies, codec, block


def _crt_attack(cts, replies, codec, block) -> np.ndarray | None:
    """The lattice attack of test_default_reply_leaks..., modulo Q: the recovered normalized
    weights, or None."""
    params = PLAN.params
    geo = codec._row_geometry(block.s, PRIVATE)
    _c0, seeds = unpack_rns_ciphertexts(cts, params)
    positions = geo.output_positions(0).size
    _c0_out, c1 = wire.unpack_reply(replies[0], positions, params.n, PLAN.reply_bits)
    wq = quantize(WN, PLAN.log2_scale_w)[0]
    P = recover_weight_poly(
        c1,
        PLAN.reply_bits,
        params.Q,
        _a_mod_Q(seeds[0], params),
        np.arange(geo.m - D, geo.m),
        int(np.abs(wq).max()).bit_length() + 1,
    )
    return None if P is None else np.array(P[::-1]) / 2.0**PLAN.log2_scale_w


def _recovers(weights: np.ndarray | None) -> bool:
    return weights is not None and np.allclose(weights, WN[0], atol=2.0**-PLAN.log2_scale_w)


def _honest_key(evaluator: PrivateEvaluator, keys: KeySet) -> str:
    nonce = bytes(range(KEY_NONCE_BYTES))
    return evaluator.keys.register(nonce, public_key_p0(keys.get(PLAN.params), nonce), "peer:t")


def _ntt_words(coeffs: np.ndarray) -> np.ndarray:
    """A small integer polynomial (coefficient domain) as NTT-form words modulo each prime."""
    return np.stack(
        [
            kernels.for_params(pp).ntt(modmath.reduce_signed(coeffs.astype(np.int64), pp.q))
            for pp in PLAN.params.prime_params
        ]
    )


def _low_weight() -> np.ndarray:
    poly = np.zeros(PLAN.params.n, dtype=np.int64)
    poly[[0, 17, 900, 2048, 4000]] = [1, -1, 1, 1, -1]
    return poly


def test_crt_attack_reads_w_from_an_unprotected_private_reply_but_not_a_protected_one():
    keys = KeySet()
    # positive control: the same evaluator with re-randomization and flooding off
    bare = PrivateEvaluator(PLAN, WN, BN, protect=False)
    assert _recovers(_crt_attack(*_one_private_reply(bare, _honest_key(bare, keys), keys)))
    protected = PrivateEvaluator(PLAN, WN, BN)
    cts, replies, codec, block = _one_private_reply(protected, _honest_key(protected, keys), keys)
    assert not _recovers(_crt_attack(cts, replies, codec, block))
    # and the client still gets correct predictions
    X = RNG.uniform(-2, 2, size=(6, D))
    block = codec.blocks(6)[0]
    cts = codec.encrypt((X - CENTER) / HW, block)
    got = codec.decrypt(
        protected.evaluate(cts, block.n, block.s, _honest_key(protected, keys)), block
    )
    np.testing.assert_allclose(got, X @ W.T + B, atol=PLAN.error_bound)
    assert PLAN.error_bound <= 1e-4 and PLAN.hiding_bits >= 40


@pytest.mark.parametrize("kind", ["zero", "low-weight"])
def test_degenerate_public_keys_defeat_a_client_chosen_p1_but_not_the_expanded_one(kind):
    keys = KeySet()
    n = PLAN.params.n
    zero = np.zeros((len(PLAN.params.primes), n), dtype=np.uint64)
    p0 = zero if kind == "zero" else _ntt_words(_low_weight())
    p1 = zero if kind == "zero" else _ntt_words(np.eye(1, n, 0, dtype=np.int64)[0])  # p1 = 1
    # positive control: the old protocol let the client choose p1; with this key the
    # re-randomizer is small noise and one reply gives W to the CRT attack
    old = PrivateEvaluator(PLAN, WN, BN)
    old.keys._install("f" * 64, p0, p1, "peer:attacker")
    assert _recovers(_crt_attack(*_one_private_reply(old, "f" * 64, keys)))
    # the protocol now: registering such a p0 is refused ...
    nonce = b"\x07" * KEY_NONCE_BYTES
    blob = wire.pack_words(p0, wire.C0_WORD_BYTES)
    with pytest.raises(InvalidCiphertext, match="degenerate"):
        PrivateEvaluator(PLAN, WN, BN).keys.register(nonce, blob, "peer:attacker")
    # ... and even accepted unchecked, with p1 expanded from the nonce it hides W
    new = PrivateEvaluator(PLAN, WN, BN)
    new.keys._install("e" * 64, p0, key_p1(nonce, PLAN.params), "peer:attacker")
    assert not _recovers(_crt_attack(*_one_private_reply(new, "e" * 64, keys)))


def test_a_p0_without_the_p1_term_is_refused_and_an_honest_one_accepted():
    keys = KeySet()
    store = PrivateEvaluator(PLAN, WN, BN).keys
    nonce = b"\x01" * KEY_NONCE_BYTES
    noise_only = _ntt_words(prng.sample_error((PLAN.params.n,)))  # p0 = e: small norm
    with pytest.raises(InvalidCiphertext, match="degenerate"):
        store.register(nonce, wire.pack_words(noise_only, wire.C0_WORD_BYTES), "peer:a")
    honest = public_key_p0(keys.get(PLAN.params), nonce)
    key_id = store.register(nonce, honest, "peer:a")
    assert key_id == store.register(nonce, honest, "peer:a") and len(store) == 1
    with pytest.raises(InvalidCiphertext, match="key nonce has 3 bytes"):
        store.register(b"abc", honest, "peer:a")


def test_flooding_meets_the_stated_statistical_distance():
    """σ_flood ≥ 2^40 · t·σ_e·‖Wq‖₂ with P(|Σ P_j e_j| > t·σ_e·‖Wq‖₂) ≤ 2^-41 (Hoeffding), so
    the smudging bound gives < 2^-40 per coefficient; and the tail bound holds empirically."""
    wq = quantize(WN, PLAN.log2_scale_w)
    bound = TAIL_SIGMAS * ERROR_STDDEV * np.sqrt((wq.astype(float) ** 2).sum())
    assert PLAN.log2_flood == int(PLAN.log2_flood)
    sigma = 2.0**PLAN.log2_flood
    tail = 2 * np.exp(-(TAIL_SIGMAS**2) / 2)
    assert tail + bound / (sigma * np.sqrt(2 * np.pi)) <= 2.0**-HIDING_BITS
    assert sigma < 2.0 ** (HIDING_BITS + 2) * bound  # not wastefully larger
    # and for real sampled errors the contribution's largest of 20000 draws stays below it
    e = prng.sample_error((20000, D))
    contribution = np.abs(e @ wq[0].astype(float))
    assert contribution.max() < bound
    assert TAIL_SIGMAS > 7.5 and HIDING_BITS >= 40


@pytest.mark.parametrize(
    ("d", "k", "tolerance"), [(30, 3, 1e-4), (300, 3, 1e-4), (4, 1, 1e-2), (4, 1, 1e-1)]
)
def test_predictions_stay_within_the_error_bound_at_the_corners_of_the_bounds(d, k, tolerance):
    """The flooding, scales and headroom leave decryption correct for the largest in-bounds
    scores (z = ±1 aligned with each class's weights). A large tolerance plans too (it was
    refused with "raise the tolerance": x was scaled for the flooding only, too coarse for
    any reply width)."""
    rng = np.random.default_rng(d)
    Wk, bk = rng.normal(size=(k, d)), rng.normal(size=k)
    center, hw = np.zeros(d), np.full(d, 2.0)
    plan = make_private_plan(Wk, bk, center, hw, tolerance=tolerance)
    Wn, bn = normalized_weights(Wk, bk, center, hw)
    evaluator = PrivateEvaluator(plan, Wn, bn)
    keys = KeySet()
    nonce = b"\x03" * KEY_NONCE_BYTES
    key_id = evaluator.keys.register(nonce, public_key_p0(keys.get(plan.params), nonce), "p:a")
    Z = np.vstack([np.sign(Wn), -np.sign(Wn), rng.uniform(-1, 1, size=(2, d))])
    codec = ClientCodec({PRIVATE: plan}, d, k, keys)
    block = codec.blocks(len(Z))[0]
    replies = evaluator.evaluate(codec.encrypt(Z, block), block.n, block.s, key_id)
    got = codec.decrypt(replies, block)
    np.testing.assert_allclose(got, (Z * hw + center) @ Wk.T + bk, atol=plan.error_bound)
    assert plan.error_bound <= tolerance


def test_the_published_plan_reveals_only_a_power_of_two_bound_on_the_weights():
    """Weights with different norms in one power-of-two bucket publish identical plans; the
    test can see a difference (positive control: a bucket apart, the plans differ)."""
    wq_norm = np.sqrt((quantize(WN, PLAN.log2_scale_w).astype(float) ** 2).sum())
    bucket = 2.0 ** np.ceil(np.log2(wq_norm))
    near = make_private_plan(W * (0.55 * bucket / wq_norm + 0.45), B, CENTER, HW, tolerance=1e-4)
    far = make_private_plan(W * 4, B, CENTER, HW, tolerance=1e-4)
    assert near.to_dict() == PLAN.to_dict()
    assert far.to_dict() != PLAN.to_dict() and far.log2_flood == PLAN.log2_flood + 2


def test_key_store_caps_each_identity_and_evicts_the_largest_holder_first():
    keys = KeySet()
    sk = keys.get(PLAN.params)
    evaluator = PrivateEvaluator(PLAN, WN, BN)
    store = evaluator.keys
    store.capacity, store.per_identity = 6, 4

    def reg(identity: str, i: int) -> str:
        nonce = i.to_bytes(KEY_NONCE_BYTES, "big")
        return store.register(nonce, public_key_p0(sk, nonce), identity)

    victims = [reg("peer:victim", i) for i in range(2)]
    flood = [reg("peer:flooder", 100 + i) for i in range(12)]
    assert all(v in store for v in victims)  # the flooder's registrations evict its own keys
    assert [k in store for k in flood] == [False] * 8 + [True] * 4  # at most 4 per identity
    others = [reg(f"peer:other{i}", 200 + i) for i in range(2)]
    assert len(store) == 6 and all(v in store for v in victims + others)
    assert sum(k in store for k in flood) == 2  # the largest holder paid for the newcomers
    with pytest.raises(KeyError):
        store.take("0" * 64, 1, 10)  # nothing is kept for an unknown id
    assert store.take(victims[0], 3, 4) is None and store.take(victims[0], 2, 4) == 3


def test_privacy_key_files_round_trip(tmp_path):
    keys = KeySet.open(tmp_path / "keys.json")
    sk = keys.get(PLAN.params)
    keys.save(tmp_path / "keys.json")
    again = KeySet.load(tmp_path / "keys.json")
    assert np.array_equal(again.get(PLAN.params).s, sk.s)
    # the reloaded key decrypts replies made for the saved one
    evaluator = PrivateEvaluator(PLAN, WN, BN)
    nonce = b"\x02" * KEY_NONCE_BYTES
    key_id = evaluator.keys.register(nonce, public_key_p0(sk, nonce), "peer:a")
    codec = ClientCodec({PRIVATE: PLAN}, D, 1, keys)
    X = RNG.uniform(-2, 2, size=(3, D))
    block = codec.blocks(3)[0]
    replies = evaluator.evaluate(codec.encrypt((X - CENTER) / HW, block), 3, block.s, key_id)
    got = ClientCodec({PRIVATE: PLAN}, D, 1, again).decrypt(replies, block)
    np.testing.assert_allclose(got, X @ W.T + B, atol=PLAN.error_bound)


def test_unregistered_or_malformed_public_keys_are_refused():
    evaluator = PrivateEvaluator(PLAN, WN, BN)
    nonce = b"\x00" * KEY_NONCE_BYTES
    with pytest.raises(InvalidCiphertext, match="public key p0 has"):
        evaluator.keys.register(nonce, b"\x00" * 100, "peer:a")
    with pytest.raises(InvalidCiphertext, match="below their primes"):
        evaluator.keys.register(nonce, b"\xff" * (7 * PLAN.params.n * 2), "peer:a")
    with pytest.raises(KeyError):
        evaluator.evaluate([], 1, 1, "unknown-key")


def test_model_privacy_end_to_end_over_grpc(tmp_path, cancer):
    import grpc

    import heml
    from heml.errors import InvalidRequest, ResourceExhausted
    from heml.v1 import heml_pb2 as pb
    from heml.v1 import heml_pb2_grpc

    X, _y, clf = cancer
    heml.export(clf, name="secret", model_privacy=True, max_predictions_per_key=12).save(
        tmp_path / "secret.json"
    )
    heml.export(clf, name="open").save(tmp_path / "open.json")
    keyfile = tmp_path / "client.keys"
    with (
        heml.serve(tmp_path, port=0) as server,
        heml.Client(f"localhost:{server.port}", keys=keyfile) as c,
    ):
        model = c.model("secret")
        assert model.info.model_privacy and list(model.info.plans) == [PRIVATE]
        # a guessed model is confirmed by its fingerprint in the default mode (positive
        # control) but not in model-privacy mode (HMAC under a server key)
        from heml.model import LinearModel

        guess_open = LinearModel.load(tmp_path / "open.json").fingerprint()
        guess_secret = LinearModel.load(tmp_path / "secret.json").fingerprint()
        assert c.model("open").info.fingerprint == guess_open
        assert model.info.fingerprint not in (guess_secret, "")
        got = model.predict_proba(X.iloc[:8])
        np.testing.assert_allclose(got, clf.predict_proba(X.iloc[:8]), atol=1e-4)
        assert model.last_call.layouts == {PRIVATE: 8}
        # the privacy key went to the key file (it raised AttributeError before) and a new
        # client using that file decrypts with it
        saved = KeySet.load(keyfile)  # the master seed each (server, model) key comes from
        mine = c.keys.for_peer(c.target, "secret").get(PLAN.params).s
        assert np.array_equal(saved.for_peer(c.target, "secret").get(PLAN.params).s, mine)
        with heml.Client(f"localhost:{server.port}", keys=keyfile) as again:
            np.testing.assert_allclose(
                again.model("secret").predict_proba(X.iloc[:1]),
                clf.predict_proba(X.iloc[:1]),
                atol=1e-4,
            )
        with pytest.raises(ResourceExhausted, match="quota of 12 predictions per key"):
            model.predict_proba(X.iloc[:5])  # 8 + 5 > 12 < d = 30 (the other client's 1 apart)
        stub = heml_pb2_grpc.InferenceStub(grpc.insecure_channel(f"localhost:{server.port}"))
        with pytest.raises(grpc.RpcError) as info:  # default layouts are refused
            stub.Predict(
                pb.PredictRequest(model="secret", layout=pb.ROW, n=1, samples_per_ciphertext=1),
                timeout=10,
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as info:  # a model not in privacy mode
            stub.RegisterKey(pb.RegisterKeyRequest(model="open", public_key=b"x"), timeout=10)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as info:
            stub.RegisterKey(pb.RegisterKeyRequest(model="secret", public_key=b"x" * 9), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as info:  # the all-zero key of the old attack
            zero = pb.RegisterKeyRequest(
                model="secret", public_key=bytes(7 * 4096 * 2), key_nonce=bytes(KEY_NONCE_BYTES)
            )
            stub.RegisterKey(zero, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "degenerate" in info.value.details()
        with pytest.raises(InvalidRequest):
            c._unary(
                c._stub.Predict,
                pb.PredictRequest(model="secret", layout=pb.PRIVATE, n=1, samples_per_ciphertext=1),
            )


def test_replies_are_flooded_at_the_published_sigma():
    """The plan's σ is really added: the decrypted scores of 1024 identical samples spread by
    at least 0.8 σ (in score units); the unprotected reply (positive control for the
    measurement) spreads by well under that, so dropping or shrinking the flooding fails."""
    keys = KeySet()
    codec = ClientCodec({PRIVATE: PLAN}, D, 1, keys)
    block = codec.blocks(PLAN.max_samples_per_ciphertext(D))[0]
    assert block.s == block.n == 1024
    sigma = 2.0 ** (PLAN.log2_flood - PLAN.log2_scale_x - PLAN.log2_scale_w)

    def spread(evaluator: PrivateEvaluator) -> float:
        key_id = _honest_key(evaluator, keys)
        cts = codec.encrypt(np.zeros((block.n, D)), block)
        return float(codec.decrypt(evaluator.evaluate(cts, block.n, block.s, key_id), block).std())

    assert spread(PrivateEvaluator(PLAN, WN, BN, protect=False)) < 0.6 * sigma
    assert 0.8 * sigma < spread(PrivateEvaluator(PLAN, WN, BN)) < 1.5 * sigma


@pytest.mark.parametrize("prime", [0, 1])
def test_the_degeneracy_check_counts_small_coefficients_in_every_prime(prime):
    """An otherwise honest p0 with 65 coefficients zeroed in one prime is refused, with 60
    it is accepted: the threshold is 64 and every prime is checked."""
    keys = KeySet()
    nonce = b"\x05" * KEY_NONCE_BYTES
    honest = public_key_p0(keys.get(PLAN.params), nonce)
    n = PLAN.params.n
    words = wire.unpack_words(honest, len(PLAN.params.primes) * n, wire.C0_WORD_BYTES)
    words = words.reshape(len(PLAN.params.primes), n)

    def with_zeros(count: int) -> bytes:
        ker = kernels.for_params(PLAN.params.prime_params[prime])
        coeffs = ker.intt(words[prime].copy())
        coeffs[:count] = 0
        out = words.copy()
        out[prime] = ker.ntt(coeffs)
        return wire.pack_words(out, wire.C0_WORD_BYTES)

    store = PrivateEvaluator(PLAN, WN, BN).keys
    with pytest.raises(InvalidCiphertext, match=rf"6\d of {n} coefficients modulo prime {prime}"):
        store.register(nonce, with_zeros(65), "peer:a")
    store.register(nonce, with_zeros(60), "peer:a")


def test_when_every_identity_holds_one_key_a_newcomer_evicts_the_least_recently_active():
    """Ties for the largest holder go to the identity least recently active, not the first
    one seen: a client using its key is not evicted by newcomers holding one key each
    (positive control: the same victim idle is)."""
    sk = KeySet().get(PLAN.params)

    def reg(store, identity: str, i: int) -> str:
        nonce = i.to_bytes(KEY_NONCE_BYTES, "big")
        return store.register(nonce, public_key_p0(sk, nonce), identity)

    for active in (False, True):
        store = PrivateEvaluator(PLAN, WN, BN).keys
        store.capacity = 3
        victim = reg(store, "peer:victim", 0)
        reg(store, "peer:s1", 1)
        reg(store, "peer:s2", 2)
        if active:
            assert store.encryptor(victim) is not None  # the victim predicts
        reg(store, "peer:s3", 3)
        assert (victim in store) is active and len(store) == 3


def test_the_default_quota_stays_below_the_malicious_ciphertext_estimate():
    """At d = 4 the old default d // 2 = 2 was at or above the documented count of crafted
    equations that plausibly determine W (≈ 1.9); the default is now capped below it, and
    stays d // 2 where that is already below (d = 30)."""
    from sklearn.linear_model import LinearRegression

    import heml
    from heml.he.private import weight_equations_needed

    for d, expected in ((4, 1), (30, 15)):
        rng = np.random.default_rng(d)
        X = rng.uniform(-2, 2, size=(200, d))
        reg = LinearRegression().fit(X, X @ rng.normal(size=d) + 0.3)
        model = heml.export(reg, name="m", bounds=(-2.0, 2.0), model_privacy=True)
        plan = make_private_plan(
            model.coef,
            model.intercept,
            model.bounds.center,
            model.bounds.half_width,
            tolerance=model.tolerance,
        )
        needed = weight_equations_needed(plan, d)
        assert model.privacy["max_predictions_per_key"] == expected < needed
        if d == 4:
            assert d // 2 >= needed  # the old default was not below it


def _crafted_slots_attack(evaluator: PrivateEvaluator, keys: KeySet, slots: int):
    """A client that encrypts a crafted plaintext: `slots` samples of one ciphertext whose
    features are uniform residues c modulo Q (not features at all). Each returned coefficient
    decrypts to bias + Σ_i Wq_i·c_i + flood (mod Q): a precise equation well above the
    flooding. An LLL (embedding, dimension d + slots + 2) solves for Wq; None if not found."""
    from heml.he.encrypt import encrypt_coefficients

    plan, params = evaluator.plan, evaluator.params
    n, Q, s = params.n, params.Q, slots
    sk = keys.get(params)
    nonce = b"\x0b" * KEY_NONCE_BYTES
    key_id = evaluator.keys.register(nonce, public_key_p0(sk, nonce), "peer:m")
    geo = evaluator.geometry(s)
    rng = np.random.default_rng(11)
    c = [[int.from_bytes(rng.bytes(14), "big") % Q for _ in range(D)] for _ in range(s)]
    msg = [0] * n
    for a in range(s):
        msg[a * geo.m : a * geo.m + D] = c[a]
    c0, seeds = unpack_rns_ciphertexts(encrypt_coefficients(sk, np.zeros((1, n), np.int64)), params)
    for j, pp in enumerate(params.prime_params):
        residues = kernels.for_params(pp).ntt(np.array([v % pp.q for v in msg], dtype=np.uint64))
        c0[0, j] = modmath.add_mod(c0[0, j], residues, pp.q)
    (ct,) = wire.pack_ciphertexts(c0.reshape(1, -1), seeds)
    (reply,) = evaluator.evaluate([ct], s, s, key_id)
    pos = geo.output_positions(0).reshape(-1)
    r0, r1 = wire.unpack_reply(reply, pos.size, n, plan.reply_bits)
    signed = (
        ClientCodec({PRIVATE: plan}, D, 1, keys)
        ._decryptor(params)
        .at_positions(r0, r1, pos, plan.reply_bits)
    )
    y = [(int(v) * Q) >> plan.reply_bits for v in signed]
    wq_bits = int(plan.log2_scale_w) + 4  # |Wn| < 8 here
    bias_bits = int(plan.log2_scale_w + plan.log2_scale_x) + 2
    E = max(wq_bits, bias_bits, int(plan.log2_flood) + 4) + 2
    lw, lb, K, M = (
        1 << (E - wq_bits),
        1 << (E - bias_bits),
        1 << (E - int(plan.log2_flood) - 4),
        1 << E,
    )
    rows = [
        [lw if k == i else 0 for k in range(D)] + [0] + [K * c[a][i] for a in range(s)] + [0]
        for i in range(D)
    ]
    rows.append([0] * D + [lb] + [K] * s + [0])
    rows += [[0] * (D + 1) + [K * Q if k == a else 0 for k in range(s)] + [0] for a in range(s)]
    rows.append([0] * (D + 1) + [-K * v for v in y] + [M])
    for v in lll(rows):
        if abs(v[-1]) == M:
            return [(1 if v[-1] == M else -1) * v[i] // lw for i in range(D)]
    return None


def test_crafted_ciphertexts_give_w_at_quota_d_minus_1_and_such_quotas_are_refused(tmp_path):
    """Positive control: at d = 4, the quota d - 1 = 3 that the mode accepted before lets one
    crafted ciphertext of three samples recover Wq exactly. Now export refuses it (and a model
    file carrying it is refused at load), the default is 1, and one crafted slot finds nothing."""
    from sklearn.linear_model import LinearRegression

    import heml
    from heml.errors import ModelError
    from heml.he.private import max_private_quota
    from heml.server.registry import load_model_file

    wq = [int(v) for v in quantize(WN, PLAN.log2_scale_w)[0]]
    keys = KeySet()
    assert _crafted_slots_attack(PrivateEvaluator(PLAN, WN, BN), keys, D - 1) == wq
    assert max_private_quota(PLAN, D) == 1
    assert _crafted_slots_attack(PrivateEvaluator(PLAN, WN, BN), keys, 1) != wq
    # export and load refuse a quota at the estimate; the default stays below it
    X = RNG.uniform(-2, 2, size=(100, D))
    reg = LinearRegression().fit(X, X @ W[0] + B[0])
    with pytest.raises(ModelError, match="recover the weights"):
        heml.export(
            reg, name="m", bounds=(-2.0, 2.0), model_privacy=True, max_predictions_per_key=3
        )
    model = heml.export(reg, name="m", bounds=(-2.0, 2.0), model_privacy=True)
    assert model.privacy["max_predictions_per_key"] == 1
    model.save(tmp_path / "m.json")
    data = json.loads((tmp_path / "m.json").read_text())
    data["privacy"]["max_predictions_per_key"] = 3  # a file from before, or edited by hand
    (tmp_path / "m.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="recover the weights"):
        load_model_file(tmp_path / "m.json")


def test_two_replies_do_not_cancel_their_re_randomizers(monkeypatch):
    """Every reply needs a fresh encryption of zero: with one reused, c1_A − c1_B of two
    replies is P·(a_A − a_B) plus rounding, and the CRT attack reads W from the difference
    (positive control, the re-randomizer cached); with fresh ones it finds nothing."""
    import heml.he.private as private_mod

    params = PLAN.params
    Q, bits = params.Q, PLAN.reply_bits

    def difference_attack(evaluator: PrivateEvaluator, keys: KeySet) -> np.ndarray | None:
        key_id = _honest_key(evaluator, keys)
        c1s = []
        runs = [_one_private_reply(evaluator, key_id, keys) for _ in range(2)]
        for _cts, replies, codec, block in runs:
            geo = codec._row_geometry(block.s, PRIVATE)
            positions = geo.output_positions(0).size
            c1s.append(wire.unpack_reply(replies[0], positions, params.n, bits)[1])
        geo = runs[0][2]._row_geometry(runs[0][3].s, PRIVATE)
        ct_a, ct_b = runs[0][0][0], runs[1][0][0]
        a_a = _a_mod_Q(unpack_rns_ciphertexts([ct_a], params)[1][0], params)
        a_b = _a_mod_Q(unpack_rns_ciphertexts([ct_b], params)[1][0], params)
        a_diff = [(x - y) % Q for x, y in zip(a_a, a_b, strict=True)]
        mask = np.uint64((1 << bits) - 1)
        c1_diff = (c1s[0].astype(np.uint64) - c1s[1].astype(np.uint64)) & mask
        wq = quantize(WN, PLAN.log2_scale_w)[0]
        P = recover_weight_poly(
            c1_diff,
            bits,
            Q,
            a_diff,
            np.arange(geo.m - D, geo.m),
            int(np.abs(wq).max()).bit_length() + 1,
        )
        return None if P is None else np.array(P[::-1]) / 2.0**PLAN.log2_scale_w

    keys = KeySet()
    fresh = private_mod._encrypt_zero
    cached: list[np.ndarray] = []

    def reused(encryptor, p):
        if not cached:
            cached.append(fresh(encryptor, p))
        return cached[0]

    with monkeypatch.context() as m:
        m.setattr(private_mod, "_encrypt_zero", reused)
        assert _recovers(difference_attack(PrivateEvaluator(PLAN, WN, BN), keys))
    assert not _recovers(difference_attack(PrivateEvaluator(PLAN, WN, BN), keys))
