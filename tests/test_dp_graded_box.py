"""The feature boxes' graded utility (docs/dp.md, "Bounds estimated with DP", round 3).

Promise: a feature box is drawn by the exponential mechanism with utility
0.7·u_box + 0.3·u_width, where u_width = -Σᵢ min(1, max(0, log2(width / (2|xᵢ|)) / 2)) keeps
penalizing a box for 2 octaves beyond the data, and the release is ε_r-DP under replace-one
(sensitivity 1 per value; d for the pooled box, whose record holds d values).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from heml.dp import _private_bounds as pb
from heml.dp._noise import NoiseSource


def _width_utility_by_hand(x, width):
    """u_width from its definition, one value at a time (independent of the implementation)."""
    total = 0.0
    for v in np.ravel(x):
        if v == 0:
            total += 1.0
        else:
            total += min(1.0, max(0.0, math.log2(width / (2.0 * abs(v))) / 2.0))
    return -total


def test_width_utility_matches_its_definition():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal(40) * 10.0 ** rng.integers(-3, 4, 40), [0.0, 0.0]])
    widths = np.exp2(np.linspace(-14, 16, 97))
    got = pb.width_utility(x, widths)
    want = [_width_utility_by_hand(x, w) for w in widths]
    # log2 values are rounded down to WIDTH_QUANTUM (so the sum is exact in integers): each
    # term is off by less than one quantum
    np.testing.assert_allclose(got, want, rtol=0, atol=x.size * pb.WIDTH_QUANTUM)
    # graded: a box 1 octave past a value costs it 1/2, 2 octaves or more a full 1
    assert pb.width_utility(np.array([1.0]), np.array([2.0, 4.0, 8.0, 64.0])).tolist() == [
        0.0,
        -0.5,
        -1.0,
        -1.0,
    ]


def _graded_probabilities(x, eps, mags, sensitivity=1.0):
    lower, upper, prior = pb.box_candidates(mags)
    u = (1.0 - pb.WIDTH_WEIGHT) * pb.box_utility(x, lower, upper) + pb.WIDTH_WEIGHT * (
        pb.width_utility(x, upper - lower)
    )
    return pb.em_probabilities(u, eps, sensitivity, prior)


def _max_log_ratio(x, eps, mags, sensitivity=1.0):
    """max over replace-one neighbours (one value set to every point the utilities can tell
    apart, plus points between and beyond) and over outputs of |log P - log P'|."""
    lower, upper, _ = pb.box_candidates(mags)
    widths = upper - lower
    edges = np.concatenate(
        [lower, upper, (lower + upper) / 2, -(lower + upper) / 2, widths / 2, widths / 8]
    )
    edges = np.unique(np.concatenate([edges, -edges, [0.0]]))
    values = np.concatenate([edges, (edges[:-1] + edges[1:]) / 2, [edges[0] - 1, edges[-1] + 1]])
    p = _graded_probabilities(x, eps, mags, sensitivity)
    worst = 0.0
    for i in range(x.size):
        for v in values:
            x2 = x.copy()
            x2[i] = v
            q = _graded_probabilities(x2, eps, mags, sensitivity)
            worst = max(worst, float(np.max(np.abs(np.log(p) - np.log(q)))))
    return worst


def test_graded_box_release_meets_its_epsilon_and_a_miscalibrated_one_does_not():
    mags = pb.grid(4.0)[::6]
    mags = mags[mags > 0]
    x = np.array([0.3, 0.3, 1.2, 2.5, -0.7, 0.0])
    eps = 0.8
    assert _max_log_ratio(x, eps, mags) <= eps + 1e-12
    # positive control: calibrated as if the sensitivity were half of what it is
    assert _max_log_ratio(x, eps, mags, sensitivity=0.5) > eps


def test_the_release_draws_from_the_graded_probabilities():
    """private_box(graded=True) samples the mixed utility's distribution (chi-square over
    4 000 seeded draws), and not the old one (box utility alone)."""
    mags = pb.grid(8.0)[::4]
    mags = mags[mags > 0]
    x = np.array([0.01, 0.02, 0.015, 0.03, 0.012, 0.025, 0.018, 0.02])
    lower, upper, prior = pb.box_candidates(mags)
    p_new = _graded_probabilities(x, 2.0, mags)
    p_old = pb.em_probabilities(pb.box_utility(x, lower, upper), 2.0, 1.0, prior)
    noise = NoiseSource(11)
    draws = [pb.private_box(x, 2.0, mags, noise, graded=True) for _ in range(4000)]
    index = {(a, b): k for k, (a, b) in enumerate(zip(lower, upper, strict=True))}
    counts = np.bincount([index[d] for d in draws], minlength=lower.size)

    def chi2(p):
        keep = p * 4000 >= 5
        exp = np.append(p[keep] * 4000, p[~keep].sum() * 4000)
        obs = np.append(counts[keep], counts[~keep].sum())
        exp, obs = exp[exp > 0], obs[exp > 0]
        return float(((obs - exp) ** 2 / exp).sum()), int(exp.size - 1)

    from scipy.stats import chi2 as chi2_dist

    stat, dof = chi2(p_new)
    assert chi2_dist.sf(stat, dof) > 1e-4
    stat, dof = chi2(p_old)
    assert chi2_dist.sf(stat, dof) < 1e-6  # the detector tells the two laws apart


def test_graded_utility_puts_less_mass_on_far_too_wide_boxes():
    """What it is for: with a small ε_r most of the box utility's mass sat on boxes many
    octaves too wide (its count saturates past the data); the graded one moves it back."""
    rng = np.random.default_rng(0)
    x = 0.05 + 0.01 * rng.standard_normal(400)
    top = 16_000.0
    mags = top * np.exp2(-np.arange(41) / 2)
    lower, upper, prior = pb.box_candidates(mags)
    far = (upper - lower) > 2**5 * 0.08  # more than 5 octaves wider than the data's range
    p_old = pb.em_probabilities(pb.box_utility(x, lower, upper), 0.05, 1.0, prior)
    p_new = _graded_probabilities(x, 0.05, mags)
    assert p_old[far].sum() > 0.25
    assert p_new[far].sum() < 0.5 * p_old[far].sum()


@pytest.mark.parametrize("d", [2, 3])
def test_pooled_graded_box_needs_sensitivity_d(d):
    """One record holds d values, each moving u_box and u_width by at most 1: replacing a row
    moves the mix by at most d (checked over random replacement rows and extreme ones)."""
    mags = pb.grid(4.0)[::8]
    mags = mags[mags > 0]
    rng = np.random.default_rng(d)
    X = rng.uniform(-3, 3, (4, d))
    lower, upper, _ = pb.box_candidates(mags)
    edges = np.unique(np.concatenate([lower, upper, (upper - lower) / 2, (upper - lower) / 8]))
    pool = np.concatenate([edges, -edges, [0.0, 1e6, -1e6]])
    rows = np.concatenate([rng.choice(pool, (1500, d)), np.zeros((1, d)), np.full((1, d), 1e6)])

    def worst(sensitivity):
        p = _graded_probabilities(X, 1.0, mags, sensitivity)
        out = 0.0
        for i in range(X.shape[0]):
            for row in rows:
                X2 = X.copy()
                X2[i] = row
                q = _graded_probabilities(X2, 1.0, mags, sensitivity)
                out = max(out, float(np.max(np.abs(np.log(p) - np.log(q)))))
        return out

    assert worst(float(d)) <= 1.0 + 1e-12
    assert worst(d / 4.0) > 1.0  # calibrated for a quarter of the sensitivity: breaks ε


def test_width_utility_at_widths_zero_infinite_and_unusable():
    """Width 0: only the zeros cost (every other value is at least as wide as the box); an
    infinite or NaN width: every value costs 1. Mixed with finite widths in one call."""
    x = np.array([0.0, 0.0, 1.0, -3.0, 1e-300, 1e300])
    got = pb.width_utility(x, np.array([0.0, 2.0, np.inf, np.nan]))
    # at width 2: the zeros and 1e-300 cost 1, |1| costs 0 (2 = 2·1), |-3| and 1e300 cost 0
    assert got.tolist() == [-2.0, -3.0, -6.0, -6.0]


def test_width_utility_values_beyond_every_band_cost_exactly_0_or_1():
    widths = np.array([1.0, 4.0])
    assert pb.width_utility(np.array([1e-300]), widths).tolist() == [-1.0, -1.0]
    assert pb.width_utility(np.array([1e300]), widths).tolist() == [0.0, 0.0]
    assert pb.width_utility(np.array([5e-324, -5e-324]), widths).tolist() == [-2.0, -2.0]


def test_width_utility_refuses_more_values_than_its_exact_sum_holds():
    """n values times the span of the bands in quanta must stay below 2^53 (the sum is exact
    in integers and as a float); widths from 1e-300 to 1e300 span about 2,000 octaves, so
    about 4.3 million values are too many and a thousand are not."""
    widths = np.array([1e-300, 1e300])
    assert pb.width_utility(np.ones(1000), widths).shape == (2,)
    with pytest.raises(ValueError, match="exact width utility"):
        pb.width_utility(np.ones(4_400_000), widths)
