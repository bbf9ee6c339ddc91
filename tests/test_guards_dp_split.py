"""The zCDP budget split of a fit with estimated bounds, recomputed from docs/dp.md (issue 18).

docs/dp.md, "What each share of ε pays for": with a Gaussian model the fit is ρ-zCDP, ρ the
largest value whose Canonne–Kamath–Steinke conversion (2020, Prop. 12) gives (ε, δ); the boxes
take 30 % of ρ (half to a regression target; of the features' part 10 % to the pooled scale
release when there are several features, the rest evenly over the d boxes, each ε_r-DP with
ε_r²/8 = its ρ), the centre 15 % (10 % when the spread is released), the spread 10 %, the
model the rest as the multiplier
m = 1/√(2ρ_model), handed over as the exact Gaussian ε at δ for a multiplier 1e-7 above m.
With objective perturbation (basic composition) the bounds take ε_b = 0.3·ε (half to a target)
and δ_b ≤ 0.1·δ, the feature releases composed in zCDP or basically, whichever gives the larger
ε_r. Everything here is computed in the test from those formulas, not read from the code, so
the checks keep holding after a correct rewrite of the split.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy.optimize import brentq, minimize_scalar
from scipy.stats import norm

from heml.dp import _private_bounds as pb


def _cks_log_delta(rho: float, eps: float) -> float:
    """log of CKS 2020 Prop. 12: δ = inf over α > 1 of exp((α−1)(αρ−ε)) / (α−1) · (1 − 1/α)^α,
    minimised here on a dense log grid of α and then refined."""

    def log_delta(a: float) -> float:
        return (a - 1) * (a * rho - eps) - math.log(a - 1) + a * math.log1p(-1 / a)

    am1 = np.logspace(-8, 9, 6000)  # α − 1
    a = 1 + am1
    values = am1 * (a * rho - eps) - np.log(am1) + a * np.log1p(-1 / a)
    alphas = a
    i = int(np.argmin(values))
    lo, hi = alphas[max(i - 1, 0)], alphas[min(i + 1, alphas.size - 1)]
    best = minimize_scalar(log_delta, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12})
    return min(0.0, float(best.fun), float(values[i]))


def _cks_delta(rho: float, eps: float) -> float:
    return math.exp(_cks_log_delta(rho, eps))


def _largest_rho(eps: float, delta: float) -> float:
    """The largest ρ with _cks_delta(ρ, ε) ≤ δ."""
    return brentq(lambda r: _cks_log_delta(r, eps) - math.log(delta), 1e-12, eps, xtol=1e-18)


def _gaussian_epsilon(multiplier: float, delta: float) -> float:
    """ε at δ of one Gaussian release with noise multiplier m (Balle & Wang 2018)."""

    def excess(eps: float) -> float:
        mu = 1.0 / multiplier
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta

    return brentq(excess, 0.0, 500.0, xtol=1e-14)


@pytest.mark.parametrize(("rho", "eps"), [(0.031, 1.0), (0.5, 2.0), (0.002, 0.3), (3.0, 1.0)])
def test_the_zcdp_conversion_is_prop_12_at_its_best_order(rho, eps):
    assert pb.zcdp_delta(rho, eps) == pytest.approx(_cks_delta(rho, eps), rel=1e-5)


def test_the_zcdp_conversion_at_the_edges():
    assert pb.zcdp_delta(0.0, 1.0) == 0.0  # no release, no δ
    assert pb.zcdp_delta(-1.0, 1.0) == 0.0
    assert pb.zcdp_delta(50.0, 0.1) == 1.0  # capped: δ is a probability
    # a large ε/ρ puts the best order far out: the search must reach it
    assert pb.zcdp_delta(1e-3, 3.0) == pytest.approx(_cks_delta(1e-3, 3.0), rel=1e-5)


@pytest.mark.parametrize(
    ("eps", "delta"), [(1.0, 1e-5), (0.3, 1e-6), (5.0, 1e-5), (0.003, 1e-6), (0.01, 1e-10)]
)
def test_rho_is_the_largest_that_converts_to_the_budget(eps, delta):
    rho = pb.zcdp_rho(eps, delta)
    assert rho == pytest.approx(_largest_rho(eps, delta), rel=1e-6)
    assert _cks_delta(rho, eps) <= delta  # not even 1e-9 over


def test_rho_at_a_budget_whose_delta_allows_all_of_epsilon():
    # δ so large that ρ = ε already converts: the whole ε is the answer
    assert pb.zcdp_rho(0.5, 0.9) == 0.5
    # δ half of what ρ = ε converts to: ρ comes from the search, below ε
    delta = _cks_delta(0.5, 0.5) / 2
    rho = pb.zcdp_rho(0.5, delta)
    assert rho < 0.5 and _cks_delta(rho, 0.5) <= delta
    assert rho == pytest.approx(_largest_rho(0.5, delta), rel=1e-6)


def test_a_gaussian_release_is_one_over_2_m_squared_zcdp():
    for m in (0.5, 1.0, 4.8):
        assert pb.gaussian_rho(m) == pytest.approx(1.0 / (2.0 * m * m), rel=1e-15)


@pytest.mark.parametrize(
    ("releases", "target", "center", "spread"),
    [(12, False, True, True), (12, True, False, True), (5, True, True, False),
     (2, False, False, False), (1, False, True, False), (0, True, True, False),
     (0, True, False, True)],
)  # fmt: skip
def test_the_gaussian_split_is_the_documented_shares_of_rho(releases, target, center, spread):
    eps, delta = 1.0, 1e-5
    b = pb.split_budget(eps, delta, releases, target=target, gaussian=True, center=center,
                        spread=spread)  # fmt: skip
    rho = _largest_rho(eps, delta)
    boxes = 0.3 * rho
    rho_y = (boxes / 2 if releases else boxes) if target else 0.0
    rho_x = boxes - rho_y
    rho_scale = 0.1 * rho_x if releases > 1 else 0.0
    rho_c = (0.1 if spread else 0.15) * rho if releases and center else 0.0
    rho_sp = 0.1 * rho if releases and spread else 0.0
    rho_model = rho - boxes - rho_c - rho_sp
    m = 1.0 / math.sqrt(2 * rho_model)

    assert b.composition == "zcdp"
    assert b.releases == releases
    assert b.rho == pytest.approx(boxes, rel=1e-6)
    assert b.rho_model == pytest.approx(rho_model, rel=1e-6)
    assert b.model_multiplier == pytest.approx(m, rel=1e-6)
    assert b.epsilon_target == pytest.approx(math.sqrt(8 * rho_y), rel=1e-6)
    assert b.epsilon_scale == pytest.approx(math.sqrt(8 * rho_scale), rel=1e-6)
    want_r = math.sqrt(8 * (rho_x - rho_scale) / releases) if releases else 0.0
    assert b.epsilon_release == pytest.approx(want_r, rel=1e-6)
    assert b.rho_center == pytest.approx(rho_c, rel=1e-6, abs=0)
    assert b.rho_spread == pytest.approx(rho_sp, rel=1e-6, abs=0)
    # the model is handed the exact Gaussian ε at δ of a multiplier 1e-7 above m: its own
    # calibration then adds at least the noise the split requires, and not much more
    assert b.delta_model == delta
    assert b.epsilon_model == pytest.approx(_gaussian_epsilon(m * (1 + 1e-7), delta), rel=1e-6)
    assert b.epsilon_model < _gaussian_epsilon(m, delta)
    # "for the record": what the boxes alone would be, the better of adding the ε's (δ 0) and
    # the zCDP conversion of their ρ (at δ)
    added = releases * b.epsilon_release + b.epsilon_target + b.epsilon_scale
    converted = brentq(lambda e: _cks_log_delta(boxes, e) - math.log(delta), 1e-9, 50)
    if converted < added:
        assert (b.epsilon, b.delta) == (pytest.approx(converted, rel=1e-6), delta)
    else:
        assert (b.epsilon, b.delta) == (pytest.approx(added, rel=1e-9), 0.0)
    # and the whole fit converts to (ε, δ) exactly: the split leaves nothing over
    total = (releases * b.epsilon_release**2 + b.epsilon_target**2 + b.epsilon_scale**2) / 8
    total += b.rho_center + b.rho_spread + 1 / (2 * b.model_multiplier**2)
    assert total == pytest.approx(rho, rel=1e-6)


def test_the_record_of_the_bounds_alone_takes_the_better_of_adding_and_converting():
    eps, delta = 1.0, 1e-5
    rho = _largest_rho(eps, delta)
    # one release: its ε adds up to less than a conversion at δ would give
    one = pb.split_budget(eps, delta, 1, gaussian=True)
    assert one.delta == 0.0 and one.epsilon == pytest.approx(math.sqrt(8 * 0.3 * rho), rel=1e-6)
    # 40 releases: the conversion of their ρ at δ is far below the sum of their ε's
    many = pb.split_budget(eps, delta, 40, gaussian=True)
    added = 40 * many.epsilon_release + many.epsilon_scale
    assert many.delta == delta and many.epsilon < 0.5 * added


def test_nothing_to_bound_leaves_the_whole_budget_to_the_model():
    for gaussian in (False, True):
        b = pb.split_budget(2.0, 1e-5, 0, target=False, gaussian=gaussian)
        assert (b.epsilon, b.delta, b.releases) == (0.0, 0.0, 0)
        assert (b.epsilon_release, b.epsilon_target) == (0.0, 0.0)
        assert (b.epsilon_model, b.delta_model) == (2.0, 1e-5)


def _per_release(releases: int, eps: float, delta: float) -> tuple[float, float]:
    """The larger ε_r of basic composition (ε/k, δ 0) and zCDP (√(8ρ/k) at δ)."""
    basic = eps / releases
    if delta <= 0:
        return basic, 0.0
    zcdp = math.sqrt(8 * _largest_rho(eps, delta) / releases)
    return (zcdp, delta) if zcdp > basic else (basic, 0.0)


@pytest.mark.parametrize(
    ("releases", "eps", "delta"),
    [
        (1, 0.3, 1e-6),
        (2, 0.3, 1e-6),
        (30, 0.3, 1e-6),
        (60, 1.5, 1e-5),
        (8, 0.3, 0.0),
        (3, 0.003, 1e-6),
    ],  # the last: a tiny ρ, where brentq's default xtol would overshoot
)
def test_per_release_epsilon_is_the_better_composition(releases, eps, delta):
    got_eps, got_delta = pb.per_release_epsilon(releases, eps, delta)
    want_eps, want_delta = _per_release(releases, eps, delta)
    assert got_delta == want_delta
    assert got_eps == pytest.approx(want_eps, rel=1e-6)
    if got_delta:  # the zCDP reading really is within (ε, δ), not even 1e-9 over
        assert _cks_delta(releases * got_eps**2 / 8, eps) <= delta


def test_per_release_epsilon_when_all_of_rho_would_overshoot_delta_by_a_little():
    """δ half of what ρ = ε converts to: ρ must come from the search, not be ε."""
    eps = 0.5
    delta = _cks_delta(eps, eps) / 2
    got_eps, got_delta = pb.per_release_epsilon(4, eps, delta)
    assert got_delta == delta
    assert _cks_delta(4 * got_eps**2 / 8, eps) <= delta
    assert got_eps == pytest.approx(math.sqrt(8 * _largest_rho(eps, delta) / 4), rel=1e-6)


def test_per_release_epsilon_when_delta_allows_all_of_rho_or_none():
    # δ so large that ρ = ε converts: ε_r = √(8ε/k) (larger than ε/k for small ε)
    assert pb.per_release_epsilon(4, 0.5, 0.9) == (pytest.approx(math.sqrt(8 * 0.5 / 4)), 0.9)
    # δ so small (subnormal) that no ρ ≥ 1e-12 converts, even where the conversion underflows
    # to its 1e-320 floor: basic composition, no δ used
    for tiny in (1e-322, 5e-321):
        assert pb.per_release_epsilon(4, 1e-3, tiny) == (pytest.approx(1e-3 / 4), 0.0)


@pytest.mark.parametrize(
    ("releases", "target", "eps"),
    [(30, False, 1.0), (4, True, 2.0), (0, True, 0.5), (1, False, 3.0)],
)
def test_the_basic_split_gives_the_bounds_three_tenths_of_epsilon(releases, target, eps):
    delta = 1e-5
    b = pb.split_budget(eps, delta, releases, target=target, gaussian=False)
    assert b.releases == releases
    eps_b = 0.3 * eps
    eps_y = (eps_b / 2 if releases else eps_b) if target else 0.0
    assert b.composition == "basic"
    assert b.epsilon == pytest.approx(eps_b, rel=1e-12)
    assert b.epsilon_target == pytest.approx(eps_y, rel=1e-12)
    want_r, want_delta = _per_release(releases, eps_b - eps_y, 0.1 * delta) if releases else (0, 0)
    assert b.epsilon_release == pytest.approx(want_r, rel=1e-6)
    assert b.delta == want_delta
    # the parts add up to the budget
    assert b.epsilon_model == pytest.approx(eps - eps_b, rel=1e-12)
    assert b.delta_model == pytest.approx(delta - want_delta, rel=1e-12)


def test_a_gaussian_model_without_delta_falls_back_to_the_basic_split():
    b = pb.split_budget(1.0, 0.0, 6, gaussian=True)
    assert b.composition == "basic"
    assert b.epsilon_release == pytest.approx(0.3 / 6) and b.delta == 0.0


def _check(b, multiplier, eps=1.0, delta=1e-5):
    pb.check_zcdp_total(b, multiplier, eps, delta)


def test_the_total_check_counts_every_release_of_the_split():
    """check_zcdp_total re-derives ρ = Σ ε_r²/8 (features, target, scale) + ρ_centre + ρ_spread
    + 1/(2m²): a split that spends exactly ρ passes; growing any one part by 2 % of ρ, or
    lowering the model's noise by 0.5 %, is refused."""
    eps, delta = 1.0, 1e-5
    b = pb.split_budget(eps, delta, 12, target=True, gaussian=True, center=True, spread=True)
    assert b.epsilon_scale > 0 and b.epsilon_target > 0 and b.rho_center and b.rho_spread
    _check(b, b.model_multiplier)  # the split as designed: fine
    rho = _largest_rho(eps, delta)
    extra = 0.02 * rho
    grown = {
        "epsilon_release": math.sqrt(b.epsilon_release**2 + 8 * extra / b.releases),
        "epsilon_target": math.sqrt(b.epsilon_target**2 + 8 * extra),
        "epsilon_scale": math.sqrt(b.epsilon_scale**2 + 8 * extra),
        "rho_center": b.rho_center + extra,
        "rho_spread": b.rho_spread + extra,
    }
    for field, value in grown.items():
        with pytest.raises(RuntimeError, match="below what the zCDP budget split requires"):
            _check(dataclasses.replace(b, **{field: value}), b.model_multiplier)
    # more releases at the same ε_r cost more too
    with pytest.raises(RuntimeError, match="zCDP budget split"):
        _check(dataclasses.replace(b, releases=b.releases + 1), b.model_multiplier)
    for factor in (0.9999, 0.995, 0.9, 0.5):
        with pytest.raises(RuntimeError, match="below what the zCDP budget split requires"):
            _check(b, factor * b.model_multiplier)
    _check(b, 1.01 * b.model_multiplier)  # more noise than needed is fine


def test_the_total_check_refuses_an_unknown_or_non_positive_multiplier():
    b = pb.split_budget(1.0, 1e-5, 3, gaussian=True)
    for bad in (None, 0.0, -1.0, math.nan):
        with pytest.raises(
            RuntimeError,
            match=r"^internal error: the model's Gaussian noise multiplier is unknown$",
        ):
            _check(b, bad)
    with pytest.raises(
        RuntimeError,
        match=r"^internal error: the model's noise is below what the zCDP budget split requires$",
    ):
        _check(b, 0.5 * b.model_multiplier)


def test_the_total_check_accepts_a_multiplier_below_one_at_a_large_epsilon():
    """At ε = 20 the model's multiplier is below 1 (σ smaller than Δ): still a known, valid
    multiplier that the split allows."""
    b = pb.split_budget(20.0, 1e-5, 3, gaussian=True)
    assert b.model_multiplier < 1
    pb.check_zcdp_total(b, b.model_multiplier, 20.0, 1e-5)
    with pytest.raises(RuntimeError, match="below what the zCDP budget split requires"):
        pb.check_zcdp_total(b, 0.99 * b.model_multiplier, 20.0, 1e-5)


def test_the_spread_is_paid_for_only_when_asked():
    """docs/dp.md: the spread's 10 % of ρ is spent only when its public rule holds (the caller
    says so); by default the model keeps that share."""
    plain = pb.split_budget(1.0, 1e-5, 12, gaussian=True)
    assert plain.rho_spread == 0.0
    with_spread = pb.split_budget(1.0, 1e-5, 12, gaussian=True, spread=True)
    assert with_spread.rho_spread > 0 and with_spread.model_multiplier > plain.model_multiplier
