"""heml.audit DP auditing: Clopper–Pearson, the ε lower bound, calibration on known mechanisms."""

import math

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import binomtest, norm

from heml.audit import (
    Canary,
    NoisySumClassifier,
    analytic_gaussian_sigma,
    canary_audit,
    cp_lower,
    cp_upper,
    epsilon_lower_bound,
    gaussian_delta,
    make_canary,
    plant,
)

EPSILONS = (0.5, 1.0, 2.0)


# ---------------------------------------------------------------------- Clopper–Pearson
@pytest.mark.parametrize(("k", "n"), [(0, 50), (3, 50), (25, 50), (50, 50), (917, 1000)])
def test_clopper_pearson_matches_scipy_exact_interval(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert float(cp_lower(k, n, 0.025)) == pytest.approx(ci.low, abs=1e-12)
    assert float(cp_upper(k, n, 0.025)) == pytest.approx(ci.high, abs=1e-12)


def test_clopper_pearson_edge_cases_in_closed_form():
    n, a = 250, 0.025
    assert float(cp_upper(0, n, a)) == pytest.approx(1 - a ** (1 / n))
    assert float(cp_lower(n, n, a)) == pytest.approx(a ** (1 / n))


# ---------------------------------------------------------------------- ε lower bound
def test_perfect_separation_reaches_the_ceiling():
    b = epsilon_lower_bound(np.ones(500), np.zeros(500), delta=1e-5, alpha=0.05)
    a = 0.025
    expected = math.log((a ** (1 / 250) - 1e-5) / (1 - a ** (1 / 250)))
    assert b.epsilon_lb == pytest.approx(expected)
    assert b.ceiling == pytest.approx(expected)
    assert (b.n_in, b.n_out, b.hits_in, b.hits_out) == (250, 250, 250, 0)
    assert 4.1 < b.epsilon_lb < 4.3  # ≈ ln(250 / ln 40)


def test_threshold_is_chosen_on_the_selection_half_only():
    # selection half: perfectly separated at 0.5; held-out half: reversed
    s_in = np.r_[np.ones(100), np.zeros(100)]
    s_out = np.r_[np.zeros(100), np.ones(100)]
    b = epsilon_lower_bound(s_in, s_out, delta=0.0)
    assert b.selection_epsilon > 3.0
    assert b.epsilon_lb == 0.0  # held out, the chosen test fails completely
    assert (b.hits_in, b.hits_out) == (0, 100)


def test_delta_is_subtracted():
    rng = np.random.default_rng(0)
    s_in, s_out = rng.normal(1.0, 1.0, 20000), rng.normal(0.0, 1.0, 20000)
    lb0 = epsilon_lower_bound(s_in, s_out, delta=0.0).epsilon_lb
    lb1 = epsilon_lower_bound(s_in, s_out, delta=0.02).epsilon_lb
    assert lb1 < lb0


def test_false_alarm_rate_is_at_most_alpha():
    """Randomized response at ε=1: the bound exceeds the true ε in at most α of audits."""
    rng = np.random.default_rng(1)
    p = math.e / (1 + math.e)
    trials, n = 400, 1000
    above = 0
    for _ in range(trials):
        s_in = (rng.random(n) < p).astype(float)
        s_out = (rng.random(n) < 1 - p).astype(float)
        above += epsilon_lower_bound(s_in, s_out, delta=0.0, alpha=0.05).epsilon_lb > 1.0
    assert above / trials <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)  # α plus 3 s.e.


def test_identical_worlds_give_no_bound():
    rng = np.random.default_rng(2)
    lbs = [
        epsilon_lower_bound(rng.normal(size=1000), rng.normal(size=1000), delta=1e-5).epsilon_lb
        for _ in range(50)
    ]
    assert np.mean(np.array(lbs) > 0) <= 0.1
    assert max(lbs) < 0.3


def test_input_validation():
    with pytest.raises(ValueError, match="alpha"):
        epsilon_lower_bound([1, 2], [0, 1], delta=0, alpha=1.5)
    with pytest.raises(ValueError, match="delta"):
        epsilon_lower_bound([1, 2], [0, 1], delta=1.0)
    with pytest.raises(ValueError, match="both sides"):
        epsilon_lower_bound([1], [0, 1, 2], delta=0)
    with pytest.raises(ValueError, match="NaN"):
        epsilon_lower_bound([1, np.nan], [0, 1], delta=0)


# ---------------------------------------------------------------------- calibration
@pytest.mark.parametrize("eps", EPSILONS)
def test_calibration_randomized_response(eps):
    """One bit, flipped with probability 1/(1+e^ε): exactly ε-DP, and the test is optimal."""
    rng = np.random.default_rng(10)
    p = math.exp(eps) / (1 + math.exp(eps))
    n = 10000
    s_in = (rng.random(n) < p).astype(float)
    s_out = (rng.random(n) < 1 - p).astype(float)
    lb = epsilon_lower_bound(s_in, s_out, delta=0.0).epsilon_lb
    assert eps / 2 <= lb <= eps


@pytest.mark.parametrize("eps", EPSILONS)
def test_calibration_gaussian_mechanism(eps):
    """N(0, σ²) vs N(1, σ²) with the analytic-Gaussian σ: exactly (ε, 1e-5)-DP.

    Black-box audits of the Gaussian mechanism need many draws: the likelihood ratio exceeds
    e^ε only far in the tails. 10⁶ draws per world get the bound above ε/2.
    """
    delta = 1e-5
    sigma = analytic_gaussian_sigma(eps, delta)
    rng = np.random.default_rng(11)
    n = 1_000_000
    s_in, s_out = rng.normal(1.0, sigma, n), rng.normal(0.0, sigma, n)
    lb = epsilon_lower_bound(s_in, s_out, delta=delta).epsilon_lb
    assert eps / 2 <= lb <= eps


def _planted_world(noise):
    """50 records; record 0 is (x_c, 0) out and (x_c, 1) in: the mechanism's worst case."""
    rng = np.random.default_rng(12)
    X = rng.normal(size=(50, 5))
    y = rng.integers(0, 2, 50)
    xc = np.zeros(5)
    xc[0] = 1.0  # norm 1 in L1 and L2: exactly at the clip
    return X, y, Canary(x=xc, y=1, y_out=0, replaced_index=0, description="label flip")


@pytest.mark.parametrize("eps", EPSILONS)
def test_calibration_laplace_noisy_sum_end_to_end(eps):
    """The whole path (fits, seeds, canary statistic, bound) on a pure ε-DP classifier."""
    X, y, canary = _planted_world("laplace")
    res = canary_audit(
        lambda e: NoisySumClassifier(epsilon=e, noise="laplace"),
        X,
        y,
        epsilon=eps,
        delta=0.0,
        runs=5000,
        canary=canary,
        random_state=int(10 * eps),
    )
    assert eps / 2 <= res.bound.epsilon_lb <= eps
    assert res.scores_in.mean() > res.scores_out.mean()


def test_gaussian_noisy_sum_end_to_end_stays_below_its_claim():
    X, y, canary = _planted_world("gaussian")
    res = canary_audit(
        lambda e: NoisySumClassifier(epsilon=e, delta=1e-5),
        X,
        y,
        epsilon=1.0,
        delta=1e-5,
        runs=2000,
        canary=canary,
    )
    assert 0.0 <= res.bound.epsilon_lb <= 1.0
    # the statistic is the Gaussian mechanism's: shift Δ/σ in units of its noise
    sigma = analytic_gaussian_sigma(1.0, 1e-5, 2.0)
    assert res.effect_size == pytest.approx(2.0 / sigma, abs=0.08)


def test_analytic_gaussian_sigma():
    for eps in (0.1, 0.5, 1.0, 4.0):
        for delta in (1e-3, 1e-5, 1e-8):
            sigma = analytic_gaussian_sigma(eps, delta)
            assert gaussian_delta(eps, sigma) == pytest.approx(delta, rel=1e-8)
            if eps < 1:  # the classical bound is valid there, and looser
                assert sigma < math.sqrt(2 * math.log(1.25 / delta)) / eps

    # the closed form against the hockey-stick divergence integrated numerically
    sigma, eps = 2.0, 0.7
    integrand = lambda x: max(0.0, norm.pdf(x, 1, sigma) - math.exp(eps) * norm.pdf(x, 0, sigma))  # noqa: E731
    numeric, _ = integrate.quad(integrand, -40, 40, limit=400, points=[0.5])
    assert gaussian_delta(eps, sigma) == pytest.approx(numeric, rel=1e-6)
    assert analytic_gaussian_sigma(1.0, 1e-5, 3.0) == pytest.approx(
        3.0 * analytic_gaussian_sigma(1.0, 1e-5)
    )


# ---------------------------------------------------------------------- canaries
def test_default_canary_is_a_label_flipped_corner_of_the_data_box():
    rng = np.random.default_rng(13)
    # feature 2 is nearly a copy of feature 0: the least-variance direction mixes them
    X = rng.normal(size=(300, 4))
    X[:, 2] = X[:, 0] + 0.01 * rng.normal(size=300)
    y = (X[:, 1] > 0).astype(int)
    c = make_canary(X, y, classifier=True, random_state=0)
    assert np.all((c.x == X.min(0)) | (c.x == X.max(0)))  # a corner: inside any data bounds
    # far off the data's thin direction: |x0 − x2| is many times its spread in the data
    assert abs(c.x[0] - c.x[2]) > 20 * np.std(X[:, 0] - X[:, 2])
    assert {c.y, c.y_out} == {0, 1}
    X_in, y_in = plant(X, y, c, world="in")
    X_out, y_out = plant(X, y, c, world="out")
    changed = np.flatnonzero(np.any(X_in != X, axis=1) | (y_in != y))
    assert changed.tolist() in ([c.replaced_index], [])  # at most the replaced row
    assert np.array_equal(X_in, X_out)  # same features in both worlds
    assert (y_in != y_out).sum() == 1 and y_in[c.replaced_index] == c.y
    # a one-sided canary leaves the out world untouched
    one_sided = Canary(x=c.x, y=c.y, replaced_index=3, description="")
    X_o, y_o = plant(X, y, one_sided, world="out")
    assert np.array_equal(X_o, X) and np.array_equal(y_o, y)


def test_regression_canary_uses_the_ends_of_the_target_range():
    rng = np.random.default_rng(14)
    X = rng.normal(size=(200, 3))
    y = X @ [1.0, 2.0, 3.0] + rng.normal(size=200)
    c = make_canary(X, y, classifier=False)
    assert {c.y, c.y_out} == {y.min(), y.max()}


def test_string_labels_are_not_truncated():
    X = np.arange(12, dtype=float).reshape(6, 2)
    y = np.array(["a", "b", "a", "b", "a", "b"])
    c = Canary(x=np.zeros(2), y="a-much-longer-label", replaced_index=1, description="")
    _, y_in = plant(X, y, c)
    assert y_in[1] == "a-much-longer-label"
