"""The DP estimators' noise scales and clipping, recomputed from docs/dp.md (issue 18).

* AdaSSP ("Mechanisms and calibration"): releases λ_min(AᵀA) (Δ = B²), the upper triangle of
  AᵀA (Δ = √2·B²) and Aᵀy (Δ = 2·B·B_y), each Δ widened by the lattice rounding (one step per
  coordinate, "Noise and floating point"); shares 0.1/0.3/0.6 of the GDP budget μ², calibrated
  jointly to (ε, δ): σ_i = m(ε, δ)·Δ_i/√share_i with m the exact analytic-Gaussian multiplier.
  Ridge λ = max(0, σ₂√(p log(2p²/ρ)) − λ̃_min), λ̃_min = max(noisy λ_min − σ₁·z_0.975, 0).
* DP gradient descent: per-example gradients (p − e_y)aᵀ clipped to C = 0.5 in Frobenius norm,
  Δ = 2C (plus the lattice slack of a sum bounded by n·C); T steps W ← W − 2·G̃/n from 0, the
  T releases composed to (ε, δ): multiplier √T·m(ε, δ); tail averaging is post-processing.
* AMP: the residual Gaussian covers (2γ + s√p)/λ plus the output lattice's slack.

The exact Gaussian multiplier is computed here from Balle & Wang's formula, not by
dp-accounting. Seeded sources make the replays exact (seeded noise is for tests only).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from heml.dp import BudgetAccountant, DPLinearRegression, DPLogisticRegression, _linear, _logistic
from heml.dp._calibration import CALIBRATION_MARGIN
from heml.dp._noise import NoiseSource, lattice_step, rounding_slack

C = 0.5


def _multiplier(eps: float, delta: float) -> float:
    """σ/Δ of the one Gaussian release that is exactly (ε, δ)-DP (Balle & Wang 2018)."""

    def excess(mu: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta

    # heml adds CALIBRATION_MARGIN (1 + 1e-9) to cover dp-accounting's solver (round 5)
    return 1.0 / brentq(excess, 1e-6, 60.0, xtol=1e-15) * CALIBRATION_MARGIN


# ----------------------------------------------------------------------------- AdaSSP
def _adassp_data(n=300, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(n, d))
    y = X @ np.array([0.5, -0.3, 0.2])[:d] + 0.05 * rng.standard_normal(n)
    return X, y


@pytest.mark.parametrize(("eps", "delta"), [(1.0, 1e-5), (0.4, 1e-6)])
def test_adassp_sigmas_are_the_documented_calibration(eps, delta):
    """Box [-2, 3]^d (no row clip), target box [-1, 3]: B_x = ‖half-widths‖, κ = B_x/√d,
    B² = B_x² + κ², B_y = 2."""
    n, d = 300, 3
    X, y = _adassp_data(n, d)
    est = DPLinearRegression(epsilon=eps, delta=delta, bounds_X=(-2.0, 3.0), bounds_y=(-1.0, 3.0),
                             data_norm=math.inf, random_state=0, method="adassp",
                             accountant=BudgetAccountant())  # fmt: skip
    est.fit(X, y)
    B_x = math.sqrt(d * 2.5**2)
    kappa = B_x / math.sqrt(d)
    B = math.sqrt(B_x**2 + kappa**2)
    B_y = 2.0
    p = d + 1
    exact = [B**2, math.sqrt(2.0) * B**2, 2.0 * B * B_y]
    # the lattice slack: one step per released coordinate, the step fixed by the public
    # magnitude bound of each statistic (n·B², n·B², n·B·B_y)
    slack = [rounding_slack(n * B**2, 1), rounding_slack(n * B**2, p * (p + 1) // 2),
             rounding_slack(n * B * B_y, p)]  # fmt: skip
    sens = est.noise_["sensitivities"]
    for got, want, extra in zip(sens, exact, slack, strict=True):
        assert got - want == pytest.approx(extra, rel=1e-3)
    m = _multiplier(eps, delta)
    shares = (0.1, 0.3, 0.6)
    want_sigmas = [m * s / math.sqrt(sh) for s, sh in zip(sens, shares, strict=True)]
    np.testing.assert_allclose(est.noise_["sigmas"], want_sigmas, rtol=1e-7)
    recorded = est.dp_guarantee_["hyperparameters"]
    assert recorded["sigmas"] == est.noise_["sigmas"]
    assert recorded["sensitivities"] == est.noise_["sensitivities"]


def _adassp_replay(A, t, eps, delta, B, B_y, seed):
    """docs/dp.md's AdaSSP, step by step, with the same seeded lattice releases."""
    n, p = A.shape
    m = _multiplier(eps, delta)
    iu = np.triu_indices(p)
    sens = [B**2 + rounding_slack(n * B**2, 1),
            math.sqrt(2) * B**2 + rounding_slack(n * B**2, len(iu[0])),
            2 * B * B_y + rounding_slack(n * B * B_y, p)]  # fmt: skip
    s1, s2, s3 = (m * s / math.sqrt(sh) for s, sh in zip(sens, (0.1, 0.3, 0.6), strict=True))
    noise = NoiseSource(seed)
    AtA = A.T @ A
    lam_noisy = float(noise.release(np.linalg.eigvalsh(AtA)[0], s1, n * B**2))
    lam_low = max(lam_noisy - s1 * norm.ppf(0.975), 0.0)
    ridge = max(0.0, s2 * math.sqrt(p * math.log(2 * p * p / 0.05)) - lam_low)
    M = np.zeros((p, p))
    M[iu] = noise.release(AtA[iu], s2, n * B**2)
    M = M + np.triu(M, 1).T
    v = noise.release(A.T @ t, s3, n * B * B_y)
    w, V = np.linalg.eigh(M + ridge * np.eye(p))
    w = np.maximum(w, max(ridge, 1e-12) * 1e-6)
    return V @ ((V.T @ v) / w), ridge, lam_noisy, s1


@pytest.mark.parametrize(("n", "eps", "seed"), [(400, 1.0, 3), (60, 0.5, 4), (5000, 3.0, 5)])
def test_adassp_replays_from_its_documented_steps(n, eps, seed):
    """Seeded, the model is exactly the documented noisy ridge solve: noisy λ_min → its
    97.5 % lower bound → the ridge; noisy AᵀA (upper triangle, mirrored) and Aᵀy."""
    rng = np.random.default_rng(seed)
    d = 3
    A = np.hstack([rng.uniform(-1, 1, (n, d)), np.full((n, 1), 1.0)])
    t = rng.uniform(-1, 1, n)
    B = float(np.linalg.norm(A, axis=1).max()) + 0.1
    B_y = 1.0
    delta = 1e-5
    theta, details = _linear._adassp(A, t, eps, delta, B, B_y, NoiseSource(seed))
    want, ridge, _, _ = _adassp_replay(A, t, eps, delta, B, B_y, seed)
    assert details["ridge"] == pytest.approx(ridge, rel=1e-12, abs=1e-300)
    np.testing.assert_allclose(theta, want, rtol=1e-9, atol=1e-12)


def test_adassp_ridge_covers_exactly_the_noise_above_the_lower_bound():
    """A design whose λ_min lies between the lower bound's two sides: the ridge is positive
    and the noisy λ_min's lower bound is positive too (neither max() floor decides)."""
    rng = np.random.default_rng(1)
    n, d, eps, delta = 400, 3, 1.0, 1e-5
    A = np.hstack([rng.uniform(-1, 1, (n, d)), np.full((n, 1), 1.0)])
    t = rng.uniform(-1, 1, n)
    B = float(np.linalg.norm(A, axis=1).max())
    seen = 0
    for seed in range(20):
        _, details = _linear._adassp(A, t, eps, delta, B, 1.0, NoiseSource(seed))
        _, ridge, lam_noisy, s1 = _adassp_replay(A, t, eps, delta, B, 1.0, seed)
        assert details["ridge"] == pytest.approx(ridge, rel=1e-12, abs=1e-300)
        seen += ridge > 0 and lam_noisy - s1 * norm.ppf(0.975) > 0
    assert seen >= 5  # the case this test is for really happened


def test_adassp_at_infinite_epsilon_is_least_squares_without_noise():
    rng = np.random.default_rng(2)
    A = np.hstack([rng.uniform(-1, 1, (50, 2)), np.ones((50, 1))])
    t = rng.uniform(-1, 1, 50)
    theta, details = _linear._adassp(A, t, math.inf, 1e-5, 2.0, 1.0, NoiseSource(None))
    np.testing.assert_allclose(theta, np.linalg.lstsq(A, t, rcond=None)[0], rtol=1e-12)
    assert details["ridge"] == 0.0 and details["sigmas"] == [0.0, 0.0, 0.0]
    assert details["sensitivities"] is None


# ----------------------------------------------------------------------------- DP-GD
def _softmax(Z):
    Z = Z - Z.max(axis=1, keepdims=True)
    E = np.exp(Z)
    return E / E.sum(axis=1, keepdims=True)


def _clipped_sum(A, Y, W, clip):
    """Σ_i of (p_i − y_i)a_iᵀ, each scaled onto Frobenius norm ``clip`` if longer."""
    G = (_softmax(A @ W.T) - Y)[:, :, None] * A[:, None, :]  # (n, k, p): one per example
    norms = np.sqrt((G * G).sum(axis=(1, 2)))
    return (G * np.minimum(1.0, clip / np.maximum(norms, 1e-300))[:, None, None]).sum(axis=0)


def test_every_examples_gradient_is_clipped_to_c_in_frobenius_norm():
    rng = np.random.default_rng(0)
    n, k, p = 40, 3, 4
    A = rng.standard_normal((n, p)) * rng.uniform(0.05, 3.0, (n, 1))  # short and long rows
    Y = np.eye(k)[rng.integers(0, k, n)]
    W = rng.standard_normal((k, p))
    want = _clipped_sum(A, Y, W, C)
    norms = np.linalg.norm(A, axis=1)
    for row_norms in (None, norms):
        got = _logistic.clipped_gradient_sum(A, Y, W, C, row_norms)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
    # both sides of the clip occur, and the clip matters: an unclipped sum differs
    per_example = np.linalg.norm(_softmax(A @ W.T) - Y, axis=1) * norms
    assert (per_example > C).sum() >= 5 and (per_example < C).sum() >= 5
    assert not np.allclose(_clipped_sum(A, Y, W, 10.0), want)
    # large logits, and rows whose logits differ by far more than exp's range: each row's
    # softmax is still finite (it is shift-invariant per row), so the clip still applies
    big = np.array([[400.0, 0.0, 0.0, 0.0], [-400.0, 0.0, 0.0, 0.0], [0.0, 300.0, 0.0, 0.0]])
    A3 = np.array([[2.0, 0, 0, 0], [-2.0, 0, 0, 0], [0.01, 0, 0, 0], [0, 3.0, 0, 0]])
    Y3 = np.eye(k)[[1, 0, 2, 0]]
    got = _logistic.clipped_gradient_sum(A3, Y3, big, C)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, _clipped_sum(A3, Y3, big, C), rtol=1e-10, atol=1e-13)
    # replace-one: swapping one example moves the sum by at most 2C
    A2, Y2 = A.copy(), Y.copy()
    A2[0], Y2[0] = -5.0 * A[0], np.roll(Y[0], 1)
    moved = np.linalg.norm(_logistic.clipped_gradient_sum(A2, Y2, W, C) - want)
    assert C < moved <= 2 * C + 1e-12


def _steps(n, k, d_aug, eps, delta):
    nu = n / (_multiplier(eps, delta) * math.sqrt(k * d_aug))
    return int(min(max(round(nu * nu / 8), 5), 200))


@pytest.mark.parametrize(
    ("n", "k", "eps"), [(600, 3, 1.0), (150, 2, 0.5), (300, 2, 1.0), (200, 2, 1.0)]
)
def test_dpgd_replays_from_its_documented_steps(n, k, eps):
    """σ = √T·m(ε, δ)·(2C + slack), W ← W − (2/n)·release(G) from 0, tail average when
    T ≥ 100: the seeded run is exactly this."""
    rng = np.random.default_rng(n)
    p, delta = 3, 1e-5
    A = rng.standard_normal((n, p))
    A /= np.maximum(np.linalg.norm(A, axis=1, keepdims=True), 1.0)  # ‖a‖ ≤ 1
    y = rng.integers(0, k, n)
    W, details = _logistic._dp_gradient_descent(A, y, k, eps, delta, NoiseSource(n))
    T = _steps(n, k, p, eps, delta)
    sens = 2 * C + rounding_slack(n * C, k * p)
    multiplier = math.sqrt(T) * _multiplier(eps, delta)
    sigma = multiplier * sens
    assert details["steps"] == T
    assert details["clip"] == C
    assert details["sensitivity"] == pytest.approx(sens, rel=1e-15)
    assert details["noise_multiplier"] == pytest.approx(multiplier, rel=1e-7)
    assert details["sigma"] == pytest.approx(sigma, rel=1e-7)
    # σ = multiplier × Δ exactly (Δ = 1 + a lattice slack of ~1e-9, so only a tight check sees
    # a σ computed as multiplier / Δ)
    assert details["sigma"] == pytest.approx(
        details["noise_multiplier"] * details["sensitivity"], rel=1e-14
    )
    first = T // 2 + 1 if T >= 100 else T
    assert details["averaged_iterates"] == [first, T]
    # the exported guarantee states the public rules it used
    assert details["learning_rate"] == 2.0
    assert details["step_rule"] == (
        "T = clip(round(nu^2 * 0.125), 5, 200), nu = n / (m(eps, delta) * sqrt(k * (d + 1)))"
    )
    assert details["averaging"].startswith("the released W is the mean of the iterates W_t")
    assert "(the last half when T >= 100, else the last iterate alone)" in details["averaging"]
    assert details["averaging"].endswith("post-processing of the T noisy gradient releases")
    noise, Y = NoiseSource(n), np.eye(k)[y]
    Wt, total = np.zeros((k, p)), np.zeros((k, p))
    for step in range(1, T + 1):
        G = _clipped_sum(A, Y, Wt, C)
        Wt = Wt - (2.0 / n) * noise.release(G, details["sigma"], n * C)
        if step >= first:
            total += Wt
    np.testing.assert_allclose(W, total / (T - first + 1), rtol=1e-8, atol=1e-12)


def test_dpgd_steps_follow_the_public_rule_and_its_clip():
    for n, k, d_aug, eps in [(50, 3, 5, 0.5), (900, 2, 4, 1.0), (100000, 3, 10, 5.0),
                             (500, 4, 6, 1.0)]:  # fmt: skip
        assert _logistic.dpgd_steps(n, k, d_aug, eps, 1e-5) == _steps(n, k, d_aug, eps, 1e-5)
    assert _logistic.dpgd_steps(50, 3, 5, 0.5, 1e-5) == 5
    assert _logistic.dpgd_steps(100000, 3, 10, 5.0, 1e-5) == 200
    assert 5 < _logistic.dpgd_steps(500, 4, 6, 1.0, 1e-5) < 200


def test_dpgd_at_infinite_epsilon_adds_no_noise():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((80, 3)) / 3
    y = (A[:, 0] > 0).astype(int) ^ (rng.uniform(size=80) < 0.2)
    W, details = _logistic._dp_gradient_descent(A, y, 2, math.inf, 1e-5, NoiseSource(None))
    assert details["steps"] == 0 and details["sigma"] == 0.0
    assert details["solver"] == "L-BFGS (exact)"
    W2, _ = _logistic._dp_gradient_descent(A, y, 2, math.inf, 1e-5, NoiseSource(None))
    np.testing.assert_array_equal(W, W2)


def test_a_dpgd_fit_exports_the_calibrated_sigma():
    """End to end: a declared-bounds fit records σ, T and C as the replay computes them."""
    rng = np.random.default_rng(5)
    n, d = 500, 3
    X = rng.uniform(-1, 1, (n, d))
    y = np.arange(n) % 3
    clf = DPLogisticRegression(epsilon=1.0, delta=1e-5, classes=[0, 1, 2], bounds_X=(-1, 1),
                               random_state=0, accountant=BudgetAccountant()).fit(X, y)  # fmt: skip
    h = clf.dp_guarantee_["hyperparameters"]
    T = _steps(n, 3, d + 1, 1.0, 1e-5)
    assert h["steps"] == T
    assert h["sigma"] == pytest.approx(math.sqrt(T) * _multiplier(1.0, 1e-5) * 2 * C, rel=1e-6)


# ----------------------------------------------------------------------------- AMP residual
@pytest.mark.parametrize(
    ("gamma", "lam", "sigma", "magnitude", "p"),
    [(1e-8, 2.0, 3.0, 500.0, 4), (3e-6, 0.7, 40.0, 1e4, 11), (1e-9, 10.0, 0.3, 3.0, 1)],
)
def test_the_amp_residual_covers_the_stopping_gap_and_both_lattices(
    gamma, lam, sigma, magnitude, p
):
    want = (2 * gamma + lattice_step(sigma) * math.sqrt(p)) / lam
    want += lattice_step(magnitude) * math.sqrt(p)
    got = _logistic.amp_residual_sensitivity(gamma, lam, sigma, magnitude, p)
    assert got == pytest.approx(want, rel=1e-12)
