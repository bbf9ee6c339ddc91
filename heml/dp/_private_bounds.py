"""Feature and target bounds estimated with differential privacy, inside the fit's budget.

Without public bounds a DP estimator must still clip its inputs to *some* box, and a box read
from the data (min and max) is a release that ε does not cover: one record moves it. Here the
box is chosen by the exponential mechanism (McSherry & Talwar 2007) over **public** candidates
and paid for from the fit's own (ε, δ):

* Magnitudes: ±search_range·2^(-j/2), j = 0 … 80 (a log grid from search_range down to
  search_range·2^-40, two points per octave). ``search_range`` is public (default 1e6) and can
  be narrowed with :class:`PrivateBounds`.
* Per feature (and for a regression target) one release: a box among [-c, c], [f·c, c] and
  [-c, -f·c] (f in BOX_FRACTIONS, c a magnitude), with a public prior favouring tighter shapes,
  and utility u = -max(#values the box clips, max(0, n/3 - #values in its outer half or
  beyond)). Each count moves by at most 1 when one record is replaced, and so does their
  maximum: P[box] ∝ prior·exp(ε_r·u/2) is ε_r-DP (replace-one, n public).
* When n·ε_r is too small for d such releases to find the data (``per_feature``: a public rule
  on n, d, ε, δ), or when the user declares that all features share one unit
  (``PrivateBounds(shared_scale=True)``, public), all features share one box instead: the
  same release over all n·d values, with sensitivity d (a record holds d values).
* Gaussian models (AdaSSP, DP-GD; ``split_budget(gaussian=True)``): the whole fit is accounted
  in zCDP (an ε_r-DP exponential mechanism is ε_r²/8-zCDP, Cesar & Rogers 2021; a Gaussian with
  multiplier m is 1/(2m²)-zCDP), converted to (ε, δ) by Canonne, Kamath & Steinke (2020, Prop.
  12). The boxes take BOUNDS_RHO_SHARE of ρ, or less where n is large enough that each feature
  release reaches n·ε_r = BOX_MAX_N_EPSILON, never under BOX_MIN_RHO_SHARE of ρ for the feature
  releases (a pooled scale release first narrows the per-feature candidates; the target's box
  comes from a DP median and MAD), the features' DP
  centre CENTER_RHO_SHARE and, when a public rule says its noise is small, their DP spread
  SPREAD_RHO_SHARE (``private_center``); the model's noise gets the rest, and
  ``check_zcdp_total`` re-derives ρ from the model's actual noise before anything is released.
* Objective perturbation: the fit's budget splits by basic composition: the bounds take
  ε_b = EPSILON_SHARE·ε (half of it for the target's release when there is one) and
  δ_b ≤ DELTA_SHARE·δ, the feature releases composing in zCDP or basically; the model's
  mechanism gets the rest. ``dp_guarantee_["budget_split"]`` states the split either way.

The estimator then maps every feature to [-1, 1] with its released box, centre and spread
(post-processing of the releases, so free), clips rows there, and fits; the exported model
folds the map back.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from ._noise import NoiseSource, _secure_uniform, rounding_slack
from ._validation import (
    MAX_BOUND,
    MIN_EPSILON,
    MIN_SCALE,
    check_data_norm,
    check_declared_bounds,
    implied_box,
)

# Public, fixed a priori: none depends on the data being fitted. They were chosen by measuring
# a few alternatives on the benchmark sets (docs/dp.md, "Bounds estimated with DP").
EPSILON_SHARE = 0.3
DELTA_SHARE = 0.1
# With a Gaussian model (AdaSSP, DP-GD) the fit is accounted in zCDP and the bounds take this
# share of its ρ (see split_budget).
BOUNDS_RHO_SHARE = 0.3
# ...but no feature release gets more than the ρ that gives it n·ε_r = BOX_MAX_N_EPSILON (round
# 6): past that the exponential mechanism's lead for the data's boxes (n·ε_r/2 times a fraction
# of the utility's range, in nats) is far above log #candidates (≈ 6), so more ρ buys the box
# nothing the model could use, while the model's noise falls with every bit of ρ it gets. Where
# n·ε_r was above it (digits at ε = 5 per feature, 171; one pooled box for all 64 pixels, 340 at
# ε = 1), the model gets the rest: digits at ε = 5 0.882 -> 0.893, the declared shared scale at
# ε = 1 0.772 -> 0.807 (100 fits each; docs/dp.md, round 6). A public rule on n, d, ε, δ.
BOX_MAX_N_EPSILON = 100.0
# The cap never takes the feature releases below this share of ρ: at a fixed n·ε_r the box's
# randomness stops shrinking as n grows, and at large n the model's noise is already small, so
# the ρ the cap frees buys little (a review measured R² 0.819 against 0.822, worst of 8 fits
# 0.803 against 0.822, at n = 100 000, d = 2 with the cap alone). With the floor, n·ε_r grows
# with n again once BOX_MIN_RHO_SHARE of ρ gives each release more than the cap.
BOX_MIN_RHO_SHARE = 0.05
# zCDP path with per-feature boxes: this share of the features' ρ first releases one pooled box
# (its magnitude c, sensitivity d); the per-feature candidates are then SCALE_HEADROOM·c·2^(-j/2)
# over SCALE_OCTAVES octaves instead of the whole public search range. The pooled box follows
# the bulk of all n·d values, not the largest feature: with 4·c (round 3) wine's proline
# (278-1 680, beside columns below 30) often had no candidate above its values and was clipped
# to a constant. 256·c over 26 octaves reaches 6 octaves higher and keeps the lowest candidate
# (c·2^-18) where it was (wine at ε = 5: +0.025 on 80 fits; docs/dp.md, round 4).
SCALE_SHARE = 0.1
SCALE_HEADROOM = 256.0
SCALE_OCTAVES = 26
# zCDP path: this share of ρ releases the mean of the box-mapped features (Gaussian, L2
# sensitivity 2√d), the point rows are centred and clipped around (see ``private_center``).
CENTER_RHO_SHARE = 0.15
SPREAD_RHO_SHARE = 0.1
# where the spread is released (the public spread_rule), the centre takes this share instead of
# CENTER_RHO_SHARE: the spread's clip around it then tolerates a noisier centre, and the model
# gets the difference (digits at eps = 5: +0.005 on 80 fits; docs/dp.md, round 4)
CENTER_RHO_SHARE_WITH_SPREAD = 0.1
# With estimated bounds the model clips rows to L2 norm ROW_NORM_FACTOR·√d in the released
# map's units (a public rule on d). The declared-bounds default (a third of the box's radius,
# √d/3 for a [-1, 1] box) left most rows far inside the clip once the map had centred them:
# the DP models' noise is fixed by the clip, so a tighter clip raises the signal. Measured on
# the raw benchmark sets (80 fits per cell): +0.008 breast cancer and +0.007 digits at ε = 1,
# +0.005 diabetes R² at ε = 5, every other cell within ±0.003 (docs/dp.md).
ROW_NORM_FACTOR = 0.25
# the spread is released only when its noise (sd sqrt(d)·m/n in the box's units, m the noise
# multiplier of its share; ``spread_noise``) is at most this: a public rule on n, d, ε, δ
SPREAD_MAX_NOISE = 0.05
# features are clipped at this many (DP) spreads around their centre; 3 until round 4, when 2
# measured +0.008 on digits at eps = 5 (80 fits; breast cancer -0.002, diabetes +0.002)
SPREAD_CLIP = 2.0
SPREAD_FLOOR = 0.05  # in the box's [-1, 1] units
SPREAD_FLOOR_NOISES = 2.0
DEFAULT_SEARCH_RANGE = 1e6
# every released bound stays within ±MAX_BOUND: a target's median + 3 MADs reaches 4x the range,
# a per-feature box SCALE_HEADROOM x the pooled scale (itself within the range)
MAX_SEARCH_RANGE = MAX_BOUND / max(4.0, SCALE_HEADROOM)
# ...and every candidate (down to 2^-40 of the range) at least MIN_SCALE, which the model fitted
# inside on the released bounds requires: a smaller range made that inner fit refuse its target
# box after the whole fit was paid for (found by review)
MIN_SEARCH_RANGE = 1e-85
POINTS_PER_OCTAVE = 2
OCTAVES = 40
# Per-feature boxes need n·ε_r large enough for the exponential mechanism to find the data
# among the candidates; below this public threshold all features share one pooled box (a
# record then holds d values: sensitivity d, but only two releases).
PER_FEATURE_MIN_N_EPSILON = 16.0

MECHANISM = (
    "exponential mechanism over public boxes [-c, c], [f c, c], [-c, -f c] (c on a log grid, "
    "f in {0, 1/2, 3/4}, prior 1:2:4:8), utility -max(#clipped, max(0, n/3 - #in outer half)) "
    "(features: 0.7 times it plus 0.3 times -sum_i min(1, max(0, log2(width / (2|x_i|)) / 2)), "
    "that sum floored at #clipped for per-feature boxes, whose one-sided shapes must also "
    "hold n/6 values in their inner half), sensitivity 1, one release per "
    "feature and one for the target (whose [-c, c] must reach "
    "both outer halves); or (n*epsilon_r < 16, or shared_scale declared) one pooled box over "
    "all n*d values (sensitivity d); feature "
    "releases composed in zCDP (epsilon_r^2/8 each)"
)
MECHANISM_ZCDP = (
    "exponential mechanism over public boxes [-c, c], [f c, c], [-c, -f c] (c on a log grid, "
    "f in {0, 1/2, 3/4}, prior 1:2:4:8), utility -max(#clipped, max(0, n/3 - #in outer half)) "
    "(feature boxes: 0.7 times it plus 0.3 times -sum_i min(1, max(0, log2(width / (2|x_i|)) / "
    "2)), that sum floored at #clipped for per-feature boxes, whose one-sided shapes must "
    "also hold n/6 values in their inner half), sensitivity 1: one pooled box "
    "over all n*d values (sensitivity d) fixing the scale, then "
    "one box per feature among candidates below 256x that scale (or the pooled box alone when "
    "n*epsilon_r < 16, or when shared_scale is declared); the target's box median +- 3 MAD "
    "from two exponential mechanisms "
    "(utility -|#{y < t} - n/2| and -|#{|y - m| < r} - n/2|); Gaussian releases of the "
    "features' mean (and mean absolute deviation) in the box's [-1, 1] units, L2 "
    "sensitivity 2 sqrt(d); all composed with the model's Gaussian noise in zCDP"
)


@dataclass(frozen=True)
class PrivateBounds:
    """Ask a DP estimator to estimate its bounds with DP (the default when bounds are None).

    Parameters
    ----------
    search_range : float, default=1e6
        Public bound on the magnitude of the data: the first releases (one box or the pooled
        scale, the target's median and MAD) pick among candidates in [-search_range,
        search_range] on a log-scale grid; per-feature boxes then reach up to
        SCALE_HEADROOM (256) times the released pooled scale, and a target's box up to 4 times
        the range. Between MIN_SEARCH_RANGE (1e-85) and MAX_SEARCH_RANGE (1e100 / 256). Narrow
        it when you know the scale of your data (e.g. 1e3 for values in the hundreds): fewer
        candidates, sharper bounds.
    shared_scale : bool, default=False
        Your public declaration that every feature column is in one unit and on one scale:
        pixel intensities, counts of the same thing, a sensor array read in one unit. The fit
        then always releases ONE box for all features from all n·d values (sensitivity d, one
        release instead of d), whatever the public rule on n, d, ε, δ would pick; the
        guarantee records ``"shared_scale": true`` beside ``"pooled": true``. False: the rule
        picks per-feature boxes or the pooled box, as without a declaration. Like
        ``classes=``, it is a statement about the data's schema, never read from the data.
        If it is wrong (columns in different units), the shared box follows the large-unit
        columns and the small-unit ones are clipped to (almost) nothing: they drop out of the
        model (breast cancer, pooled: the majority class; docs/dp.md, "Accuracy").
    """

    search_range: float = DEFAULT_SEARCH_RANGE
    shared_scale: bool = False

    def __post_init__(self) -> None:
        r = self.search_range
        number = isinstance(r, numbers.Real) and not isinstance(r, bool)  # np.bool_ is no Real
        # numpy's numbers as Python's (np.float32 would compare against a cap it cannot hold)
        value = r.item() if number and isinstance(r, np.generic) else r
        if not number or not (MIN_SEARCH_RANGE <= value <= MAX_SEARCH_RANGE):
            # every released bound (see MAX_SEARCH_RANGE) must stay within what a model accepts
            raise ValueError(
                f"search_range must be a number in [{MIN_SEARCH_RANGE:g}, "
                f"{MAX_SEARCH_RANGE:g}], got {r!r}"
            )
        # numpy's numbers too (np.int64(8), np.float32(1e3)), kept as one float: it is
        # written into the model's guarantee (JSON)
        object.__setattr__(self, "search_range", float(value))
        if not isinstance(self.shared_scale, bool):
            raise ValueError(f"shared_scale must be True or False, got {self.shared_scale!r}")


def grid(search_range: float = DEFAULT_SEARCH_RANGE) -> np.ndarray:
    """The public candidates, ascending: 0 and ±search_range·2^(-j/POINTS_PER_OCTAVE)."""
    j = np.arange(OCTAVES * POINTS_PER_OCTAVE + 1)
    mags = float(search_range) * np.exp2(-j / POINTS_PER_OCTAVE)
    return np.concatenate([-mags, [0.0], mags[::-1]])


# Box shapes for the per-feature release, with their public prior weights: for a magnitude c,
# [-c, c], and [f·c, c] and its mirror [-c, -f·c] for f in BOX_FRACTIONS. Tighter boxes weigh
# more, so that among boxes that fit the data equally well the tighter one tends to win.
BOX_FRACTIONS = (0.0, 0.5, 0.75)
BOX_PRIOR = (1.0, 2.0, 4.0, 8.0)  # symmetric, then f = 0, 1/2, 3/4
BOX_TARGET = 1.0 / 3.0  # a box must hold at least this share of values in its outer half
# a one-sided per-feature box must also hold this share in its inner half (since round 4: wine's
# alcohol, 11-15, got [0, 15.3] or [7.6, 15.3] as often as [11.4, 15.3]; wine at eps = 5
# +0.006 +- 0.002 on 160 fits, every other raw cell within +-0.002; docs/dp.md)
BOX_INNER_TARGET = 1.0 / 6.0


def box_candidates(magnitudes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower, upper, prior weight) of every candidate box (public)."""
    lo, hi, w = [-magnitudes], [magnitudes], [np.full(magnitudes.size, BOX_PRIOR[0])]
    for f, weight in zip(BOX_FRACTIONS, BOX_PRIOR[1:], strict=True):
        lo += [f * magnitudes, -magnitudes]
        hi += [magnitudes, -f * magnitudes]
        w += [np.full(magnitudes.size, weight)] * 2
    return np.concatenate(lo), np.concatenate(hi), np.concatenate(w)


def box_utility(
    x: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    both_sides: bool = False,
    inner_half: bool = False,
) -> np.ndarray:
    """u = -max(#{x outside [a, b]}, max(0, t - #{x in the box's outer half or beyond})).

    The first count is what the box clips; the second says the box is too wide (t =
    BOX_TARGET·n values must reach its outer half: |x| ≥ c/2 for [-c, c], x ≥ (a + b)/2 for
    a box on the positive side, x ≤ (a + b)/2 on the negative side). With ``both_sides``
    (a regression target, whose box centre is what the model shrinks toward), [-c, c] must
    reach both of its outer halves instead: max(0, t/2 - min(#{x ≥ c/2}, #{x ≤ -c/2})), so
    that a target on one side of 0 gets a one-sided box. With ``inner_half`` (per-feature
    boxes) a one-sided box must also hold BOX_INNER_TARGET·n values in its inner half
    (a ≤ x < (a + b)/2 on the positive side, (a + b)/2 < x ≤ b on the negative side): the
    "too wide" count is then max(0, t - #outer, t_inner - #inner), so that [0, c] no longer
    fits values that all lie near c as well as [c/2, c] or [3c/4, c] does. Each count, each
    min and the max move by at most 1 when one record is replaced: sensitivity 1.
    """
    x = np.sort(np.ravel(x))
    n = x.size
    outside = np.searchsorted(x, lower, side="left") + (n - np.searchsorted(x, upper, "right"))
    mid = (lower + upper) / 2.0
    sym = lower == -upper
    positive = lower >= 0
    t = BOX_TARGET * n
    above = n - np.searchsorted(x, upper / 2.0, side="left")
    below = np.searchsorted(x, -upper / 2.0, side="right")
    one = np.where(
        positive,
        n - np.searchsorted(x, mid, side="left"),
        np.searchsorted(x, mid, side="right"),
    )
    if both_sides:
        wide_sym = np.maximum(t / 2.0 - np.minimum(above, below), 0.0)
    else:
        wide_sym = np.maximum(t - (above + below), 0.0)
    wide_one = np.maximum(t - one, 0.0)
    if inner_half:
        inner = np.where(
            positive,
            np.searchsorted(x, mid, side="left") - np.searchsorted(x, lower, side="left"),
            np.searchsorted(x, upper, side="right") - np.searchsorted(x, mid, side="right"),
        )
        wide_one = np.maximum(wide_one, BOX_INNER_TARGET * n - inner)
    wide = np.where(sym, wide_sym, wide_one)
    return -np.maximum(outside, wide).astype(np.float64)


def private_box(
    x: np.ndarray,
    epsilon: float,
    magnitudes: np.ndarray,
    noise: NoiseSource,
    both_sides: bool = False,
    sensitivity: float = 1.0,
    graded: bool = False,
    feature_box: bool = False,
) -> tuple[float, float]:
    """One ε-DP release of a box for x: the exponential mechanism with the public prior.

    ``sensitivity``: how many values of x one record holds (d for a pooled box).
    ``graded``: the utility is (1 - WIDTH_WEIGHT)·``box_utility`` + WIDTH_WEIGHT·
    ``width_utility`` (a convex mix of two utilities with the same sensitivity keeps it);
    ``feature_box`` (per-feature boxes): ``clipped_width_utility`` in place of
    ``width_utility``, and ``box_utility`` with ``inner_half``.
    """
    lower, upper, prior = box_candidates(magnitudes)
    u = box_utility(x, lower, upper, both_sides, inner_half=feature_box)
    if graded:
        w = (
            clipped_width_utility(x, lower, upper)
            if feature_box
            else width_utility(x, upper - lower)
        )
        u = (1.0 - WIDTH_WEIGHT) * u + WIDTH_WEIGHT * w
    p = em_probabilities(u, epsilon, sensitivity, prior)
    k = int(_draw(p, np.arange(p.size, dtype=np.float64), noise))
    return float(lower[k]), float(upper[k])


# The feature boxes' utility (per-feature boxes and the pooled box; not the pooled scale
# release, which measured worse with it, nor a target's box) mixes the box utility with the
# graded width utility: (1 - WIDTH_WEIGHT)·u_box + WIDTH_WEIGHT·u_width, both of
# sensitivity 1, so the mix has sensitivity 1 (d for a pooled box). Public constants, chosen
# on the raw benchmark sets (docs/dp.md, round 3): weights 0.2-0.3 with 2-4 octaves helped;
# 0.5 and more lost accuracy.
WIDTH_WEIGHT = 0.3
WIDTH_OCTAVES = 2.0
# log2 values in width_utility are rounded down to multiples of this, so its sums are exact
# integers (checked: n values times the span of the bands in quanta stay below 2^53).
WIDTH_QUANTUM = 2.0**-20


def width_utility(x: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """-Σᵢ min(1, max(0, log2(w / (2|xᵢ|)) / WIDTH_OCTAVES)) for each candidate width w.

    A graded "too wide" count: value xᵢ costs nothing while the box is at most twice as wide
    as |xᵢ| and a full 1 once it is WIDTH_OCTAVES octaves wider than that (a value 0 always
    costs 1). Each record's term lies in [0, 1]: replace-one sensitivity 1. Unlike the box
    utility's count, which saturates once a box is past the data, it keeps falling for
    WIDTH_OCTAVES octaves beyond.

    The sum is exact: log2 values are rounded down to multiples of WIDTH_QUANTUM, so every
    term is an integer number of quanta in [0, WIDTH_OCTAVES / WIDTH_QUANTUM], summed in
    integers. A floating-point running sum is not: rounding made two neighbouring data sets'
    utilities differ by more than 1 (tests/test_dp_review_boxes.py).
    """
    a = np.sort(np.abs(np.ravel(x)))
    n = a.size
    zeros = int(np.searchsorted(a, 0.0, side="right"))  # a value 0 always costs 1
    with np.errstate(divide="ignore"):  # a width 0 is -inf, handled below
        lw = np.log2(np.asarray(widths, dtype=np.float64)) - 1.0
    full = round(WIDTH_OCTAVES / WIDTH_QUANTUM)  # the quanta of a full cost 1
    total = np.empty(lw.shape, dtype=np.int64)
    total[np.isneginf(lw)] = zeros * full  # width 0: only the zeros cost
    total[np.isposinf(lw) | np.isnan(lw)] = n * full  # an unusable width: every value costs 1
    finite = np.isfinite(lw)
    if finite.any():
        # Values whose log lies below every band cost 1 for every width, above every band 0:
        # clipping them to just past the bands changes no term and keeps the integers small.
        base = float(np.min(lw[finite])) - WIDTH_OCTAVES - 1.0
        top = float(np.max(lw[finite])) + 1.0
        with np.errstate(divide="ignore"):
            la = np.clip(np.log2(a[zeros:]), base, top)  # ascending, since a is
        if n * (top - base + 1.0) / WIDTH_QUANTUM >= 2.0**53:
            raise ValueError("too many values for an exact width utility")  # n > ~10^9
        qa = np.floor((la - base) / WIDTH_QUANTUM).astype(np.int64)
        qw = np.floor((lw[finite] - base) / WIDTH_QUANTUM).astype(np.int64)
        # Σᵢ clip(qw - qaᵢ, 0, full) over the sorted values: qaᵢ ≤ qw - full costs full,
        # qaᵢ ≥ qw costs 0, those in between qw - qaᵢ
        lo = np.searchsorted(qa, qw - full, side="right")
        hi = np.searchsorted(qa, qw, side="left")
        csum = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(qa)])
        mid = (hi - lo) * qw - (csum[hi] - csum[lo])
        total[finite] = (zeros + lo) * full + mid
    return -(total.astype(np.float64) / full)


def clipped_width_utility(x: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """-max(#{x outside [a, b]}, -``width_utility``(x, b - a)): the graded width term, but never
    better than minus the number of values the box clips.

    ``width_utility`` alone scores a box far off the data (narrower than 2|x| for every value x
    it clips) as a perfect fit, so in the mixed feature utility a box that clips every value
    lost only (1 - WIDTH_WEIGHT)·n: at breast cancer, ε = 1 (n·ε_r ≈ 19) about one feature in
    ten got a box on the wrong side of 0 and was clipped to a constant (docs/dp.md, round 4).
    Per-feature boxes only: for the pooled box over all n·d values it measured worse (wine at
    ε = 1: -0.014 on 240 fits), since there any box clips some feature's values.
    Both counts have sensitivity 1 and so has their maximum; both are exact (an integer and a
    multiple of WIDTH_QUANTUM), and so is their maximum.
    """
    xs = np.sort(np.ravel(x))
    n = xs.size
    outside = np.searchsorted(xs, lower, side="left") + (n - np.searchsorted(xs, upper, "right"))
    return -np.maximum(outside.astype(np.float64), -width_utility(xs, upper - lower))


def _draw(p: np.ndarray, candidates: np.ndarray, noise: NoiseSource) -> float:
    cdf = np.cumsum(p)
    u = float(_uniform(noise))
    idx = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
    return float(candidates[min(idx, candidates.size - 1)])


def em_probabilities(
    utility: np.ndarray, epsilon: float, sensitivity: float = 1.0, prior: np.ndarray | None = None
) -> np.ndarray:
    """Exponential-mechanism probabilities ∝ prior·exp(ε·u / (2·sensitivity)), normalized.

    A public (data-independent) prior does not change the privacy analysis.
    """
    logits = epsilon * np.asarray(utility, dtype=np.float64) / (2.0 * sensitivity)
    if prior is not None:
        logits = logits + np.log(prior)
    logits -= logits.max()
    w = np.exp(logits)
    return w / w.sum()


def _uniform(noise: NoiseSource) -> float:
    if noise.secure:
        return float(_secure_uniform(1)[0])
    return float(noise._rng.random())


# ---------------------------------------------------------------------- accounting
def zcdp_delta(rho: float, epsilon: float) -> float:
    """δ of a ρ-zCDP mechanism at ε (Canonne, Kamath & Steinke 2020, Prop. 12; min over α)."""
    if rho <= 0:
        return 0.0

    def log_delta(alpha: float) -> float:
        return (
            (alpha - 1.0) * (alpha * rho - epsilon)
            - math.log(alpha - 1.0)
            + alpha * math.log1p(-1.0 / alpha)
        )

    hi = max(2.0, 4.0 * (epsilon / rho + 1.0))
    res = minimize_scalar(log_delta, bounds=(1.0 + 1e-9, hi), method="bounded")
    best = min(res.fun, log_delta(hi))
    # δ ≤ 1 always; exp of a large log δ overflowed at ε ≥ 1e12 (found by review)
    return 1.0 if best >= 0.0 else math.exp(best)


def per_release_epsilon(releases: int, epsilon: float, delta: float) -> tuple[float, float]:
    """(ε_r, δ used) so that ``releases`` ε_r-DP exponential mechanisms are (ε, δ)-DP.

    The larger ε_r of basic composition (δ used = 0) and zCDP composition (δ used = δ).
    """
    basic = epsilon / releases
    if delta <= 0:
        return basic, 0.0
    # largest ρ with zcdp_delta(ρ, ε) ≤ δ; ρ ≤ ε always suffices as an upper end
    f = lambda rho: math.log(max(zcdp_delta(rho, epsilon), 1e-320)) - math.log(delta)  # noqa: E731
    lo, hi = 1e-12, epsilon
    if f(hi) <= 0:
        rho = hi
    elif f(lo) > 0:
        return basic, 0.0
    else:
        # tolerances relative to the root: an absolute xtol was 2.5e-5 of a tiny rho (review)
        rho = brentq(f, lo, hi, xtol=1e-300, rtol=1e-12) * (1.0 - 1e-9)
    zcdp = math.sqrt(8.0 * rho / releases)
    if zcdp > basic:
        return zcdp, delta
    return basic, 0.0


def zcdp_rho(epsilon: float, delta: float) -> float:
    """The largest ρ whose zCDP guarantee converts (``zcdp_delta``) to (ε, δ), less 1e-9."""
    f = lambda rho: math.log(max(zcdp_delta(rho, epsilon), 1e-320)) - math.log(delta)  # noqa: E731
    if f(epsilon) <= 0:
        return epsilon
    # relative tolerance only: at rho ~ 4e-14 an absolute xtol of 1e-18 exceeded the 1e-9
    # margin and the fit was refused after the spend (found by review)
    return brentq(f, 1e-15, epsilon, xtol=1e-300, rtol=1e-12) * (1.0 - 1e-9)


def gaussian_rho(multiplier: float) -> float:
    """zCDP of a Gaussian release with noise multiplier σ/Δ: 1/(2m²) (Bun & Steinke 2016)."""
    return 0.5 / (multiplier * multiplier)


@dataclass(frozen=True)
class BoundsBudget:
    """How a fit's (ε, δ) splits between the bounds and the model.

    ``composition`` is "basic" (the parts' (ε, δ) add up; objective perturbation) or "zcdp"
    (Gaussian models: the bounds' releases and the model's Gaussian noise are all measured in
    zCDP, ρ_bounds + ρ_model = ρ, and ρ converts to (ε, δ); ``rho``/``rho_model`` are set and
    the model must add noise with multiplier at least ``model_multiplier``).
    """

    epsilon: float
    delta: float
    releases: int  # feature releases (the target's, if any, comes on top)
    epsilon_release: float  # ε of each feature release
    epsilon_target: float  # ε of the target's one release (0: none)
    epsilon_model: float
    delta_model: float
    composition: str = "basic"
    rho: float = 0.0  # zCDP of the bounds' releases (composition "zcdp")
    rho_model: float = 0.0
    model_multiplier: float = 0.0
    epsilon_scale: float = 0.0  # ε of the pooled scale release before per-feature boxes (0: none)
    rho_center: float = 0.0  # zCDP of the features' mean release (0: none)
    rho_spread: float = 0.0  # zCDP of the features' mean absolute deviation release (0: none)

    def describe(self) -> dict:
        out = {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "feature_releases": self.releases,
            "epsilon_per_feature_release": self.epsilon_release,
            "epsilon_target_release": self.epsilon_target,
            "mechanism": MECHANISM_ZCDP if self.composition == "zcdp" else MECHANISM,
        }
        if self.composition == "zcdp":
            total = self.rho + self.rho_center + self.rho_spread + self.rho_model
            out["share_of_rho"] = self.rho / total
            out["max_n_epsilon_per_feature_release"] = BOX_MAX_N_EPSILON
            out["min_share_of_rho_for_feature_releases"] = BOX_MIN_RHO_SHARE
            out["epsilon_scale_release"] = self.epsilon_scale
            out["rho_center_release"] = self.rho_center
            out["center_noise_multiplier"] = (
                1.0 / math.sqrt(2.0 * self.rho_center) if self.rho_center else None
            )
            out["rho_spread_release"] = self.rho_spread
            out["rho"] = self.rho
            out["composition"] = (
                "zCDP: each epsilon_r-DP exponential mechanism is epsilon_r^2/8-zCDP; with the "
                "model's Gaussian noise (1/(2 m^2)) the fit is rho-zCDP, converted to "
                "(epsilon, delta) by Canonne-Kamath-Steinke 2020 Prop. 12; epsilon and delta "
                "here are what these releases alone would be"
            )
        else:
            out["share_of_epsilon"] = EPSILON_SHARE
            out["composition"] = (
                "features: zCDP (Canonne-Kamath-Steinke 2020 conversion)"
                if self.delta > 0
                else "basic (pure epsilon)"
            )
        return out

    def describe_model(self) -> dict:
        out = {"epsilon": self.epsilon_model, "delta": self.delta_model}
        if self.composition == "zcdp":
            out["rho"] = self.rho_model
            out["noise_multiplier"] = self.model_multiplier
        return out


def split_budget(
    epsilon: float,
    delta: float,
    releases: int,
    target: bool = False,
    gaussian: bool = False,
    center: bool = True,
    spread: bool = False,
    n: int | None = None,
) -> BoundsBudget:
    """The public split of (ε, δ) between the bounds and the model.

    Basic composition (``gaussian`` False: objective perturbation): ε_b = EPSILON_SHARE·ε to the
    bounds, the rest to the model. With a target to bound, half of ε_b is its one release (the
    box that scales every residual, so worth the most), the other half the features';
    ``releases`` feature releases compose in zCDP (δ_b ≤ DELTA_SHARE·δ) or basically, whichever
    gives the larger ε_r.

    zCDP (``gaussian`` True: AdaSSP and DP gradient descent, whose noise is Gaussian): the
    whole fit is ρ-zCDP with ρ = ``zcdp_rho(ε, δ)``; the bounds take ρ_b = BOUNDS_RHO_SHARE·ρ
    (half to the target's release when there is one; ε_r = √(8ρ/releases) per release), the
    model's Gaussian noise the rest: multiplier m = 1/√(2(ρ - ρ_b)). With ``n`` (the public
    number of rows) the features' part is capped where each feature release would get
    n·ε_r > BOX_MAX_N_EPSILON: they get exactly that, but never less than BOX_MIN_RHO_SHARE of
    ρ, and the model the rest. The model is handed
    (ε_model, δ): the exact Gaussian's ε at δ for a multiplier just above m, so its own
    calibration adds at least that noise (``fit_with_estimated_bounds`` checks it).
    """
    if releases == 0 and not target:
        return BoundsBudget(0.0, 0.0, 0, 0.0, 0.0, epsilon, delta)
    if gaussian and delta > 0:
        import dp_accounting

        rho = zcdp_rho(epsilon, delta)
        rho_b = BOUNDS_RHO_SHARE * rho
        rho_y = (rho_b / 2.0 if releases else rho_b) if target else 0.0
        rho_x = rho_b - rho_y
        if n is not None and releases:
            # ε_r = BOX_MAX_N_EPSILON / n for each feature release once the scale release
            # (SCALE_SHARE of the features' ρ, when there is one) is taken off
            kept = 1.0 - SCALE_SHARE if releases > 1 else 1.0
            cap = releases * (BOX_MAX_N_EPSILON / n) ** 2 / 8.0 / kept
            rho_x = min(rho_x, max(cap, BOX_MIN_RHO_SHARE * rho))
            rho_b = rho_y + rho_x
        rho_s = SCALE_SHARE * rho_x if releases > 1 else 0.0
        eps_s = math.sqrt(8.0 * rho_s)
        eps_r = math.sqrt(8.0 * (rho_x - rho_s) / releases) if releases else 0.0
        eps_y = math.sqrt(8.0 * rho_y)
        center_share = CENTER_RHO_SHARE_WITH_SPREAD if spread else CENTER_RHO_SHARE
        rho_c = center_share * rho if releases and center else 0.0
        rho_sp = SPREAD_RHO_SHARE * rho if releases and spread else 0.0
        rho_m = rho - rho_b - rho_c - rho_sp
        m = 1.0 / math.sqrt(2.0 * rho_m)
        eps_m = dp_accounting.get_epsilon_gaussian(m * (1.0 + 1e-7), delta)
        # what the bounds' releases alone would be, for the record (not used to compose)
        eps_b = releases * eps_r + eps_y + eps_s
        delta_b = 0.0
        if rho_b > 0:
            alone = zcdp_epsilon(rho_b, delta)
            if alone < eps_b:
                eps_b, delta_b = alone, delta
        return BoundsBudget(
            eps_b,
            delta_b,
            releases,
            eps_r,
            eps_y,
            eps_m,
            delta,
            "zcdp",
            rho_b,
            rho_m,
            m,
            eps_s,
            rho_c,
            rho_sp,
        )
    eps_b = EPSILON_SHARE * epsilon
    eps_y = (eps_b / 2.0 if releases else eps_b) if target else 0.0
    eps_r, delta_b = 0.0, 0.0
    if releases:
        eps_r, delta_b = per_release_epsilon(releases, eps_b - eps_y, DELTA_SHARE * delta)
    return BoundsBudget(eps_b, delta_b, releases, eps_r, eps_y, epsilon - eps_b, delta - delta_b)


def zcdp_epsilon(rho: float, delta: float) -> float:
    """ε at δ of a ρ-zCDP mechanism (inverse of ``zcdp_delta``)."""
    f = lambda eps: math.log(max(zcdp_delta(rho, eps), 1e-320)) - math.log(delta)  # noqa: E731
    hi = rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta)) + 1.0
    if f(0.0) <= 0:
        return 0.0
    return brentq(f, 0.0, hi, xtol=1e-300, rtol=1e-12) * (1.0 + 1e-9)


def model_multiplier(model) -> float | None:
    """The single-Gaussian noise multiplier equivalent to a fitted Gaussian model's releases:
    AdaSSP's three (σ_i/Δ_i) or DP-GD's T steps (m/√T); None for other mechanisms."""
    details = getattr(model, "noise_", None) or {}
    if "sigmas" in details and details.get("sensitivities"):
        ms = [s / d for s, d in zip(details["sigmas"], details["sensitivities"], strict=True)]
        return sum(m**-2 for m in ms) ** -0.5
    if "noise_multiplier" in details and "steps" in details:
        return details["noise_multiplier"] / math.sqrt(details["steps"])
    return None


# ---------------------------------------------------------------------- bounds
def per_feature(
    n: int,
    d: int,
    epsilon: float,
    delta: float,
    target: bool,
    gaussian: bool = False,
    center: bool = True,
) -> bool:
    """The public rule: per-feature boxes when they are precise enough, else one pooled box."""
    if d == 1:
        return True
    eps_r = split_budget(epsilon, delta, d, target, gaussian, center).epsilon_release
    return n * eps_r >= PER_FEATURE_MIN_N_EPSILON


def private_bounds(
    values: np.ndarray,
    epsilon_release: float,
    search_range: float,
    noise: NoiseSource,
    pooled: bool = False,
    both_sides: bool = False,
    epsilon_scale: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-column (lower, upper) of a 2-D array: one box per column (``private_box``), or
    with ``pooled`` one box for all columns from all n·d values (sensitivity d). One release
    either way; ``both_sides``: see ``box_utility``.
    """
    mags = grid(search_range)
    mags = mags[mags > 0]
    d = values.shape[1]
    if pooled:
        a, b = private_box(
            values, epsilon_release, mags, noise, both_sides, sensitivity=d, graded=True
        )
        return np.full(d, a), np.full(d, b)
    if epsilon_scale > 0 and d > 1:
        # adaptive: one pooled release fixes the scale, the per-feature candidates then lie
        # within SCALE_HEADROOM times it, over SCALE_OCTAVES octaves (a public rule)
        a, b = private_box(values, epsilon_scale, mags, noise, both_sides, sensitivity=d)
        top = SCALE_HEADROOM * max(abs(a), abs(b))
        mags = top * np.exp2(-np.arange(SCALE_OCTAVES * POINTS_PER_OCTAVE + 1) / POINTS_PER_OCTAVE)
    lo, hi = np.empty(d), np.empty(d)
    for j in range(d):
        lo[j], hi[j] = private_box(
            values[:, j],
            epsilon_release,
            mags,
            noise,
            both_sides,
            graded=not both_sides,
            feature_box=not both_sides,
        )
    return lo, hi


QUANTILE_POINTS_PER_OCTAVE = 4


def private_quantile(
    x: np.ndarray, q: float, epsilon: float, candidates: np.ndarray, noise: NoiseSource
) -> float:
    """ε-DP q-quantile of x among public ``candidates`` (ascending): the exponential mechanism
    with utility -|#{x < t} - q·n| (sensitivity 1 under replace-one)."""
    x = np.sort(np.ravel(x))
    below = np.searchsorted(x, candidates, side="left")
    u = -np.abs(below - q * x.size)
    p = em_probabilities(u, epsilon)
    return float(_draw(p, candidates, noise))


def private_center(Z: np.ndarray, rho: float, noise: NoiseSource) -> np.ndarray:
    """ρ-zCDP mean of each column of Z clipped to [-1, 1], itself clipped to [-1, 1].

    Replacing one row moves each column sum by at most 2: L2 sensitivity 2√d (plus the
    lattice rounding, ``rounding_slack``); Gaussian noise with multiplier 1/√(2ρ) makes the
    release ρ-zCDP (Bun & Steinke 2016). n is public.
    """
    n, d = Z.shape
    Zc = np.clip(Z, -1.0, 1.0)
    sensitivity = 2.0 * math.sqrt(d) + rounding_slack(float(n), d)
    sigma = sensitivity / math.sqrt(2.0 * rho)
    total = noise.release(Zc.sum(axis=0), sigma, float(n))
    return np.clip(np.asarray(total, dtype=np.float64) / n, -1.0, 1.0)


TARGET_MADS = 3.0
TARGET_OCTAVES = 40  # candidates: search_range·2^(-j/4), j = 0 … 160, their negatives and 0
TARGET_MEDIAN_SHARE = 0.6  # of the target's ρ: the median (a wrong median moves the box)


def private_median_box(
    y: np.ndarray, epsilon: float, search_range: float, noise: NoiseSource
) -> tuple[np.ndarray, np.ndarray]:
    """A box for the target from two releases, ε·√0.6 and ε·√0.4 (ε in zCDP terms: the two
    ρ's, ε²·0.6/8 + ε²·0.4/8, add up to ε²/8): the median m among public candidates (utility
    -|#{y < t} - n/2|), then the median absolute deviation r around m (utility
    -|#{|y - m| < r} - n/2|); the box is m ± TARGET_MADS·r. Both utilities have sensitivity
    1 and penalize a candidate on either side of the data by n/2 (the box utility's "too wide"
    count saturates at n/6, so at small n·ε its many too-wide candidates won: a target box of
    ±11 000 for values 25…346).
    Candidates: 0 and ±search_range·2^(-j/4), j = 0 … 160; r among the positive ones.
    """
    y = np.sort(np.ravel(y))
    n = y.size
    j = np.arange(TARGET_OCTAVES * QUANTILE_POINTS_PER_OCTAVE + 1)
    mags = float(search_range) * np.exp2(-j / QUANTILE_POINTS_PER_OCTAVE)
    cand = np.concatenate([-mags, [0.0], mags[::-1]])
    m = private_quantile(y, 0.5, epsilon * math.sqrt(TARGET_MEDIAN_SHARE), cand, noise)
    dev = np.sort(np.abs(y - m))
    r_cand = mags[::-1]
    u = -np.abs(np.searchsorted(dev, r_cand, side="left") - n / 2.0)
    eps_r = epsilon * math.sqrt(1.0 - TARGET_MEDIAN_SHARE)
    r = float(_draw(em_probabilities(u, eps_r), r_cand, noise))
    return np.array([m - TARGET_MADS * r]), np.array([m + TARGET_MADS * r])


def data_bounds(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column min and max (NOT private: only behind an explicit ``"data"`` opt-in), kept
    within ±MAX_BOUND and at least MIN_SCALE wide on each side of their middle: one record at
    1e200 or a column spanning 1e-150 made the model fitted inside refuse these bounds after
    the spend, quoting the data's min and max (found by review)."""
    lo = np.clip(values.min(axis=0), -MAX_BOUND, MAX_BOUND)
    hi = np.clip(values.max(axis=0), -MAX_BOUND, MAX_BOUND)
    same = lo == hi
    lo, hi = np.where(same, lo - 1.0, lo), np.where(same, hi + 1.0, hi)
    middle = lo / 2.0 + hi / 2.0
    narrow = (hi - lo) / 2.0 < MIN_SCALE
    return np.where(narrow, middle - MIN_SCALE, lo), np.where(narrow, middle + MIN_SCALE, hi)


# ---------------------------------------------------------------------- estimators
def estimated_row_norm(d: int) -> float:
    """The row clip (L2, in the released map's units) of a fit with estimated bounds: public."""
    return ROW_NORM_FACTOR * math.sqrt(d)


def spread_noise(n: int, d: int, epsilon: float, delta: float) -> float:
    """Noise sd of each released mean absolute deviation, in the box's [-1, 1] units: √d·m/n,
    m the noise multiplier of the spread's ρ share (public)."""
    m = 1.0 / math.sqrt(2.0 * SPREAD_RHO_SHARE * zcdp_rho(epsilon, delta))
    return math.sqrt(d) * m / n


def spread_rule(n: int, d: int, epsilon: float, delta: float) -> bool:
    """Public rule: release the features' spread when its noise sd is at most SPREAD_MAX_NOISE."""
    return spread_noise(n, d, epsilon, delta) <= SPREAD_MAX_NOISE


def estimates_bounds(est, epsilon: float) -> bool:
    """Whether ``fit`` estimates some bound with DP (public: from the bounds parameters)."""
    x_kind, y_kind = _kinds(est)
    return math.isfinite(epsilon) and "dp" in (x_kind, y_kind)


def gaussian_model(est) -> bool:
    """Whether the estimator's mechanism with estimated bounds adds only Gaussian noise
    (AdaSSP; DP-GD, which ``method="auto"`` picks when bounds are estimated): decided by its
    public parameters, never by the data."""
    if hasattr(est, "bounds_y"):
        return True  # DPLinearRegression: DP-GD or AdaSSP, both Gaussian
    return getattr(est, "method", "auto") in ("auto", "dpgd")


def check_zcdp_total(budget: BoundsBudget, multiplier: float | None, epsilon, delta) -> None:
    """Refuse to release a model whose actual Gaussian noise does not fit the zCDP split.

    The model was handed (ε_model, δ) so that its own calibration gives a multiplier of at
    least ``budget.model_multiplier``; this re-derives ρ of the whole fit from the released
    bounds' ε's and the model's actual noise and checks that it converts to (ε, δ).
    """
    rho_b = (
        (budget.releases * budget.epsilon_release**2 + budget.epsilon_target**2) / 8.0
        + budget.epsilon_scale**2 / 8.0
        + budget.rho_center
        + budget.rho_spread
    )
    if multiplier is None or not multiplier > 0:
        raise RuntimeError("internal error: the model's Gaussian noise multiplier is unknown")
    if zcdp_delta(rho_b + gaussian_rho(multiplier), epsilon) > delta * (1.0 + 1e-9):
        raise RuntimeError(
            "internal error: the model's noise is below what the zCDP budget split requires"
        )


def _kind(bounds) -> str:
    if bounds is None or isinstance(bounds, PrivateBounds):
        return "dp"
    if isinstance(bounds, str):
        if bounds == "data":
            return "data"
        raise ValueError(
            f"bounds must be (lower, upper), None (estimated with DP), a PrivateBounds or "
            f"'data' (min and max of the training data, not private); got {bounds!r}"
        )
    return "declared"


def _search_range(bounds) -> float:
    return bounds.search_range if isinstance(bounds, PrivateBounds) else DEFAULT_SEARCH_RANGE


def _shared_scale(bounds) -> bool:
    """Whether the user declared that all features share one unit (public; see PrivateBounds)."""
    return isinstance(bounds, PrivateBounds) and bounds.shared_scale


def _kinds(est) -> tuple[str, str | None]:
    """What to do for X and (regressors) y: "dp", "data" or "declared"."""
    x_kind = _kind(est.bounds_X)
    if implied_box(est.bounds_X, est.data_norm):
        x_kind = "declared"  # the row clip implies a box: nothing is read from the data
    y_kind = _kind(est.bounds_y) if hasattr(est, "bounds_y") else None
    return x_kind, y_kind


@dataclass(frozen=True)
class EstimatedBoundsPlan:
    """The public part of a fit with estimated bounds: what is released, and the split."""

    x_kind: str  # "dp", "data" or "declared"
    y_kind: str | None  # the same for a regressor's target; None for a classifier
    shared: bool  # the user declared one unit for all features (PrivateBounds(shared_scale))
    pooled: bool  # one box for all features
    budget: BoundsBudget


def plan_estimated_bounds(est, n: int, d: int, epsilon: float, delta: float):
    """Which releases a fit with estimated bounds makes and how (ε, δ) splits between them
    and the model, from the estimator's parameters and the public n, d, ε, δ only.

    Returns None when every bound is declared (or ε = ∞). Raises ``ValueError`` for
    parameters that cannot fit: the estimators call it before they reserve the budget, so
    such a fit is refused with nothing spent (``fit_with_estimated_bounds`` calls it again
    and gets the same plan)."""
    x_kind, y_kind = _kinds(est)
    if not math.isfinite(epsilon) or {x_kind, y_kind}.isdisjoint({"dp", "data"}):
        return None
    if n < 1:
        raise ValueError(f"n={n}: a fit needs at least one row")
    if x_kind != "declared" and est.data_norm is not None and math.isfinite(est.data_norm):
        raise ValueError(
            "data_norm is a bound in the units of declared bounds_X; with estimated bounds rows "
            "are clipped after the map to L2 norm sqrt(d)/4 whatever data_norm says "
            "(use data_norm=None)"
        )
    target = y_kind == "dp"
    gaussian = gaussian_model(est)
    spread = x_kind == "dp" and gaussian and spread_rule(n, d, epsilon, delta)
    # the features' DP centre for every Gaussian model, regression included: without it the
    # rows sit off the box's middle and AdaSSP's row clip shrinks every one of them (diabetes
    # at eps = 1: all 309 rows on the clip; R2 0.066 -> 0.112 on 80 fits, docs/dp.md)
    center = True
    # one pooled box when the user declared one scale for all features (public), else when the
    # public rule says per-feature boxes would be too imprecise
    shared = x_kind == "dp" and _shared_scale(est.bounds_X)
    pooled = x_kind == "dp" and (
        shared or not per_feature(n, d, epsilon, delta, target, gaussian, center)
    )
    releases = (1 if pooled else d) if x_kind == "dp" else 0
    budget = split_budget(epsilon, delta, releases, target, gaussian, center, spread, n)
    if not budget.epsilon_model > 0:
        # the releases' share leaves the model a Gaussian that is already (0, delta)-DP: tiny
        # n with delta near 1/n (found by review, tests/test_dp_review4.py)
        raise ValueError(
            f"epsilon={epsilon:g}, delta={delta:g}: with bounds estimated with DP the model "
            "would get no epsilon once the bounds' releases are paid; raise epsilon, lower "
            "delta, or declare bounds_X (and bounds_y)"
        )
    if budget.epsilon_model < MIN_EPSILON:
        # the model fitted inside would refuse its share after the spend (round 5 review)
        raise ValueError(
            f"epsilon={epsilon:g}, delta={delta:g}: with bounds estimated with DP the model "
            f"would get epsilon {budget.epsilon_model:.3g}, below the {MIN_EPSILON:g} a fit "
            "accepts; raise epsilon or declare bounds_X (and bounds_y)"
        )
    return EstimatedBoundsPlan(x_kind, y_kind, shared, pooled, budget)


def check_fit_plan(est, n: int, d: int, epsilon: float, delta: float) -> None:
    """Refuse, from public parameters alone, a fit that could not run: declared bounds or
    ``data_norm`` that cannot be used, or an estimated-bounds plan that leaves the model no ε.

    The estimators call it before they reserve (ε, δ), and ``heml train`` before its ledger
    does, so such a fit costs nothing (bad input costs nothing, docs/dp.md)."""
    check_data_norm(est.data_norm)
    plan_estimated_bounds(est, n, d, epsilon, delta)  # refuses unknown kinds of bounds too
    check_declared_bounds(est, d)


def fit_with_estimated_bounds(est, X, y, epsilon, delta, noise: NoiseSource):
    """Fit ``est`` with bounds estimated with DP (or read from the data on the "data" opt-in).

    Returns the fitted estimator, or None when every bound is declared (or ε = ∞): the caller
    then fits as before. Called by the estimators' ``fit`` after validation and after the
    whole (ε, δ) of the fit (bounds and model) was reserved from its accountant, so nothing
    here spends: the bounds and the inner model split that reservation (``budget_split``).
    """
    import warnings

    from sklearn.base import clone

    from ._accountant import BudgetAccountant, PrivacyLeakWarning
    from ._public_scaling import bounds_map, normalize
    from ._warnings import BoundsWarning

    if "feature_map_" in vars(est):  # from an earlier fit; set again only on success
        del est.feature_map_
    plan = plan_estimated_bounds(est, *X.shape, epsilon, delta)
    if plan is None:
        return None
    n, d = X.shape
    x_kind, y_kind, shared, pooled = plan.x_kind, plan.y_kind, plan.shared, plan.pooled
    budget = plan.budget
    private = "data" not in (x_kind, y_kind)
    if not private:
        which = " and ".join(
            f"{name}='data'"
            for name, k in (("bounds_X", x_kind), ("bounds_y", y_kind))
            if k == "data"
        )
        warnings.warn(
            f"{which}: bounds are the training data's min and max, released without DP; the "
            "model's guarantee says private: false",
            PrivacyLeakWarning,
            stacklevel=3,
        )

    params = {
        **({"method": "dpgd"} if gaussian_model(est) and not hasattr(est, "bounds_y") else {}),
        "epsilon": budget.epsilon_model,
        "delta": budget.delta_model,
        "accountant": BudgetAccountant(),  # the caller reserved the whole fit already
        "random_state": None if noise.secure else int(noise._rng.integers(2**31)),
    }
    bounds = {}
    center = half = None
    Z = X
    if x_kind == "declared":
        pass
    else:
        if x_kind == "dp":
            lo, hi = private_bounds(
                X,
                budget.epsilon_release,
                _search_range(est.bounds_X),
                noise,
                pooled,
                epsilon_scale=budget.epsilon_scale,
            )
            source = "estimated with DP (exponential mechanism, see budget_split)"
        else:
            lo, hi = data_bounds(X)
            source = "read from the training data (NOT private: bounds_X='data')"
        # every value inside the released box before any arithmetic: a huge finite value
        # would otherwise overflow in the maps below, and whether the fit raises or warns
        # would depend on that one record (found by review; tests/test_dp_extreme_records.py)
        X = np.clip(X, lo, hi)
        center, half = bounds_map(lo, hi)
        params["bounds_X"] = (-1.0, 1.0)
        if budget.rho_center > 0:
            # rows are centred on the features' DP mean (in the box's [-1, 1] units): the
            # model then clips rows around where the data are, not around the box's middle
            mu = private_center(normalize(X, center, half), budget.rho_center, noise)
            center = center + half * mu
            params["bounds_X"] = (-1.0 - mu, 1.0 - mu)
            if budget.rho_spread > 0:
                # and scaled by their DP spread (mean absolute deviation around the released
                # centre, x 1.25 ~ a standard deviation): a DP standardization, clipped at
                # SPREAD_CLIP spreads inside the released box
                # |z - mu| clipped to [0, 1], mapped to [-1, 1] for the release (whose
                # sensitivity, 2 per coordinate there, is 1 per coordinate in these units)
                dev = np.minimum(
                    np.abs(np.clip(normalize(X, center, half), -1.0 - mu, 1.0 - mu)), 1.0
                )
                mad = (1.0 + private_center(2.0 * dev - 1.0, budget.rho_spread, noise)) / 2.0
                # floored at SPREAD_FLOOR_NOISES noise sd's: a spread the noise could have
                # made up does not magnify its feature (public: n, d and the share's noise)
                floor = SPREAD_FLOOR_NOISES * spread_noise(n, d, epsilon, delta)
                sd = 1.25 * np.maximum(mad, max(SPREAD_FLOOR, floor))
                lo = np.maximum(lo, center - SPREAD_CLIP * sd * half)
                hi = np.minimum(hi, center + SPREAD_CLIP * sd * half)
                half = SPREAD_CLIP * sd * half
                params["bounds_X"] = ((lo - center) / half, (hi - center) / half)
        params["data_norm"] = estimated_row_norm(d)  # public: d only
        Z = normalize(X, center, half)
        bounds["X"] = {
            "lower": lo,
            "upper": hi,
            "source": source,
            "pooled": pooled,
            "shared_scale": shared,
            "search_range": _search_range(est.bounds_X) if x_kind == "dp" else None,
        }
    if y_kind in ("dp", "data"):
        yv = np.asarray(y, dtype=np.float64)[:, None]
        if y_kind == "dp" and budget.composition == "zcdp":
            ylo, yhi = private_median_box(
                yv[:, 0], budget.epsilon_target, _search_range(est.bounds_y), noise
            )
            ysource = "estimated with DP (exponential-mechanism median and MAD, see budget_split)"
        elif y_kind == "dp":
            ylo, yhi = private_bounds(
                yv, budget.epsilon_target, _search_range(est.bounds_y), noise, both_sides=True
            )
            ysource = "estimated with DP (exponential mechanism, see budget_split)"
        else:
            ylo, yhi = data_bounds(yv)
            ysource = "read from the training data (NOT private: bounds_y='data')"
        params["bounds_y"] = (float(ylo[0]), float(yhi[0]))
        bounds["y"] = {
            "lower": float(ylo[0]),
            "upper": float(yhi[0]),
            "source": ysource,
            "search_range": _search_range(est.bounds_y) if y_kind == "dp" else None,
        }

    inner = clone(est).set_params(**params)
    with warnings.catch_warnings():
        # the inner fit's bounds are the released ones, not the user's: no BoundsWarning
        warnings.simplefilter("ignore", BoundsWarning)
        inner.fit(Z, y)  # a failure here stays charged: the caller reserved before

    # everything the fit sets, assigned only once the whole fit's budget is spent
    fitted = {
        name: value
        for name, value in vars(inner).items()
        if name.endswith("_")
        and not name.startswith("_")
        and name not in ("n_features_in_", "feature_names_in_")
    }
    fitted["feature_map_"] = None
    if budget.composition == "zcdp":
        check_zcdp_total(budget, model_multiplier(inner), epsilon, delta)
    g = inner.dp_guarantee_
    inner_bounds = dict(g["bounds"])
    if center is not None:
        coef = np.asarray(inner.coef_) / half
        fitted["coef_"] = coef
        fitted["intercept_"] = inner.intercept_ - coef @ center
        fitted["bounds_X_"] = (np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64))
        fitted["feature_map_"] = (center, half)
        inner_bounds["X"] = bounds["X"]
        inner_bounds["feature_map"] = (
            "features are clipped to X's bounds, mapped by x -> (x - center) / half_width to "
            "[-1, 1], and rows are then clipped to L2 norm data_norm"
        )
        inner_bounds["center"], inner_bounds["half_width"] = center, half
    if "y" in bounds:
        inner_bounds["y"] = bounds["y"]
    guarantee = est._guarantee(
        epsilon=epsilon,
        delta=delta,
        mechanism=g["mechanism"],
        accountant=g["accountant"],
        hyperparameters=g["hyperparameters"],
        bounds=inner_bounds,
        n_samples=n,
    )
    guarantee["budget_split"] = {
        "bounds": budget.describe() if budget.releases or budget.epsilon_target else None,
        "model": budget.describe_model(),
        "composition": "basic: the bounds' and the model's (epsilon, delta) add up"
        if budget.composition == "basic"
        else "zCDP: rho(bounds) + rho_center_release + rho_spread_release + rho(model) = rho "
        "(bounds.rho covers the boxes, the scale and the target), and the fit is "
        "(epsilon, delta)-DP by the Canonne-Kamath-Steinke 2020 (Prop. 12) conversion of rho",
    }
    if not private:
        guarantee.update(private=False, epsilon=None, delta=None)
        guarantee["not_private_because"] = (
            "bounds read from the training data ('data' opt-in) are released without DP"
        )
    fitted["dp_guarantee_"] = guarantee
    for name, value in fitted.items():
        setattr(est, name, value)
    return est
