"""Calibration promises checked against an independent computation (issue 18; docs/dp.md).

The exact δ of the Gaussian mechanism with noise multiplier m (sensitivity 1) at ε is
Φ(1/(2m) − εm) − e^ε·Φ(−1/(2m) − εm) (Balle & Wang 2018); it is computed here with scipy, not
through dp-accounting, and every calibration heml records must satisfy it:

* composition: k Gaussian releases with multipliers m_i are one Gaussian with (Σ m_i⁻²)^(-1/2);
* objective perturbation: ε = ε_J + ε_G, ε_J = log(1 + β/λ) ≤ share·ε, and
  δ_G(σ/2; ε_G) + 2·δ_G(σ; ε_G) ≤ δ with δ split 99 % / 2 × 0.5 %;
* AMP: (ε, δ) split by public shares in (0, 1), both parts calibrated, summing to (ε, δ).
"""

from __future__ import annotations

import math
from importlib.metadata import version

import dp_accounting
import pytest
from scipy.stats import norm

from heml.dp import _calibration as cal


def gaussian_delta(multiplier: float, eps: float) -> float:
    m = multiplier
    return float(norm.cdf(1 / (2 * m) - eps * m) - math.exp(eps) * norm.cdf(-1 / (2 * m) - eps * m))


def test_composed_releases_count_every_release():
    one = cal.effective_multiplier(cal.gaussian_event([1.0]))
    assert one == pytest.approx(1.0, rel=1e-9)
    two = cal.effective_multiplier(cal.gaussian_event([1.0, 2.0]))
    assert two == pytest.approx((1 + 1 / 4) ** -0.5, rel=1e-9)
    repeated = cal.effective_multiplier(cal.gaussian_event([2.0], count=4))
    assert repeated == pytest.approx(1.0, rel=1e-9)
    both = cal.effective_multiplier(cal.gaussian_event([1.0, 2.0], count=2))
    assert both == pytest.approx((2 * 1.25) ** -0.5, rel=1e-9)


def test_a_non_gaussian_event_is_refused_by_name():
    with pytest.raises(ValueError, match="not a composition of Gaussian releases"):
        cal.effective_multiplier(dp_accounting.LaplaceDpEvent(1.0))


def test_an_infinite_epsilon_needs_no_noise():
    assert cal.calibrate_gaussian_scale(lambda s: cal.gaussian_event([s]), math.inf, 1e-5) == 0.0
    s = cal.calibrate_gaussian_scale(lambda s: cal.gaussian_event([s, s]), 1.0, 1e-5)
    # two releases of multiplier s are one of s/√2, which must meet (1, 1e-5) exactly
    assert gaussian_delta(s / math.sqrt(2), 1.0) == pytest.approx(1e-5, rel=1e-3)


def test_the_accountant_label_names_the_installed_dp_accounting():
    assert cal.accountant_label("PLD") == f"dp-accounting {version('dp-accounting')} PLD"


def _tiny_lambda(sigma: float) -> float:
    return 1e-9  # forces the Jacobian floor


@pytest.mark.parametrize("share", [None, 0.25])
def test_objective_perturbation_meets_its_budget(share):
    eps, delta, beta = 1.2, 1e-6, 0.25
    kwargs = {} if share is None else {"max_jacobian_share": share}
    c = cal.calibrate_objpert(eps, delta, beta, _tiny_lambda, **kwargs)
    share = 0.5 if share is None else share
    # the Jacobian term takes exactly its share of ε when the λ rule is below the floor
    assert c.eps_jacobian == pytest.approx(share * eps, rel=1e-9)
    assert c.eps_jacobian == pytest.approx(math.log1p(beta / c.lam), rel=1e-12)
    assert c.eps_jacobian + c.eps_gaussian == pytest.approx(eps, rel=1e-12)
    # δ: 99 % to the sensitivity-2 term, 0.5 % to each sensitivity-1 term
    assert c.delta_main == pytest.approx(0.99 * delta, rel=1e-12)
    assert c.delta_side == pytest.approx(0.005 * delta, rel=1e-12)
    main = gaussian_delta(c.sigma / 2, c.eps_gaussian)
    side = gaussian_delta(c.sigma, c.eps_gaussian)
    assert main + 2 * side <= delta * (1 + 1e-6)
    assert main == pytest.approx(c.delta_main, rel=1e-3)  # σ is not larger than needed
    assert cal.objpert_delta(c.sigma, c.lam, beta, eps) == pytest.approx(main + 2 * side, rel=1e-3)


def test_a_larger_lambda_from_the_rule_is_kept():
    c = cal.calibrate_objpert(1.0, 1e-6, 0.25, lambda s: 10.0)
    assert c.lam == 10.0 and c.eps_jacobian == pytest.approx(math.log1p(0.025), rel=1e-12)


def test_objective_perturbation_without_room_for_the_noise_is_not_private():
    # β/λ = e - 1: the Jacobian alone costs ε = 1, nothing is left for the Gaussian
    assert cal.objpert_delta(1.0, 0.25 / (math.e - 1) / 2, 0.25, 1.0) == 1.0


@pytest.mark.parametrize("shares", [(0.0, 0.5), (1.0, 0.5), (2.0, 0.5), (0.5, 0.0), (0.5, 1.0),
                                    (0.5, 2.0), (-0.1, 0.5)])  # fmt: skip
def test_amp_shares_outside_0_1_are_refused(shares):
    with pytest.raises(ValueError, match=r"^AMP shares must be in \(0, 1\)$"):
        cal.calibrate_amp(1.0, 1e-6, 0.25, _tiny_lambda, 0.5, epsilon_share=shares[0],
                          delta_share=shares[1])  # fmt: skip


def test_amp_splits_the_budget_and_calibrates_both_parts():
    eps, delta = 2.0, 1e-6
    c = cal.calibrate_amp(eps, delta, 0.25, _tiny_lambda, 0.3, epsilon_share=0.1,
                          delta_share=0.2)  # fmt: skip
    assert (c.epsilon_residual, c.delta_residual) == pytest.approx((0.2, 0.2e-6), rel=1e-12)
    assert (c.epsilon_objpert, c.delta_objpert) == pytest.approx((1.8, 0.8e-6), rel=1e-12)
    op = c.objpert
    assert op.eps_jacobian + op.eps_gaussian == pytest.approx(1.8, rel=1e-12)
    assert op.eps_jacobian == pytest.approx(0.3 * 1.8, rel=1e-9)  # its own Jacobian share
    assert op.delta_main + 2 * op.delta_side == pytest.approx(0.8e-6, rel=1e-12)
    assert gaussian_delta(c.residual_multiplier, 0.2) == pytest.approx(0.2e-6, rel=1e-3)


def test_objective_perturbations_delta_counts_both_sensitivity_one_terms():
    """Where the side terms are large (small σ), δ = δ_G(σ/2) + 2·δ_G(σ) exactly."""
    sigma, beta, lam, eps = 2.0, 0.25, 0.25 / math.expm1(0.2), 0.7
    eps_g = eps - 0.2
    want = gaussian_delta(sigma / 2, eps_g) + 2 * gaussian_delta(sigma, eps_g)
    assert gaussian_delta(sigma, eps_g) > 0.1 * want
    assert cal.objpert_delta(sigma, lam, beta, eps) == pytest.approx(want, rel=1e-2)
