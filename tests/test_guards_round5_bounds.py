"""Estimated bounds at their exact edges (issue 18, fifth round; docs/dp.md, "Bounds estimated
with DP", the budget split, per-feature vs pooled boxes, ``shared_scale``).

Promises checked where the code's comparisons decide:

* ``PrivateBounds(search_range=r)`` accepts exactly the numbers 0 < r <= MAX_SEARCH_RANGE
  (a bool is not a number here), with one message for every refusal;
* the inner-half count of a one-sided per-feature box is #{a <= x < (a + b)/2} on the
  positive side and #{(a + b)/2 < x <= b} on the negative side: a value on the box's middle
  is in its outer half, a value on its inner end in its inner half, and the box needs n/6 of
  them (not 1/(6n));
* ``private_box(feature_box=True)`` samples the per-feature law (inner-half rule, width term
  floored at the clip count), not the pooled box's;
* ``plan_estimated_bounds``: a finite ``data_norm`` is refused (with its message) only beside
  estimated or 'data' feature bounds; declared features make no feature release whatever
  else is estimated; the public rule n·ε_r >= 16 picks per-feature or pooled boxes with the
  ε_r of the actual split (target or not, Gaussian or not, δ); a split that leaves the model
  no ε is refused with its message.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from heml.dp import DPLinearRegression, DPLogisticRegression
from heml.dp import _private_bounds as pb
from heml.dp._noise import NoiseSource

# ---------------------------------------------------------------------- PrivateBounds


def _refusal(r) -> str:
    return (
        f"search_range must be a number in [{pb.MIN_SEARCH_RANGE:g}, {pb.MAX_SEARCH_RANGE:g}], "
        f"got {r!r}"
    )


@pytest.mark.parametrize("r", [True, False, 0, 0.0, -0.0, -1e-300, 1e-300, 9.9e-86, "1e3", None])
def test_search_range_that_is_not_a_positive_number_is_refused_with_its_message(r):
    with pytest.raises(ValueError) as excinfo:
        pb.PrivateBounds(search_range=r)
    assert str(excinfo.value) == _refusal(r)


@pytest.mark.parametrize("r", [pb.MIN_SEARCH_RANGE, 0.5, 1, 1.0, 8, pb.MAX_SEARCH_RANGE])
def test_every_search_range_in_0_to_the_cap_is_accepted_below_1_too(r):
    bounds = pb.PrivateBounds(search_range=r)
    assert bounds.search_range == r
    assert pb._search_range(bounds) == r
    # the candidates it gives reach exactly the range
    assert pb.grid(r)[-1] == float(r) and pb.grid(r)[0] == -float(r)


# ---------------------------------------------------------------------- box_utility


def _one(x, a, b, **kw) -> float:
    """box_utility of the single box [a, b]."""
    x = np.asarray(x, dtype=np.float64)
    return float(pb.box_utility(x, np.array([a]), np.array([b]), **kw)[0])


def test_positive_box_inner_half_counts_its_lower_end_and_not_its_middle():
    # box [2, 4]: middle 3; n = 24, so t = 8 (outer half) and t_inner = 4 (inner half)
    x = [1.0] + [2.0] + [3.0] + [3.9] * 21
    # clipped: the 1.0; outer half x >= 3: 22 values; inner half 2 <= x < 3: only the 2.0
    # (the 3.0 on the middle is outer): too wide = max(0, 8 - 22, 4 - 1) = 3 > 1 clipped
    assert _one(x, 2.0, 4.0, inner_half=True) == -3.0
    assert _one(x, 2.0, 4.0) == -1.0  # without the rule: the clipped value only
    # a value just below the middle fills the inner half one more
    assert _one([1.0, 2.0, 2.999] + [3.9] * 21, 2.0, 4.0, inner_half=True) == -2.0
    # the values in [lower, mid) alone count: the one below the box does not
    assert _one([1.0, 1.5] + [3.9] * 22, 2.0, 4.0, inner_half=True) == -4.0


def test_negative_box_inner_half_counts_its_upper_end_and_not_its_middle():
    # mirror box [-4, -2]: middle -3; inner half -3 < x <= -2, outer half x <= -3
    x = [-2.0] + [-3.0] + [-3.9] * 22
    # outer 23 values; inner only the -2.0 on the box's upper end (the -3.0 is outer):
    # too wide = max(0, 8 - 23, 4 - 1) = 3, nothing clipped
    assert _one(x, -4.0, -2.0, inner_half=True) == -3.0
    assert _one(x, -4.0, -2.0) == 0.0
    # a value above the box is clipped and is not in the inner half
    assert _one([-1.0, -3.0] + [-3.9] * 22, -4.0, -2.0, inner_half=True) == -4.0
    # [-4, -0.0] (f = 0): a 0 is on its upper end, inside the box and in its inner half
    assert _one([0.0] * 3 + [-3.9] * 21, -4.0, -0.0, inner_half=True) == -1.0


def test_inner_half_needs_n_over_6_values_for_any_n():
    # every value near the top of [0, 4]: its inner half [0, 2) is empty
    for n in (6, 12, 60, 600):
        x = np.full(n, 3.9)
        assert _one(x, 0.0, 4.0, inner_half=True) == pytest.approx(-n / 6.0, rel=1e-12)
        assert _one(-x, -4.0, 0.0, inner_half=True) == pytest.approx(-n / 6.0, rel=1e-12)
        assert _one(x, 0.0, 4.0) == 0.0


# ---------------------------------------------------------------------- private_box


def _box_frequencies(monkeypatch, x, eps, mags, k):
    """How often private_box(feature_box=True) returns each candidate box when its uniform
    runs over (j + 1/2)/k, j = 0 … k-1: within 1/k of its probability, box by box."""
    uniforms = iter((np.arange(k) + 0.5) / k)
    monkeypatch.setattr(pb, "_uniform", lambda noise: next(uniforms))
    lower, upper, _ = pb.box_candidates(mags)
    index = {(a, b): i for i, (a, b) in enumerate(zip(lower, upper, strict=True))}
    assert len(index) == lower.size  # every candidate box is a distinct pair
    counts = np.zeros(lower.size)
    noise = NoiseSource(0)
    for _ in range(k):
        box = pb.private_box(x, eps, mags, noise, graded=True, feature_box=True)
        counts[index[box]] += 1
    return counts / k


def test_per_feature_box_draws_from_the_inner_half_and_floored_width_law(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(13.0, 0.8, 30).clip(11.0, 14.8)
    eps, k = 0.5, 600
    mags = 64.0 * np.exp2(-np.arange(27) / 2)
    lower, upper, prior = pb.box_candidates(mags)
    w = pb.WIDTH_WEIGHT

    def law(inner, floored):
        width = (
            pb.clipped_width_utility(x, lower, upper)
            if floored
            else pb.width_utility(x, upper - lower)
        )
        u = (1 - w) * pb.box_utility(x, lower, upper, inner_half=inner) + w * width
        return pb.em_probabilities(u, eps, 1.0, prior)

    rule = law(True, True)
    freq = _box_frequencies(monkeypatch, x, eps, mags, k)
    assert np.max(np.abs(freq - rule)) <= 1.0 / k + 1e-9
    # controls: without the inner-half rule, or with the plain width term, the law differs by
    # far more than 1/k on some box
    assert np.max(np.abs(law(False, True) - rule)) > 20.0 / k
    assert np.max(np.abs(law(True, False) - rule)) > 20.0 / k


# ---------------------------------------------------------------------- plan_estimated_bounds

DATA_NORM_REFUSAL = (
    "data_norm is a bound in the units of declared bounds_X; with estimated bounds rows are "
    "clipped after the map to L2 norm sqrt(d)/4 whatever data_norm says (use data_norm=None)"
)


@pytest.mark.parametrize(
    "est",
    [
        DPLinearRegression(bounds_X=pb.PrivateBounds(), data_norm=2.0),
        DPLinearRegression(bounds_X=pb.PrivateBounds(search_range=10.0), data_norm=1e-3),
        DPLogisticRegression(classes=[0, 1], bounds_X=pb.PrivateBounds(), data_norm=2.0),
        DPLogisticRegression(classes=[0, 1], bounds_X="data", data_norm=2.0),
    ],
)
def test_a_finite_data_norm_beside_estimated_features_is_refused_with_its_message(est):
    with pytest.raises(ValueError) as excinfo:
        pb.plan_estimated_bounds(est, 500, 3, 1.0, 1e-5)
    assert str(excinfo.value) == DATA_NORM_REFUSAL


def test_an_infinite_data_norm_beside_estimated_features_is_no_bound_and_fits():
    est = DPLinearRegression(bounds_X=pb.PrivateBounds(), data_norm=math.inf)
    plan = pb.plan_estimated_bounds(est, 500, 3, 1.0, 1e-5)
    assert (plan.x_kind, plan.y_kind) == ("dp", "dp")


def _target_only(epsilon, delta):
    """The split with no feature release and the target's box from all of the bounds' ρ
    (docs/dp.md: the bounds take BOUNDS_RHO_SHARE of ρ, the target all of it when no feature
    is released; no feature centre either)."""
    rho = pb.zcdp_rho(epsilon, delta)
    return math.sqrt(8.0 * pb.BOUNDS_RHO_SHARE * rho), pb.BOUNDS_RHO_SHARE * rho


@pytest.mark.parametrize(
    "est",
    [
        DPLinearRegression(bounds_X=(-1.0, 1.0)),
        DPLinearRegression(bounds_X=(-1.0, 1.0), data_norm=2.0),  # declared box and row clip
        DPLinearRegression(data_norm=2.0),  # the row clip implies the box
        DPLinearRegression(bounds_X=(-1.0, 1.0), bounds_y=pb.PrivateBounds(search_range=50.0)),
    ],
)
@pytest.mark.parametrize("d", [1, 4])
def test_declared_features_make_no_feature_release_and_the_target_gets_the_bounds_share(est, d):
    eps, delta = 1.0, 1e-5
    plan = pb.plan_estimated_bounds(est, 1000, d, eps, delta)
    assert (plan.x_kind, plan.y_kind, plan.shared, plan.pooled) == ("declared", "dp", False, False)
    b = plan.budget
    eps_y, rho_b = _target_only(eps, delta)
    assert b.releases == 0 and b.epsilon_release == 0.0 and b.epsilon_scale == 0.0
    assert b.rho_center == 0.0 and b.rho_spread == 0.0
    assert b.epsilon_target == pytest.approx(eps_y, rel=1e-12)
    assert b.rho == pytest.approx(rho_b, rel=1e-12)
    assert b.rho_model == pytest.approx(pb.zcdp_rho(eps, delta) - rho_b, rel=1e-12)


def test_data_features_make_no_feature_release_either():
    eps, delta = 1.0, 1e-5
    plan = pb.plan_estimated_bounds(DPLinearRegression(bounds_X="data"), 1000, 4, eps, delta)
    assert (plan.x_kind, plan.y_kind, plan.pooled) == ("data", "dp", False)
    assert plan.budget.releases == 0 and plan.budget.epsilon_release == 0.0
    assert plan.budget.epsilon_target == pytest.approx(_target_only(eps, delta)[0], rel=1e-12)


def _epsilon_per_feature(kind, d, epsilon, delta):
    """ε_r of each of d per-feature boxes, from docs/dp.md's split: Gaussian models take
    BOUNDS_RHO_SHARE of ρ for the bounds, half of it to a target's box, SCALE_SHARE of the
    features' part to the pooled scale release, ε_r = √(8 ρ_r / d); objective perturbation
    takes EPSILON_SHARE of ε with δ_b = DELTA_SHARE·δ, composed the better of two ways."""
    if kind == "objpert":
        return pb.per_release_epsilon(d, pb.EPSILON_SHARE * epsilon, pb.DELTA_SHARE * delta)[0]
    rho_x = pb.BOUNDS_RHO_SHARE * pb.zcdp_rho(epsilon, delta)
    if kind == "regression":
        rho_x /= 2.0
    return math.sqrt(8.0 * (1.0 - pb.SCALE_SHARE) * rho_x / d)


ESTIMATORS = {
    "regression": lambda: DPLinearRegression(),
    "dpgd": lambda: DPLogisticRegression(classes=[0, 1]),
    "objpert": lambda: DPLogisticRegression(classes=[0, 1], method="objpert"),
}


@pytest.mark.parametrize("kind", list(ESTIMATORS))
@pytest.mark.parametrize(("d", "epsilon", "delta"), [(3, 0.7, 1e-5), (10, 2.0, 1e-6)])
def test_per_feature_boxes_start_exactly_where_n_times_epsilon_r_reaches_16(
    kind, d, epsilon, delta
):
    eps_r = _epsilon_per_feature(kind, d, epsilon, delta)
    first = math.ceil(pb.PER_FEATURE_MIN_N_EPSILON / eps_r)  # the smallest n with n·ε_r >= 16
    # away from the threshold by more than any rounding
    assert first * eps_r > 16.0 + 1e-9 and (first - 1) * eps_r < 16.0 - 1e-9
    est = ESTIMATORS[kind]()
    below = pb.plan_estimated_bounds(est, first - 1, d, epsilon, delta)
    at = pb.plan_estimated_bounds(est, first, d, epsilon, delta)
    assert (below.pooled, below.shared, below.budget.releases) == (True, False, 1)
    assert (at.pooled, at.shared, at.budget.releases) == (False, False, d)
    assert at.budget.epsilon_release == pytest.approx(eps_r, rel=1e-9)
    # a declared shared scale pools whatever the rule says
    est.set_params(bounds_X=pb.PrivateBounds(shared_scale=True))
    shared = pb.plan_estimated_bounds(est, first, d, epsilon, delta)
    assert (shared.pooled, shared.shared, shared.budget.releases) == (True, True, 1)


NO_EPSILON_LEFT = (
    "epsilon=0.05, delta=0.025: with bounds estimated with DP the model would get no epsilon "
    "once the bounds' releases are paid; raise epsilon, lower delta, or declare bounds_X (and "
    "bounds_y)"
)


@pytest.mark.parametrize(
    "est", [DPLogisticRegression(classes=[0, 1]), DPLinearRegression(bounds_y=(-1.0, 1.0))]
)
def test_a_split_that_leaves_the_model_no_epsilon_is_refused_with_its_message(est):
    with pytest.raises(ValueError) as excinfo:
        pb.plan_estimated_bounds(est, 4, 1, 0.05, 0.025)
    assert str(excinfo.value) == NO_EPSILON_LEFT


@pytest.mark.parametrize("r", [np.int64(8), np.float32(1e3), np.float64(0.5), np.uint8(200)])
def test_a_numpy_number_is_a_search_range_too_and_is_kept_as_a_float(r):
    """search_range goes into the model's guarantee (JSON): numpy's numbers are accepted, as
    users get them from arrays, and stored as a Python float."""
    with warnings.catch_warnings():
        # np.float32 against the 3.9e97 cap: numpy would cast the cap to float32 (overflow)
        warnings.simplefilter("error")
        bounds = pb.PrivateBounds(search_range=r)
    assert type(bounds.search_range) is float and bounds.search_range == float(r)
    assert json.loads(json.dumps({"search_range": bounds.search_range}))["search_range"] == r


@pytest.mark.parametrize("r", [np.True_, np.float64("nan"), np.float32(-1.0), np.int64(0)])
def test_numpy_booleans_and_non_positive_numpy_numbers_are_refused(r):
    with pytest.raises(ValueError) as excinfo:
        pb.PrivateBounds(search_range=r)
    assert str(excinfo.value) == _refusal(r)
