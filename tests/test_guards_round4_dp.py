"""DP guarantees at their exact edges (issue 18, fourth round; docs/dp.md, docs/testing.md).

Promises checked where the code's comparisons decide:

* a ``with accountant:`` block is the default until *that* block ends, whatever order blocks
  opened in generators end in; the blocks still open keep their order;
* the accountant's relative slack of 1e-9 includes its edge: a total of exactly
  budget × (1 + 1e-9) fits; the ledger's "not a raise" includes stored × (1 + 1e-12);
* ``objpert_delta`` is the δ of objective perturbation also at ε = log1p(β/λ), where the
  Gaussian part's ε_G is exactly 0 (δ = the two Gaussians' total variation, not 1);
* AdaSSP's θ solves (noisy AᵀA + λI)θ = noisy Aᵀy: data (and bounds) in units 2^-20 of
  another give the same model, since every release, σ, lattice step and the ridge scale by
  2^-40 exactly; only an eigenvalue floor that does not scale with them could change it.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import norm

from heml.dp import DPLinearRegression, _ledger
from heml.dp import _private_bounds as pb
from heml.dp._accountant import BudgetAccountant, BudgetError
from heml.dp._calibration import objpert_delta


# ---------------------------------------------------------------------- with blocks
def _block(acc):
    """A generator holding ``with acc:`` open between its first and second step. Generators
    run in their caller's context, so their blocks can end in any order."""
    with acc:
        yield


def _end(gen):
    assert next(gen, "ended") == "ended"


def test_a_block_that_ends_before_inner_ones_stops_being_the_default_and_the_rest_keep_order():
    outer, a, x, b = (BudgetAccountant(epsilon=e) for e in (1.0, 2.0, 3.0, 4.0))
    with outer:
        ga, gx, gb = _block(a), _block(x), _block(b)
        next(ga), next(gx), next(gb)  # a, then x, then b entered
        assert BudgetAccountant.load_default() is b
        _end(ga)  # a's block ends first: b (innermost open) stays the default
        assert BudgetAccountant.load_default() is b
        _end(gb)  # then b's: x, the block a was outside of, is the default, not a
        assert BudgetAccountant.load_default() is x
        _end(gx)
        assert BudgetAccountant.load_default() is outer
    assert BudgetAccountant.load_default() not in (outer, a, x, b)


def test_the_same_accountant_nested_twice_stays_the_default_until_its_outer_block_ends():
    a, b = BudgetAccountant(epsilon=1.0), BudgetAccountant(epsilon=2.0)
    with a:
        with b:
            with a:
                assert BudgetAccountant.load_default() is a
            assert BudgetAccountant.load_default() is b
        assert BudgetAccountant.load_default() is a
    assert BudgetAccountant.load_default() not in (a, b)


# ---------------------------------------------------------------------- tolerance edges
@pytest.mark.parametrize(("budget", "delta_budget"), [(1.0, 1e-5), (3.0, 0.5), (0.7, 0.25)])
def test_a_total_of_exactly_the_budget_times_one_plus_its_slack_fits(budget, delta_budget):
    # the documented relative slack; + 1e-300 is lost at these sizes
    edge, edge_d = budget * (1.0 + 1e-9), delta_budget * (1.0 + 1e-9)
    assert edge + 1e-300 == edge > budget and edge_d + 1e-300 == edge_d > delta_budget
    acc = BudgetAccountant(epsilon=budget, delta=delta_budget)
    acc.check(edge, edge_d)
    acc.spend(edge, 0.0)
    assert acc.spent == (edge, 0.0)
    acc.spend(1e-300, edge_d)  # ε: 1e-300 more is lost in the sum
    assert acc.spent == (edge, edge_d)
    # one float above the edge does not fit, for ε or δ
    above, above_d = math.nextafter(edge, math.inf), math.nextafter(edge_d, math.inf)
    for eps, delta in ((above, 0.0), (1e-300, above_d)):
        with pytest.raises(BudgetError, match="privacy budget exceeded"):
            BudgetAccountant(epsilon=budget, delta=delta_budget).spend(eps, delta)


@pytest.mark.parametrize("stored", [2.0, 0.7, 1e-5])
def test_a_budget_given_at_the_stored_one_times_one_plus_1e_12_is_not_a_raise(stored):
    given = stored * (1 + 1e-12)
    assert given > stored
    data = {"datasets": {"k": {"budget_epsilon": stored, "budget_delta": stored}}}
    kw = {"allow_raise": False, "default_delta": 0.5}
    assert _ledger.budgets(data, "k", epsilon=given, delta=given, **kw) == (given, given)
    above = math.nextafter(given, math.inf)
    with pytest.raises(BudgetError, match=r"^--budget .* would raise"):
        _ledger.budgets(data, "k", epsilon=above, delta=None, **kw)
    with pytest.raises(BudgetError, match=r"^--budget-delta .* would raise"):
        _ledger.budgets(data, "k", epsilon=None, delta=above, **kw)


# ---------------------------------------------------------------------- objective perturbation
@pytest.mark.parametrize(("sigma", "lam", "beta"), [(10.0, 1.0, 1.0), (3.0, 3.0, 0.7)])
def test_objpert_delta_where_the_gaussian_part_gets_epsilon_zero(sigma, lam, beta):
    epsilon = math.log1p(beta / lam)  # ε_J takes all of ε: ε_G = 0 exactly
    # at ε = 0 a Gaussian's δ is its total variation: 2Φ(Δ/(2s)) - 1 for sensitivity Δ and
    # scale s; the objective's terms: sensitivity 2 at σ, and twice sensitivity 1 at σ
    want = (2 * norm.cdf(1.0 / sigma) - 1) + 2 * (2 * norm.cdf(1.0 / (2 * sigma)) - 1)
    assert want < 0.6
    assert objpert_delta(sigma, lam, beta, epsilon) == pytest.approx(want, rel=1e-9)
    # and it is continuous there: a hair more ε changes δ by a hair
    nudged = objpert_delta(sigma, lam, beta, math.nextafter(epsilon, math.inf))
    assert nudged == pytest.approx(want, rel=1e-9)
    # below, the objective's Jacobian alone costs more than ε: no guarantee (δ = 1)
    assert objpert_delta(sigma, lam, beta, epsilon * 0.999) == 1.0


# ---------------------------------------------------------------------- AdaSSP's solve
def _fit(X, y, scale, seed):
    reg = DPLinearRegression(
        epsilon=1.0,
        delta=1e-5,
        bounds_X=(-scale, scale),
        bounds_y=(-2 * scale, 2 * scale),
        accountant=BudgetAccountant(),
        random_state=seed,
        method="adassp",
    )
    return reg.fit(X * scale, y * scale)


@pytest.mark.parametrize("seed", [7, 8])
def test_adassp_gives_the_same_model_for_data_in_units_2_to_the_minus_20(seed):
    rng = np.random.default_rng(3)
    X = rng.uniform(-1.0, 1.0, (400, 3))
    y = X @ [0.5, -0.3, 0.2] + 0.05 * rng.standard_normal(400)
    unit = _fit(X, y, 1.0, seed)
    small = _fit(X, y, 2.0**-20, seed)
    # the noisy AᵀA + λI of the small fit is 2^-40 times the unit one: eigenvalues ~1e-10
    assert small.noise_["ridge"] == unit.noise_["ridge"] * 2.0**-40
    np.testing.assert_allclose(small.coef_, unit.coef_, rtol=1e-9, atol=0)
    assert small.intercept_ == pytest.approx(unit.intercept_ * 2.0**-20, rel=1e-9, abs=1e-25)
    assert small.score(X * 2.0**-20, y * 2.0**-20) == pytest.approx(unit.score(X, y), rel=1e-9)
    assert unit.score(X, y) > 0.5  # a real fit, not a model shrunk to 0


# ---------------------------------------------------------------------- the graded width utility
# docs/dp.md, "Bounds estimated with DP", item 1: u_w = -Σᵢ min(1, max(0, log2(w / (2|xᵢ|)) / 2))
# (a value 0 always costs 1), log2 values quantized to 2^-20 and summed exactly in integers.
def _by_definition(x, width):
    """u_w in exact arithmetic for values and widths that are powers of two (log2 exact)."""
    total = Fraction(0)
    for v in x:
        if v == 0:
            total += 1
        elif width > 0:  # a box of width 0 is never too wide for a value ≠ 0
            k = Fraction(math.log2(width)) - 1 - Fraction(math.log2(abs(v)))
            total += min(Fraction(1), max(Fraction(0), k / 2))
    return -total


def test_width_utility_on_powers_of_two_is_the_definition_exactly():
    x = [0.0, 1.0, -1.0, 0.25, 2.0**-30, 2.0**40, -(2.0**7), 0.5]
    widths = [2.0**k for k in range(-34, 46, 1)] + [0.0]
    got = pb.width_utility(np.array(x), np.array(widths))
    assert [Fraction(g) for g in got.tolist()] == [_by_definition(x, w) for w in widths]


def test_width_utility_is_a_function_of_the_widths_values_not_their_dtype():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200) * 10.0
    w32 = np.exp2(np.linspace(-5.0, 8.0, 50)).astype(np.float32)
    w64 = w32.astype(np.float64)  # the same numbers
    want = pb.width_utility(x, w64)
    np.testing.assert_array_equal(pb.width_utility(x, w32), want)
    ints = np.array([0, 1, 3, 12, 100, 4096])
    np.testing.assert_array_equal(
        pb.width_utility(x, ints), pb.width_utility(x, ints.astype(np.float64))
    )


def test_width_utility_of_a_width_zero_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = pb.width_utility(np.array([0.0, 1.0, 0.0]), np.array([0.0, 4.0]))
    assert got.tolist() == [-2.0, -2.0 - 0.5]


def test_width_utility_refuses_exactly_when_n_times_the_span_in_quanta_reaches_2_to_the_53():
    """The bands of widths 2^-1021 and 2^1022 with the margins (3 octaves below, 1 above, one
    more) span 2048 = 2^11 octaves, 2^31 quanta: 2^22 values reach 2^53, one fewer does not."""
    widths = np.array([2.0**-1021, 2.0**1022])
    n = 2**22
    # a box of width 2^-1021 is not too wide for a value 1 (cost 0), one of 2^1022 is (cost 1)
    assert pb.width_utility(np.ones(n - 1), widths).tolist() == [0.0, -(n - 1.0)]
    with pytest.raises(ValueError, match=r"^too many values for an exact width utility$"):
        pb.width_utility(np.ones(n), widths)
