"""Calibration against dp-accounting, and the noise scale actually drawn."""

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld

from heml.dp import _calibration as cal
from heml.dp import _linear, _logistic
from heml.dp._noise import NoiseSource


@pytest.mark.parametrize("eps, delta", [(0.5, 1e-5), (1.0, 1e-5), (5.0, 1e-6)])
def test_adassp_event_has_the_target_epsilon_under_pld(eps, delta):
    rel = [1.0 / math.sqrt(s) for s in _linear.SHARES]
    scale = cal.calibrate_gaussian_scale(
        lambda s: cal.gaussian_event([s * r for r in rel]), eps, delta
    )
    event = cal.gaussian_event([scale * r for r in rel])
    # PLD's pessimistic estimate is within 1e-6 relative of the exact Gaussian
    assert cal.pld_epsilon(event, delta) == pytest.approx(eps, rel=1e-4)
    assert cal.rdp_epsilon(event, delta) >= eps  # RDP is an upper bound: looser, never tighter


@pytest.mark.parametrize("eps, delta, steps", [(1.0, 1e-5, 20), (5.0, 1e-5, 100)])
def test_dpgd_event_matches_pld_and_is_tight(eps, delta, steps):
    m = cal.calibrate_gaussian_scale(lambda s: cal.gaussian_event([s], count=steps), eps, delta)
    assert cal.pld_epsilon(cal.gaussian_event([m], count=steps), delta) == pytest.approx(
        eps, rel=1e-4
    )
    # tight: 1 % less noise would overspend (by dp-accounting's PLD)
    assert cal.pld_epsilon(cal.gaussian_event([0.99 * m], count=steps), delta) > eps * 1.005


def test_replace_one_reading_agrees():
    # A sum with per-record bound C has replace-one sensitivity 2C: multiplier σ/(2C) in our
    # convention equals dp-accounting's REPLACE_ONE reading of multiplier σ/C.
    sigma, C, delta = 6.0, 0.5, 1e-5
    ours = cal.pld_epsilon(cal.gaussian_event([sigma / (2 * C)], count=10), delta)
    acc = pld.PLDAccountant(dp_accounting.NeighboringRelation.REPLACE_ONE)
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma / C), 10))
    assert acc.get_epsilon(delta) == pytest.approx(ours, rel=1e-4)


def test_public_api_fallback_gives_the_same_calibration(monkeypatch):
    make = lambda s: cal.gaussian_event([s, 2 * s, 3 * s])  # noqa: E731
    direct = cal.calibrate_gaussian_scale(make, 1.0, 1e-5)
    monkeypatch.setattr(cal, "_dpa_effective_multiplier", None)
    assert cal.calibrate_gaussian_scale(make, 1.0, 1e-5) == pytest.approx(direct, rel=1e-3)


@pytest.mark.parametrize("eps", [0.3, 1.0, 5.0])
def test_objpert_calibration_meets_delta_under_pld(eps):
    delta, d_aug = 1e-5, 31
    c = cal.calibrate_objpert(
        eps, delta, _logistic.OBJPERT_BETA, _logistic.objpert_lambda_rule(d_aug)
    )
    assert c.eps_jacobian + c.eps_gaussian == pytest.approx(eps)
    assert 0 < c.eps_jacobian <= eps / 2
    achieved = cal.objpert_delta(c.sigma, c.lam, _logistic.OBJPERT_BETA, eps)
    assert achieved <= delta * (1 + 1e-6)
    assert achieved >= 0.9 * delta  # and not wastefully over-noised


def test_release_noise_has_the_calibrated_scale():
    # 20,000 draws: the sample std is within 3 % of σ unless something is wrong (≈ 6 std errors)
    sigma = 7.5
    for source in (NoiseSource(0), NoiseSource(None)):
        draws = source.release(np.zeros(20_000), sigma, magnitude=1e3)
        assert abs(draws.mean()) < 5 * sigma / math.sqrt(20_000)
        assert draws.std() == pytest.approx(sigma, rel=0.03)


def test_secure_normals_pass_a_ks_test():
    from scipy.stats import kstest

    z = NoiseSource(None).standard_normal(50_000)
    assert kstest(z, "norm").pvalue > 1e-4


def test_release_is_on_the_lattice():
    from heml.dp._noise import lattice_step

    out = NoiseSource(1).release(np.array([0.1234567891234, 3.3]), 1.0, magnitude=10.0)
    step = lattice_step(10.0)
    assert np.all(out / step == np.round(out / step))


def test_estimator_sigmas_follow_the_calibration():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, 4))
    y = X @ [1.0, -1.0, 0.5, 0.0]
    reg = _linear.DPLinearRegression(
        epsilon=1.0,
        delta=1e-5,
        bounds_X=(-3, 3),
        bounds_y=(-3, 3),
        random_state=0,
        method="adassp",
    ).fit(X, y)
    # heml adds CALIBRATION_MARGIN (1 + 1e-9) to dp-accounting's multiplier
    m = dp_accounting.get_sigma_gaussian(1.0, 1e-5) * cal.CALIBRATION_MARGIN
    for sigma, sens, share in zip(
        reg.noise_["sigmas"], reg.noise_["sensitivities"], _linear.SHARES, strict=True
    ):
        assert sigma == pytest.approx(sens * m / math.sqrt(share), rel=1e-9)
    B2 = reg.noise_["sensitivities"][0]
    assert reg.noise_["sensitivities"][1] == pytest.approx(math.sqrt(2) * B2, rel=1e-6)
