"""Guards that hand-written semantic breaks (issue 18, outside review) got past the other tests.

Each test is written from a documented promise (docs/protocol.md, docs/model-privacy.md,
docs/security.md, docs/dp.md), not from the line it guards, and each fails when that guard is
removed or bent. Real components throughout: real keys and ciphertexts, the worker's gRPC
stack on loopback, real DP fits.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from heml.dp import BudgetAccountant, BudgetError, DPLinearRegression, DPLogisticRegression
from heml.he import prng
from heml.he.private import default_privacy_params, key_p1

PARAMS = default_privacy_params()


# ---------------------------------------------------------------- model-privacy public keys
def test_p1_is_expanded_from_sha256_of_the_domain_and_the_nonce_and_differs_per_nonce():
    """docs/protocol.md: both sides expand p1 from SHA-256("heml/v1/model-privacy/public-key-p1"
    ‖ 0x00 ‖ key_nonce), so every nonce gives its own p1 (and a client written from the spec
    computes the p1 the server uses)."""
    nonces = [bytes(32), bytes(range(32)), b"\xff" * 32]
    p1s = []
    for nonce in nonces:
        seed = hashlib.sha256(b"heml/v1/model-privacy/public-key-p1" + b"\x00" + nonce).digest()
        expected = prng.expand(seed, PARAMS.n, PARAMS.primes)
        got = key_p1(nonce, PARAMS)
        assert got.shape == (len(PARAMS.primes), PARAMS.n)
        assert np.array_equal(got, expected)
        p1s.append(got)
    for i in range(len(p1s)):
        for j in range(i):
            # independent uniform polynomials agree on about N/q of their words: none
            assert np.count_nonzero(p1s[i] == p1s[j]) == 0


# ---------------------------------------------------------------- DP budget reservation
class _CsprngFailure(OSError):
    pass


@pytest.mark.parametrize("kind", ["linear", "logistic"])
def test_the_budget_is_spent_before_the_first_noise_draw_and_kept_when_the_fit_fails(
    kind, monkeypatch
):
    """docs/dp.md: a fit reserves (epsilon, delta) before the mechanism uses the data values,
    and a failure after the reservation keeps the spend. The OS CSPRNG failing at the first
    noise draw is such a failure: the spend must already be in the ledger, and no model set."""
    rng = np.random.default_rng(3)
    X = rng.uniform(-1, 1, size=(400, 3))
    if kind == "linear":
        y = X @ np.array([0.5, -0.25, 0.1])
        est = DPLinearRegression(epsilon=0.6, delta=1e-5, bounds_X=(-1, 1), bounds_y=(-1, 1))
    else:
        y = (X[:, 0] > 0).astype(int)
        est = DPLogisticRegression(epsilon=0.6, delta=1e-5, bounds_X=(-1, 1), classes=[0, 1])
    accountant = BudgetAccountant(epsilon=1.0, delta=1e-4)
    est.set_params(accountant=accountant)
    seen = []

    def failing_urandom(size):
        seen.append(accountant.spent)
        raise _CsprngFailure("entropy source unavailable")

    monkeypatch.setattr(os, "urandom", failing_urandom)
    with pytest.raises(_CsprngFailure):
        est.fit(X, y)
    monkeypatch.undo()
    assert seen and seen[0] == pytest.approx((0.6, 1e-5))  # paid before the first draw
    assert accountant.spent == pytest.approx((0.6, 1e-5))  # and kept after the failure
    assert not hasattr(est, "coef_")
    # the kept spend binds: a second fit of the same size no longer fits in the budget
    with pytest.raises(BudgetError):
        est.fit(X, y)
    assert accountant.spent == pytest.approx((0.6, 1e-5))
