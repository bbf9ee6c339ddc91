"""ROW and COLUMN layouts end to end in one process (encrypt -> evaluate -> decrypt)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from heml.errors import InvalidCiphertext, ModelError
from heml.he.codec import ClientCodec
from heml.he.keys import KeySet
from heml.he.plan import COLUMN, ROW, RowGeometry, make_plan, normalized_weights, server_weights
from heml.he.scoring import Block, ServerScorer, default_layout_params

KEYS = KeySet()


def _roundtrip(W, b, lo, hi, X, layout=None, tol=1e-4):
    center, hw = (lo + hi) / 2, (hi - lo) / 2
    server = ServerScorer(W, b, center, hw, tol)
    codec = ClientCodec(server.plans, W.shape[1], W.shape[0], KEYS)
    Z = np.clip((X - center) / hw, -1, 1)
    out = np.empty((X.shape[0], W.shape[0]))
    for blk in codec.blocks(X.shape[0], layout):
        cts = codec.encrypt(Z[blk.start : blk.stop], blk)
        replies = server.evaluate(blk.layout, blk.n, blk.s, cts)
        out[blk.start : blk.stop] = codec.decrypt(replies, blk)
    return out, server


CASES = [
    # (d, k, bound, n, layout)
    (1, 1, 3.0, 5, ROW),
    (30, 1, 8.0, 1, ROW),
    (30, 1, 8.0, 70, ROW),
    (30, 10, 8.0, 9, ROW),
    (64, 10, 8.0, 300, COLUMN),
    (7, 3, 2.0, 4096, COLUMN),
    (2500, 2, 4.0, 3, ROW),  # d > N: several feature chunks per sample
    (300, 1, 4.0, 5000, None),  # mixed: one full COLUMN block and a ROW remainder
]


@pytest.mark.parametrize("d,k,bound,n,layout", CASES)
def test_encrypted_scores_match_float64_within_the_plan_bound(d, k, bound, n, layout):
    rng = np.random.default_rng(d * 7 + k)
    W = rng.normal(size=(k, d))
    b = rng.normal(size=k) * 3
    lo, hi = np.full(d, -bound), np.full(d, bound)
    X = rng.uniform(-bound, bound, size=(n, d))
    X[0] = bound  # a corner of the box: the largest possible outputs
    got, server = _roundtrip(W, b, lo, hi, X, layout)
    want = X @ W.T + b
    used = {layout} if layout else set(server.plans)
    bound_err = max(server.plans[lay].error_bound for lay in used)
    assert bound_err <= 1e-4
    assert np.abs(got - want).max() <= bound_err


def test_raw_features_with_large_outputs_use_more_digits_and_stay_exact():
    rng = np.random.default_rng(5)
    d = 10
    lo, hi = rng.uniform(1e3, 2e3, size=d), rng.uniform(8e3, 1e4, size=d)
    W = rng.normal(size=(1, d)) * 50
    b = np.array([1e5])
    X = rng.uniform(lo, hi, size=(200, d))
    got, server = _roundtrip(W, b, lo, hi, X)
    want = X @ W.T + b
    assert np.abs(want).max() > 1e5
    assert server.plans[ROW].digits > 1 or server.plans[ROW].reply_bits > 32
    assert np.abs(got - want).max() <= 1e-4 * 1  # absolute 1e-4 even though |y| ~ 1e6


def test_row_values_can_never_wrap_the_modulus():
    """Exact worst case over the input box for every digit row, for varied models."""
    rng = np.random.default_rng(9)
    for d, k, scale in [(5, 1, 1.0), (40, 3, 30.0), (200, 2, 1e3), (12, 4, 1e-3)]:
        W = rng.normal(size=(k, d)) * scale
        b = rng.normal(size=k) * scale * 10
        center, hw = np.zeros(d), np.full(d, 5.0)
        for layout, params in default_layout_params().items():
            plan = make_plan(W, b, center, hw, layout=layout, params=params, tolerance=1e-4)
            Wn, bn = normalized_weights(W, b, center, hw)
            sw = server_weights(plan, Wn, bn)
            T, base = plan.digits, 1 << plan.digit_bits
            worst = [
                (1 << plan.log2_scale_x) * sum(abs(int(v)) for v in sw.digits[t, c])
                + abs(int(sw.biases[t, c]))
                for t in range(T)
                for c in range(k)
            ]
            assert max(worst) < params.q // 2, (d, k, scale, layout)
            # and the digits recombine exactly to the quantized weights and biases
            recombined = sum(sw.digits[t].astype(object) * base**t for t in range(T))
            q = np.rint(np.ldexp(Wn, plan.log2_scale_w)).astype(np.int64)
            assert (recombined == q.astype(object)).all()
            assert 0 < plan.error_bound <= 1e-4


def test_planner_refuses_what_it_cannot_meet():
    d = 4
    W = np.full((1, d), 1e13)
    with pytest.raises(ModelError, match="narrow the declared bounds"):
        make_plan(
            W,
            np.zeros(1),
            np.zeros(d),
            np.ones(d),
            layout=ROW,
            params=default_layout_params()[ROW],
            tolerance=1e-12,
        )


def test_row_geometry_places_outputs_without_collisions():
    for n, d, k, T, s in [(2048, 30, 10, 2, 3), (2048, 5, 1, 1, 400), (2048, 3000, 4, 3, 1)]:
        geo = RowGeometry(n, d, k, T, s)
        assert geo.classes_per_group * geo.s * geo.m <= n
        pos = np.concatenate([geo.output_positions(g).reshape(-1) for g in range(geo.groups)])
        per_group = [geo.output_positions(g).size for g in range(geo.groups)]
        assert sum(per_group) == k * T * s
        assert {geo.group_rows(g)[0] for g in range(geo.groups)} == set(range(T))
        assert pos.max() < n
        for g in range(geo.groups):
            assert len(set(geo.output_positions(g).reshape(-1).tolist())) == per_group[g]


def test_server_rejects_wrong_counts_sizes_and_values():
    rng = np.random.default_rng(1)
    d = 12
    W, b = rng.normal(size=(2, d)), rng.normal(size=2)
    server = ServerScorer(W, b, np.zeros(d), np.ones(d), 1e-4)
    codec = ClientCodec(server.plans, d, 2, KEYS)
    Z = rng.uniform(-1, 1, size=(3, d))
    blk = Block(0, 3, COLUMN, 0)
    cts = codec.encrypt(Z, blk)
    with pytest.raises(InvalidCiphertext, match="12 features"):
        server.evaluate(COLUMN, 3, 0, [*cts, cts[0]])
    with pytest.raises(InvalidCiphertext, match="ended after 11 of 12"):
        server.evaluate(COLUMN, 3, 0, cts[:-1])
    with pytest.raises(InvalidCiphertext, match="bytes"):
        server.evaluate(COLUMN, 3, 0, [*cts[:-1], cts[-1][:-5]])
    with pytest.raises(InvalidCiphertext, match="at least one sample"):
        server.evaluate(COLUMN, 0, 0, cts)
    with pytest.raises(InvalidCiphertext, match="at most 4096"):
        server.evaluate(COLUMN, 5000, 0, cts)
    row = Block(0, 3, ROW, 3)
    rcts = codec.encrypt(Z, row)
    with pytest.raises(InvalidCiphertext, match="samples_per_ciphertext"):
        server.evaluate(ROW, 3, 10_000, rcts)
    with pytest.raises(InvalidCiphertext, match="need 1 ciphertexts"):
        server.evaluate(ROW, 3, 3, rcts * 2)
    # a well-formed ciphertext still decrypts correctly after all that
    out = codec.decrypt(server.evaluate(ROW, 3, 3, rcts), row)
    assert np.abs(out - (Z @ W.T + b)).max() < 1e-4


def test_keys_round_trip_through_a_file(tmp_path):
    path = tmp_path / "keys.json"
    ks = KeySet.open(path)
    for p in default_layout_params().values():
        ks.get(p)
    assert (path.stat().st_mode & 0o777) == 0o600
    again = KeySet.load(path)
    for p in default_layout_params().values():
        np.testing.assert_array_equal(again.get(p).s, ks.get(p).s)
    assert math.isclose(
        np.abs(again.get(default_layout_params()[ROW]).s).mean(), 2 / 3, abs_tol=0.06
    )
