"""Adversarial review of the feature boxes' graded utility (issue 12; commits 062729c, b9734cd).

Promise (docs/dp.md, "Bounds estimated with DP", item 1): u_w = -Σᵢ min(1, max(0,
log2(width / (2|xᵢ|)) / 2)) and the mix 0.7·u_box + 0.3·u_w have replace-one sensitivity 1,
so the feature box release is ε_r-DP for every data set of finite values and every public
``search_range``.

Break: ``width_utility`` computes Σ (lw - laᵢ) over the values in the graded band as a
difference of two running sums of log2|xᵢ| (``csum[hi] - csum[lo]``). Values that cost a full
1 (tiny ones, log2 ≈ -1074) still enter the running sum, which then sits near -1074·k; each
graded value added to it is rounded to that sum's ulp. Which binade the sum is in depends on k,
so replacing one record (a value at the box's edge, cost 0, by 5e-324, cost 1) moves the sum
across a power of two and flips the rounding of every graded value: the computed utilities of
two neighbours differ by 1 + m·ulp/2, not at most 1. The by-hand definition (one term per value,
each in [0, 1]) does not have this error. The inputs are crafted (millions of records), but the
guarantee is a worst case over data sets of finite values and public search ranges. 062729c's
width_utility gives the same 1.2384 as b9734cd's (the running sums came in with 062729c).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from heml.dp import _private_bounds as pb

TINY = 5e-324  # log2 = -1074 exactly: a value every candidate box charges a full 1


def _crafted_neighbours(binade: int, m: int):
    """(D, D', candidates): k values 5e-324 with 1074·k just below 2^binade (k + 1 just
    above), m values whose log2 is 3/4 of the running sum's ulp, and one record that is the
    edge c of a candidate [-c, c] (cost 0 there) in D and 5e-324 in D'. The public search
    range 1024·2^(1.6 ulp) puts that candidate's log2(width) - 1 just above the m values'."""
    k = int(2**binade // 1074)
    assert 1074 * k < 2**binade <= 1074 * (k + 1)
    ulp = 2.0 ** (binade - 1 - 52)  # of a sum in [2^(binade-1), 2^binade)
    mags = pb.grid(1024.0 * 2.0 ** (1.6 * ulp))
    mags = mags[mags > 0]
    lower, upper, prior = pb.box_candidates(mags)
    lw = np.log2(upper - lower) - 1.0
    j = int(np.argmin(np.where(lw > 0, lw, np.inf)))
    base = np.concatenate([np.full(k, TINY), np.full(m, 2.0 ** (0.75 * ulp))])
    return np.append(base, upper[j]), np.append(base, TINY), (lower, upper, prior, j)


def _mixed(x, lower, upper):
    w = pb.WIDTH_WEIGHT
    return (1.0 - w) * pb.box_utility(x, lower, upper) + w * pb.width_utility(x, upper - lower)


def _definition(x, width):
    """u_w by its definition, term by term (each in [0, 1]), summed exactly."""
    a = np.abs(np.ravel(x))
    zeros = int(np.sum(a == 0))
    la = np.log2(a[a > 0])
    cost = np.clip((math.log2(width) - 1.0 - la) / pb.WIDTH_OCTAVES, 0.0, 1.0)
    return -(zeros + math.fsum(cost))


def test_graded_utility_keeps_sensitivity_1_in_floating_point():
    D, D2, (lower, upper, _, j) = _crafted_neighbours(31, 2_000_000)
    widths = upper - lower
    # control: by the definition (one term per value) the two neighbours differ by exactly 1
    assert _definition(D, widths[j]) - _definition(D2, widths[j]) == pytest.approx(1.0, abs=1e-6)
    dw = pb.width_utility(D, widths) - pb.width_utility(D2, widths)
    dmix = _mixed(D, lower, upper) - _mixed(D2, lower, upper)
    assert np.max(np.abs(dw)) <= 1.0 + 1e-9  # measured 1.2384
    assert np.max(np.abs(dmix)) <= 1.0 + 1e-9  # measured 1.0715


@pytest.mark.slow
def test_graded_box_release_is_epsilon_dp_on_crafted_neighbours():
    D, D2, (lower, upper, prior, _) = _crafted_neighbours(34, 8_000_000)
    eps = 1.0
    p = pb.em_probabilities(_mixed(D, lower, upper), eps, 1.0, prior)
    del D
    q = pb.em_probabilities(_mixed(D2, lower, upper), eps, 1.0, prior)
    both = (p > 0) & (q > 0)
    assert np.array_equal(p > 0, q > 0)
    worst = float(np.max(np.abs(np.log(p[both]) - np.log(q[both]))))
    assert worst <= eps * (1.0 + 1e-9)  # measured 1.0652
