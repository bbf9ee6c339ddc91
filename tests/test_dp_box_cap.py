"""Round 6: no feature release gets more ρ than n·ε_r = BOX_MAX_N_EPSILON; the model gets the rest.

The cap is a public rule on n, d, ε, δ. These tests check that it is exact where it binds, that
it changes nothing where it does not, that the fit's whole ρ still converts to (ε, δ) and is
all used (so the model really gets what the boxes give up), and that a fit reports it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from heml.dp import DPLinearRegression, DPLogisticRegression, PrivateBounds
from heml.dp import _private_bounds as pb

K = pb.BOX_MAX_N_EPSILON
EPS, DELTA = 1.0, 1e-5


def _features_rho(b: pb.BoundsBudget) -> float:
    """ρ of the feature releases alone: d (or 1) boxes plus the scale release."""
    return (b.releases * b.epsilon_release**2 + b.epsilon_scale**2) / 8.0


def _total_rho(b: pb.BoundsBudget) -> float:
    return b.rho + b.rho_center + b.rho_spread + 1.0 / (2.0 * b.model_multiplier**2)


@pytest.mark.parametrize("releases", [1, 13, 64])
@pytest.mark.parametrize("target", [False, True])
def test_where_it_binds_each_feature_release_gets_exactly_the_cap(releases, target):
    n = 20_000
    free = pb.split_budget(EPS, DELTA, releases, target=target, gaussian=True)
    capped = pb.split_budget(EPS, DELTA, releases, target=target, gaussian=True, n=n)
    assert n * free.epsilon_release > 2 * K  # the rule binds here
    assert n * capped.epsilon_release == pytest.approx(K, rel=1e-12)
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
    capped_budget = pb.split_budget(EPS, DELTA, 64, gaussian=True, n=20_000)
    capped = capped_budget.describe()
    assert free["share_of_rho"] == pytest.approx(pb.BOUNDS_RHO_SHARE, rel=1e-9)
    assert capped["share_of_rho"] == pytest.approx(
        capped_budget.rho / pb.zcdp_rho(EPS, DELTA), rel=1e-6
    )
    assert capped["share_of_rho"] < pb.BOUNDS_RHO_SHARE / 10
    assert capped["max_n_epsilon_per_feature_release"] == K


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
    assert n * b["epsilon_per_feature_release"] == pytest.approx(K, rel=1e-9)
    assert b["share_of_rho"] < pb.BOUNDS_RHO_SHARE
    # the model's ε is the capped plan's, above what the flat 30 % would have left it
    free = pb.split_budget(EPS, DELTA, d, gaussian=True, spread=b["rho_spread_release"] > 0)
    assert split["model"]["epsilon"] > free.epsilon_model
    # the guarantee's releases and the model's actual noise re-derive to (ε, δ), all of it
    hp = m.dp_guarantee_["hyperparameters"]
    rho = (
        (
            (b["feature_releases"] * b["epsilon_per_feature_release"] ** 2)
            + b["epsilon_scale_release"] ** 2
        )
        / 8
        + b["rho_center_release"]
        + b["rho_spread_release"]
    )
    rho += 1 / (2 * (hp["noise_multiplier"] / np.sqrt(hp["steps"])) ** 2)
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
    assert n * b["epsilon_per_feature_release"] == pytest.approx(K, rel=1e-9)


def test_regression_caps_the_features_and_keeps_the_targets_release():
    n, d = 20_000, 5
    X, rng = _mixed(n, d)
    y = X @ np.linspace(1, 2, d) + rng.normal(size=n)
    m = DPLinearRegression(epsilon=EPS, delta=DELTA, random_state=0).fit(X, y)
    b = m.dp_guarantee_["budget_split"]["bounds"]
    assert n * b["epsilon_per_feature_release"] == pytest.approx(K, rel=1e-9)
    free = pb.split_budget(EPS, DELTA, d, target=True, gaussian=True)
    assert b["epsilon_target_release"] == pytest.approx(free.epsilon_target, rel=1e-12)
