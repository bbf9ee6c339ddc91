"""Round 6: no feature release gets more ρ than n·ε_r = BOX_MAX_N_EPSILON, nor do the feature
releases together get less than BOX_MIN_RHO_SHARE of ρ; the model gets the rest.

The rule is public (n, d, ε, δ). These tests check that the cap is exact where it binds, the
floor exact where it binds, that nothing changes where neither does, that the fit's whole ρ
still converts to (ε, δ) and is all used (so the model really gets what the boxes give up),
and that a fit reports it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from heml.dp import DPLinearRegression, DPLogisticRegression, PrivateBounds
from heml.dp import _private_bounds as pb

from .dp_support import fit_rho

K = pb.BOX_MAX_N_EPSILON
EPS, DELTA = 1.0, 1e-5
RHO = pb.zcdp_rho(EPS, DELTA)


def test_the_rule_s_constants():
    # docs/dp.md quotes both numbers; a change must change the docs too
    assert pb.BOX_MAX_N_EPSILON == 100.0
    assert pb.BOX_MIN_RHO_SHARE == 0.05


def _kept(releases: int) -> float:
    return 1.0 - pb.SCALE_SHARE if releases > 1 else 1.0


def _cap_window(releases: int, target: bool) -> tuple[float, float]:
    """n above which the cap binds, and n above which the floor binds instead."""
    free = pb.split_budget(EPS, DELTA, releases, target=target, gaussian=True)
    floor_eps_r = math.sqrt(8.0 * pb.BOX_MIN_RHO_SHARE * RHO * _kept(releases) / releases)
    return K / free.epsilon_release, K / floor_eps_r


def _features_rho(b: pb.BoundsBudget) -> float:
    """ρ of the feature releases alone: d (or 1) boxes plus the scale release."""
    return (b.releases * b.epsilon_release**2 + b.epsilon_scale**2) / 8.0


def _total_rho(b: pb.BoundsBudget) -> float:
    return b.rho + b.rho_center + b.rho_spread + 1.0 / (2.0 * b.model_multiplier**2)


@pytest.mark.parametrize("releases", [1, 2, 13, 64])
@pytest.mark.parametrize("target", [False, True])
def test_where_it_binds_each_feature_release_gets_exactly_the_cap(releases, target):
    lo, hi = _cap_window(releases, target)
    assert hi > 1.5 * lo
    n = round(math.sqrt(lo * hi))  # the cap binds, the floor does not
    free = pb.split_budget(EPS, DELTA, releases, target=target, gaussian=True)
    capped = pb.split_budget(EPS, DELTA, releases, target=target, gaussian=True, n=n)
    assert n * free.epsilon_release > 1.2 * K
    assert n * capped.epsilon_release == pytest.approx(K, rel=1e-12)
    assert _features_rho(capped) > 1.2 * pb.BOX_MIN_RHO_SHARE * RHO
    if releases > 1:  # the scale release keeps its share of the (capped) features' ρ
        assert capped.epsilon_scale**2 / 8.0 == pytest.approx(
            pb.SCALE_SHARE * _features_rho(capped), rel=1e-12
        )
    else:
        assert capped.epsilon_scale == 0.0
    # the target's release is not capped: same ε as without n
    assert capped.epsilon_target == free.epsilon_target
    # the bounds' ρ is the target's and the capped features', nothing more
    assert capped.rho == pytest.approx(
        capped.epsilon_target**2 / 8.0 + _features_rho(capped), rel=1e-12
    )
    # the model gets what the boxes give up: more ρ, less noise, a larger ε
    assert capped.rho_model == pytest.approx(free.rho_model + free.rho - capped.rho, rel=1e-12)
    assert capped.model_multiplier < free.model_multiplier
    assert capped.epsilon_model > free.epsilon_model
    # and the whole fit still converts to (ε, δ), using all of it
    rho = _total_rho(capped)
    assert pb.zcdp_delta(rho, EPS) <= DELTA * (1 + 1e-9)
    assert pb.zcdp_delta(rho * 1.001, EPS) > DELTA


@pytest.mark.parametrize("releases", [1, 13, 64])
def test_below_the_cap_nothing_changes(releases):
    # wine-sized n: every release is below the cap, the split is the one without n
    n = 124
    free = pb.split_budget(EPS, DELTA, releases, gaussian=True)
    assert n * free.epsilon_release < K
    assert pb.split_budget(EPS, DELTA, releases, gaussian=True, n=n) == free


@pytest.mark.parametrize("releases", [1, 13, 64])
@pytest.mark.parametrize("target", [False, True])
def test_the_floor_keeps_the_feature_releases_at_five_percent_of_rho(releases, target):
    _, hi = _cap_window(releases, target)
    n = round(4 * hi)  # past the floor: the cap alone would give less
    free = pb.split_budget(EPS, DELTA, releases, target=target, gaussian=True)
    b = pb.split_budget(EPS, DELTA, releases, target=target, gaussian=True, n=n)
    assert _features_rho(b) == pytest.approx(pb.BOX_MIN_RHO_SHARE * RHO, rel=1e-12)
    assert n * b.epsilon_release == pytest.approx(4 * K, rel=1e-3)  # grows with n again
    assert b.epsilon_target == free.epsilon_target
    assert b.rho == pytest.approx(b.epsilon_target**2 / 8.0 + _features_rho(b), rel=1e-12)
    rho = _total_rho(b)
    assert pb.zcdp_delta(rho, EPS) <= DELTA * (1 + 1e-9)
    assert pb.zcdp_delta(rho * 1.001, EPS) > DELTA


def test_a_split_in_literal_numbers():
    # digits-sized: 64 per-feature releases at n = 1 257, eps = 5 (the cap binds: 171 -> 100)
    b = pb.split_budget(5.0, 1e-5, 64, gaussian=True, n=1257, spread=True)
    assert 1257 * b.epsilon_release == pytest.approx(100.0, rel=1e-12)
    assert b.describe()["share_of_rho"] == pytest.approx(0.1021, abs=1e-4)
    # one pooled box at n = 1 257, eps = 1: the floor binds (340 -> 100 would be 2.6 % of rho)
    p = pb.split_budget(1.0, 1e-5, 1, gaussian=True, n=1257)
    assert p.describe()["share_of_rho"] == pytest.approx(0.05, rel=1e-9)
    assert 1257 * p.epsilon_release == pytest.approx(139.0, abs=0.1)


def test_huge_n_keeps_a_usable_release():
    # with the cap alone, eps_r = 100 / n underflows towards 0 as n grows; the floor keeps it
    b = pb.split_budget(EPS, DELTA, 3, gaussian=True, n=10**15)
    assert b.epsilon_release > 0.05 and b.epsilon_scale > 0.03
    assert _features_rho(b) == pytest.approx(pb.BOX_MIN_RHO_SHARE * RHO, rel=1e-12)


def test_a_plan_with_no_rows_is_refused_before_any_spend():
    est = DPLogisticRegression(classes=[0, 1], epsilon=EPS, delta=DELTA)
    with pytest.raises(ValueError, match="at least one row"):
        pb.check_fit_plan(est, 0, 3, EPS, DELTA)
    # one row is a plan like any other (the guard's edge): nothing capped at n = 1
    plan = pb.plan_estimated_bounds(est, 1, 3, EPS, DELTA)
    assert plan.budget == pb.split_budget(EPS, DELTA, 1, gaussian=True)


def test_the_boundary_is_the_cap():
    # n at which the uncapped release reaches exactly K: just below it nothing changes, just
    # above it the release is held at K
    free = pb.split_budget(EPS, DELTA, 13, gaussian=True)
    n_star = K / free.epsilon_release
    below = pb.split_budget(EPS, DELTA, 13, gaussian=True, n=math.floor(n_star))
    above = pb.split_budget(EPS, DELTA, 13, gaussian=True, n=math.ceil(n_star))
    assert below == free
    assert math.ceil(n_star) * above.epsilon_release == pytest.approx(K, rel=1e-12)
    assert above.epsilon_release < free.epsilon_release


def test_the_objective_perturbation_split_is_not_capped():
    basic = pb.split_budget(EPS, DELTA, 13)
    assert pb.split_budget(EPS, DELTA, 13, n=10**6) == basic


def test_describe_states_the_actual_share_and_the_cap():
    free = pb.split_budget(EPS, DELTA, 64, gaussian=True).describe()
    lo, hi = _cap_window(64, False)
    capped_budget = pb.split_budget(EPS, DELTA, 64, gaussian=True, n=round(math.sqrt(lo * hi)))
    capped = capped_budget.describe()
    assert free["share_of_rho"] == pytest.approx(pb.BOUNDS_RHO_SHARE, rel=1e-9)
    assert capped["share_of_rho"] == pytest.approx(capped_budget.rho / RHO, rel=1e-6)
    assert pb.BOX_MIN_RHO_SHARE < capped["share_of_rho"] < pb.BOUNDS_RHO_SHARE * 0.8
    assert capped["max_n_epsilon_per_feature_release"] == K
    assert capped["min_share_of_rho_for_feature_releases"] == pb.BOX_MIN_RHO_SHARE


def _mixed(n: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * np.logspace(-1, 2, d) + np.logspace(0, 2, d)
    return X, rng


def test_a_large_fit_caps_its_boxes_and_gives_the_model_the_rest():
    n, d = 20_000, 6
    X, rng = _mixed(n, d)
    y = (X[:, 0] / 0.1 + X[:, 3] / 5.0 + rng.normal(size=n) > 10.0).astype(int)
    m = DPLogisticRegression(classes=[0, 1], epsilon=EPS, delta=DELTA, random_state=0).fit(X, y)
    split = m.dp_guarantee_["budget_split"]
    b = split["bounds"]
    spread = b["rho_spread_release"] > 0
    plan = pb.split_budget(EPS, DELTA, d, gaussian=True, spread=spread, n=n)
    assert b["epsilon_per_feature_release"] == pytest.approx(plan.epsilon_release, rel=1e-12)
    assert n * b["epsilon_per_feature_release"] > K  # the floor binds at this n
    assert b["share_of_rho"] == pytest.approx(plan.describe()["share_of_rho"], rel=1e-12)
    assert b["share_of_rho"] < pb.BOUNDS_RHO_SHARE
    # the model's ε is the capped plan's, above what the flat 30 % would have left it
    free = pb.split_budget(EPS, DELTA, d, gaussian=True, spread=spread)
    assert split["model"]["epsilon"] > free.epsilon_model
    # the guarantee's releases and the model's actual noise re-derive to (ε, δ), all of it
    rho = fit_rho(m.dp_guarantee_)
    assert pb.zcdp_delta(rho, EPS) <= DELTA * (1 + 1e-6)
    assert pb.zcdp_delta(rho * 1.01, EPS) > DELTA


def test_a_declared_shared_scale_is_capped_too():
    n, d = 5_000, 8
    X, rng = _mixed(n, d)
    y = (X[:, 0] + rng.normal(size=n) > 1.0).astype(int)
    m = DPLogisticRegression(
        classes=[0, 1],
        epsilon=EPS,
        delta=DELTA,
        bounds_X=PrivateBounds(shared_scale=True),
        random_state=0,
    ).fit(X, y)
    b = m.dp_guarantee_["budget_split"]["bounds"]
    assert b["feature_releases"] == 1
    spread = b["rho_spread_release"] > 0
    plan = pb.split_budget(EPS, DELTA, 1, gaussian=True, spread=spread, n=n)
    assert b["epsilon_per_feature_release"] == pytest.approx(plan.epsilon_release, rel=1e-12)
    free = pb.split_budget(EPS, DELTA, 1, gaussian=True, spread=spread)
    assert b["epsilon_per_feature_release"] < free.epsilon_release


def test_regression_caps_the_features_and_keeps_the_targets_release():
    n, d = 20_000, 5
    X, rng = _mixed(n, d)
    y = X @ np.linspace(1, 2, d) + rng.normal(size=n)
    m = DPLinearRegression(epsilon=EPS, delta=DELTA, random_state=0).fit(X, y)
    b = m.dp_guarantee_["budget_split"]["bounds"]
    spread = b["rho_spread_release"] > 0
    plan = pb.split_budget(EPS, DELTA, d, target=True, gaussian=True, spread=spread, n=n)
    assert b["epsilon_per_feature_release"] == pytest.approx(plan.epsilon_release, rel=1e-12)
    free = pb.split_budget(EPS, DELTA, d, target=True, gaussian=True)
    assert b["epsilon_per_feature_release"] < free.epsilon_release
    assert b["epsilon_target_release"] == pytest.approx(free.epsilon_target, rel=1e-12)
