"""Model-privacy mode: an attacker holding the secret key reads both reply polynomials.

Without the mode, the reply's c1 is a·P (the client's own uniform polynomial a times the
weight polynomial P), only rounded by the modulus switch: a small lattice reduction recovers P,
hence W, from one reply. With the mode, c1 is re-randomized by a fresh encryption of zero under
the client's public key and the outputs are noise-flooded: the same attack finds nothing, and
the client still decrypts correct predictions.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from heml.he import kernels, prng, wire
from heml.he.codec import ClientCodec
from heml.he.keys import KeySet
from heml.he.params import HEParams
from heml.he.plan import ROW, normalized_weights, quantize
from heml.he.private import PRIVATE, PrivateEvaluator, make_private_plan
from heml.he.scoring import Block, ServerScorer


# ---------------------------------------------------------------------- a small exact LLL
def lll(basis: list[list[int]], delta: Fraction = Fraction(99, 100)) -> list[list[int]]:
    """Textbook LLL in exact rational arithmetic (small dimensions only)."""
    b = [row[:] for row in basis]
    n = len(b)

    def dot(u, v):
        return sum(x * y for x, y in zip(u, v, strict=True))

    def gram_schmidt():
        bstar, mu, norms = [], [[Fraction(0)] * n for _ in range(n)], []
        for i in range(n):
            v = [Fraction(x) for x in b[i]]
            for j in range(i):
                mu[i][j] = Fraction(dot(b[i], bstar[j])) / norms[j]
                v = [x - mu[i][j] * y for x, y in zip(v, bstar[j], strict=True)]
            bstar.append(v)
            norms.append(dot(v, v))
        return bstar, mu, norms

    _bstar, mu, norms = gram_schmidt()
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
        else:
            b[k], b[k - 1] = b[k - 1], b[k]
            _bstar, mu, norms = gram_schmidt()
            k = max(k - 1, 1)
    return b


def recover_weight_poly(c1_words, bits, modulus, a_coeff, support, bound_bits, equations=5):
    """Find small P on `support` with (a * P)[j] ≈ c1[j]·q/2^bits (mod q) for a few j."""
    n = a_coeff.size
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


def test_privacy_mode_reply_hides_the_weights_and_stays_correct():
    plan = make_private_plan(W, B, CENTER, HW, tolerance=1e-4)
    evaluator = PrivateEvaluator(plan, WN, BN)
    keys = KeySet()
    codec = ClientCodec({PRIVATE: plan}, D, 1, keys)
    key = keys.get(plan.params)
    key_id = evaluator.keys.register(key.public_key_bytes())
    X = RNG.uniform(-2, 2, size=(6, D))
    Z = (X - CENTER) / HW
    block = codec.blocks(6)[0]
    cts = codec.encrypt(Z, block)
    replies = evaluator.evaluate(cts, block.n, block.s, key_id)
    got = codec.decrypt(replies, block)
    np.testing.assert_allclose(got, X @ W.T + B, atol=plan.error_bound)
    assert plan.error_bound <= 1e-4 and plan.hiding_bits >= 40

    # the same attack, prime by prime, on the re-randomized reply finds nothing
    p0 = HEParams(plan.params.n, plan.params.primes[0])
    geo = codec._row_geometry(block.s, PRIVATE)
    from heml.he.private import _expand_rns, unpack_rns_ciphertexts

    _c0, seeds = unpack_rns_ciphertexts(cts, plan.params)
    a0 = kernels.for_params(p0).intt(_expand_rns(seeds[0], plan.params)[0])
    positions = geo.output_positions(0).size
    _c0_out, c1 = wire.unpack_reply(replies[0], positions, plan.params.n, plan.reply_bits)
    wq = quantize(WN, plan.log2_scale_w)[0]
    P = recover_weight_poly(
        c1,
        plan.reply_bits,
        plan.params.Q,
        a0,
        np.arange(geo.m - D, geo.m),
        int(np.abs(wq).max()).bit_length() + 1,
    )
    if P is not None:
        recovered = np.array(P[::-1]) / 2.0**plan.log2_scale_w
        assert not np.allclose(recovered, WN[0], atol=1e-3)


def test_unregistered_or_malformed_public_keys_are_refused():
    from heml.errors import InvalidCiphertext

    plan = make_private_plan(W, B, CENTER, HW, tolerance=1e-4)
    evaluator = PrivateEvaluator(plan, WN, BN)
    with pytest.raises(InvalidCiphertext, match="public key has"):
        evaluator.keys.register(b"\x00" * 100)
    with pytest.raises(InvalidCiphertext, match="below their primes"):
        evaluator.keys.register(b"\xff" * (2 * 7 * plan.params.n * 2))
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
    with heml.serve(tmp_path, port=0) as server, heml.Client(f"localhost:{server.port}") as c:
        model = c.model("secret")
        assert model.info.model_privacy and list(model.info.plans) == [PRIVATE]
        got = model.predict_proba(X.iloc[:8])
        np.testing.assert_allclose(got, clf.predict_proba(X.iloc[:8]), atol=1e-4)
        assert model.last_call.layouts == {PRIVATE: 8}
        with pytest.raises(ResourceExhausted, match="quota of 12 predictions per key"):
            model.predict_proba(X.iloc[:5])  # 8 + 5 > 12 < d = 30
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
        with pytest.raises(InvalidRequest):
            c._unary(
                c._stub.Predict,
                pb.PredictRequest(model="secret", layout=pb.PRIVATE, n=1, samples_per_ciphertext=1),
            )
