"""The private bounds' utility, from its docstring (issue 18; docs/dp.md, "Bounds").

u = -max(#{x outside [a, b]}, max(0, t - #{x in the box's outer half or beyond})), with
t = BOX_TARGET·n; the outer half is |x| ≥ c/2 for [-c, c], x ≥ (a + b)/2 for a positive box,
x ≤ (a + b)/2 for a negative one; with both_sides, max(0, t/2 - min(#{x ≥ c/2}, #{x ≤ -c/2}))
for [-c, c]. The exponential mechanism's privacy needs sensitivity 1 under replace-one.
"""

from __future__ import annotations

import numpy as np
import pytest

from heml.dp._private_bounds import BOX_TARGET, box_candidates, box_utility


def reference(x, lower, upper, both_sides):
    x, n = list(np.ravel(x)), np.size(x)
    t = BOX_TARGET * n
    out = []
    for a, b in zip(lower, upper, strict=True):
        outside = sum(v < a or v > b for v in x)
        if a == -b:
            above, below = sum(v >= b / 2 for v in x), sum(v <= -b / 2 for v in x)
            wide = (
                max(0.0, t / 2 - min(above, below)) if both_sides else max(0.0, t - above - below)
            )
        elif a >= 0:
            wide = max(0.0, t - sum(v >= (a + b) / 2 for v in x))
        else:
            wide = max(0.0, t - sum(v <= (a + b) / 2 for v in x))
        out.append(-max(outside, wide))
    return np.array(out, dtype=np.float64)


def _data(rng, n):
    lo, hi, _ = box_candidates(np.array([0.5, 2.0, 8.0]))
    # values exactly on every edge, midpoint and half-width, plus random ones
    edges = np.concatenate([lo, hi, (lo + hi) / 2, hi / 2, -hi / 2, [0.0]])
    return lo, hi, np.concatenate([rng.choice(edges, n // 2), rng.normal(0, 3, n - n // 2)])


@pytest.mark.parametrize("both_sides", [False, True])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_box_utility_is_the_documented_count(seed, both_sides):
    rng = np.random.default_rng(seed)
    lo, hi, x = _data(rng, 60)
    got = box_utility(x, lo, hi, both_sides=both_sides)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, reference(x, lo, hi, both_sides))
    positive = np.abs(x) + 0.1  # a one-sided sample: the positive boxes win
    np.testing.assert_array_equal(box_utility(positive, lo, hi), reference(positive, lo, hi, False))


@pytest.mark.parametrize("both_sides", [False, True])
def test_the_box_utility_has_sensitivity_one_under_replace_one(both_sides):
    rng = np.random.default_rng(7)
    lo, hi, x = _data(rng, 40)
    base = box_utility(x, lo, hi, both_sides=both_sides)
    worst = 0.0
    for i in range(x.size):
        for v in (-20.0, -1.0, 0.0, 0.25, 1.0, 4.0, 20.0):
            y = x.copy()
            y[i] = v
            worst = max(
                worst, float(np.abs(box_utility(y, lo, hi, both_sides=both_sides) - base).max())
            )
    assert 0 < worst <= 1.0


def test_the_exponential_mechanism_weights_are_prior_times_exp_eps_u_over_2s():
    from heml.dp._private_bounds import em_probabilities

    u = [-3.0, 0.0, -1.0, -2.0]
    prior = np.array([1.0, 2.0, 4.0, 8.0])
    for eps, s, pr in [(1.0, 1.0, None), (2.0, 0.5, prior), (0.3, 2.0, prior)]:
        w = np.exp(eps * np.array(u) / (2 * s)) * (1.0 if pr is None else pr)
        got = em_probabilities(u, eps, s, pr)
        np.testing.assert_allclose(got, w / w.sum(), rtol=1e-12)
    # large utilities: normalized without overflow
    big = em_probabilities([-5000.0, -4000.0, -4001.0], 2.0)
    np.testing.assert_allclose(
        big, [0.0, 1 / (1 + np.exp(-1.0)), np.exp(-1.0) / (1 + np.exp(-1.0))]
    )


@pytest.mark.parametrize("both_sides", [False, True])
def test_a_box_that_fits_its_data_has_utility_zero(both_sides):
    """Where nothing is clipped and enough values reach the outer half, u = 0 exactly (the
    'too wide' term is floored at 0, not 1); values exactly at a box's midpoint count as
    reaching its outer half."""
    m = np.array([2.0])
    lo, hi, _ = box_candidates(m)
    for x in (np.array([-1.8, 1.8] * 10), np.full(20, 1.8), np.full(20, -1.5)):
        got = box_utility(x, lo, hi, both_sides=both_sides)
        np.testing.assert_array_equal(got, reference(x, lo, hi, both_sides))
        assert got.max() == 0.0
    # the negative box [-2, -1]: its midpoint -1.5 is in its outer half
    neg = (lo == -2.0) & (hi == -1.0)
    assert box_utility(np.full(20, -1.5), lo, hi)[neg] == 0.0
