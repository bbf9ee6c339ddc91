"""make_private_plan's promises (heml.he.private, docs/model-privacy.md), checked directly.

* **Capacity**: a model is refused exactly when its largest in-bounds row value
  (sx·‖Wq_row‖₁ + |b|·sw·sx), plus six flooding σ, plus twice the weights' noise bound, reaches
  0.45·Q; one float below the edge it is planned. The edge is found by bisection on the real
  planner and compared with that sum.
* **Published plan**: everything the client sees is a function of N, d, the tolerance and
  ⌈log2 ‖Wq‖₂⌉ only (not of k, the intercept or the weights beyond that bucket).
* **Error budget**: flooding costs at most half the tolerance, the best reply width's switching
  noise at most a quarter, x is scaled no finer than these need; the published error bound is
  the sum of the documented terms (quantization tol/8, rounding of x, the client's encryption
  noise, flooding, re-randomization, switching to the reply width) and the reply width is the
  narrowest whose bound meets the tolerance.

Fast: only the planner runs (no keys, no ciphertexts), so each mutant costs about a second.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from heml.errors import ModelError
from heml.he.params import ERROR_STDDEV
from heml.he.plan import NOISE_SIGMAS, REPLY_BITS, quantize
from heml.he.private import (
    CAPACITY_FRACTION,
    HIDING_BITS,
    TAIL_SIGMAS,
    default_privacy_params,
    make_private_plan,
)

HEADROOM = (
    "model privacy needs more headroom than 128-bit parameters give for this model; "
    "narrow the declared bounds or raise the tolerance"
)


def _norm_bound(Wq: np.ndarray) -> float:
    l2 = math.sqrt(float((Wq.astype(np.float64) ** 2).sum()))
    p = 1.0
    while p < l2:
        p *= 2.0
    return p


def _plan(W, b, tol=1e-4):
    d = W.shape[1]
    return make_private_plan(
        W, np.asarray(b, dtype=np.float64), np.zeros(d), np.ones(d), tolerance=tol
    )


def _refused_for_headroom(W, b, tol=1e-4) -> bool:
    try:
        _plan(W, b, tol)
    except ModelError as exc:
        assert str(exc) == HEADROOM
        return True
    return False


def _lhs(W, b, plan) -> float:
    """The documented headroom sum for a planned model (zero centre, unit half-widths)."""
    Wq = quantize(W, plan.log2_scale_w).astype(np.float64)
    sw, sx = 2.0**plan.log2_scale_w, 2.0**plan.log2_scale_x
    rows = sx * np.abs(Wq).sum(axis=1) + np.abs(np.asarray(b, dtype=np.float64)) * sw * sx
    weight_noise = TAIL_SIGMAS * ERROR_STDDEV * _norm_bound(Wq)
    return float(rows.max()) + NOISE_SIGMAS * 2.0**plan.log2_flood + 2 * weight_noise


# ---------------------------------------------------------------------- capacity
@pytest.mark.parametrize("row", [0, 1])
@pytest.mark.parametrize("tol", [1e-4, 3e-2])
def test_the_headroom_edge_is_the_documented_sum_at_0_45_q(row, tol):
    """Two classes of different L1 norm; the intercept of one grows until the model is refused.
    The refusal starts where the documented sum (largest row, bias added, six flooding σ, twice
    the weights' noise bound) reaches 0.45·Q, within 1e-12 relative."""
    Q = default_privacy_params().Q
    W = np.array([[0.9, -0.7, 0.5, 0.3], [0.05, 0.02, -0.01, 0.04]])
    b = np.array([0.0, 0.0])
    base = _plan(W, b, tol)
    # the row value grows linearly in |b_row|: b_edge solves lhs = 0.45·Q for that row
    sw, sx = 2.0**base.log2_scale_w, 2.0**base.log2_scale_x
    Wq = quantize(W, base.log2_scale_w).astype(np.float64)
    noise = NOISE_SIGMAS * 2.0**base.log2_flood + 2 * TAIL_SIGMAS * ERROR_STDDEV * _norm_bound(Wq)
    want = (CAPACITY_FRACTION * Q - noise - sx * np.abs(Wq[row]).sum()) / (sw * sx)
    assert want > 1.0  # a real edge (the other row does not decide it)

    lo, hi = 0.0, 4 * want
    sign = -1.0 if row else 1.0  # the bias counts by its absolute value
    assert not _refused_for_headroom(W, b, tol)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        bb = b.copy()
        bb[row] = sign * mid
        if _refused_for_headroom(W, bb, tol):
            hi = mid
        else:
            lo = mid
    assert abs(hi - want) <= 1e-12 * want, (hi, want)
    # the scales do not move with the intercept (the edge is a refusal, not a rescale)
    bb = b.copy()
    bb[row] = sign * lo
    planned = _plan(W, bb, tol)
    assert planned.to_dict() == base.to_dict()


def test_the_headroom_check_refuses_at_equality():
    """Exactly at 0.45·Q (the sum compared in float64 as documented) the model is refused; the
    float below that is planned."""
    Q = default_privacy_params().Q
    limit = CAPACITY_FRACTION * Q
    W = np.array([[0.0, 0.0, 0.0, 0.0]])
    plan = _plan(W, [0.0])
    sw, sx = 2.0**plan.log2_scale_w, 2.0**plan.log2_scale_x
    b = limit / (sw * sx)  # powers of two: the bias term is exactly the limit
    # walk down to the smallest intercept whose sum is still >= the limit, then find equality
    found = None
    x = b
    for _ in range(200):
        if _lhs(W, [x], plan) == limit:
            found = x
            break
        x = np.nextafter(x, 0.0)
    assert found is not None
    below = found
    while _lhs(W, [below], plan) >= limit:
        below = np.nextafter(below, 0.0)
    assert _refused_for_headroom(W, [found])
    assert not _refused_for_headroom(W, [below])


# ---------------------------------------------------------------------- published plan
def test_the_published_plan_depends_only_on_d_the_tolerance_and_the_norm_bucket():
    """Models with the same d, tolerance and ⌈log2 ‖Wq‖₂⌉ get the same published plan, whatever
    their class count, intercepts and weights within the bucket; the next bucket doubles the
    flooding σ."""
    d, tol = 6, 1e-4
    rng = np.random.default_rng(11)
    W1 = rng.normal(size=(1, d))
    ref = _plan(W1, [0.2], tol)
    ew = ref.log2_scale_w
    nb = _norm_bound(quantize(W1, ref.log2_scale_w))
    for k, scale_in_bucket, bias in ((2, 0.55, -1.5), (3, 0.8, 0.0), (5, 0.98, 3.0)):
        W = rng.normal(size=(k, d))
        l2 = math.sqrt(float((quantize(W, ew).astype(np.float64) ** 2).sum()))
        W = W * (scale_in_bucket * nb / l2)
        Wq = quantize(W, ew)
        assert nb / 2 < math.sqrt(float((Wq.astype(np.float64) ** 2).sum())) <= nb
        p = _plan(W, np.full(k, bias), tol)
        assert p.to_dict() == ref.to_dict()
    W = rng.normal(size=(1, d))
    l2 = math.sqrt(float((quantize(W, ew).astype(np.float64) ** 2).sum()))
    W = W * (1.5 * nb / l2)  # next bucket
    nxt = _plan(W, [0.2], tol)
    assert nxt.log2_flood == ref.log2_flood + 1
    assert nxt.log2_scale_w == ref.log2_scale_w


# ---------------------------------------------------------------------- error budget
def _documented_plan(W, tol):
    """The published fields recomputed from the documented budget."""
    params = default_privacy_params()
    n, Q = params.n, params.Q
    d = W.shape[1]
    ew = max(0, math.ceil(math.log2(4 * d / tol)))
    sw = 2.0**ew
    nb = _norm_bound(quantize(W, ew))
    weight_noise = TAIL_SIGMAS * ERROR_STDDEV * nb
    log2_flood = HIDING_BITS + math.ceil(math.log2(weight_noise))
    flood = 2.0**log2_flood

    def switch(bits, sx):
        per_word = 0.5 + 2.0 ** (bits - 52)
        return NOISE_SIGMAS * per_word * math.sqrt((n + 1) / 3.0) * Q / 2.0**bits / (sx * sw)

    # the smallest ex with flooding ≤ tol/2 and the best width's switching ≤ tol/4
    ex = 0
    while (
        NOISE_SIGMAS * flood / (2.0**ex * sw) > tol / 2
        or min(switch(b, 2.0**ex) for b in REPLY_BITS) > tol / 4
    ):
        ex += 1
    sx = 2.0**ex
    fixed = (
        tol / 8
        + 0.5 * math.sqrt(d) * nb / (2.0 ** min(ex, 52) * sw)
        + NOISE_SIGMAS * ERROR_STDDEV * nb / (sx * sw)
        + NOISE_SIGMAS * flood / (sx * sw)
        + NOISE_SIGMAS * ERROR_STDDEV * 3 * math.sqrt(n) / (sx * sw)
    )
    for bits in REPLY_BITS:
        if fixed + switch(bits, sx) <= tol:
            return ex, ew, bits, log2_flood, fixed + switch(bits, sx), fixed
    return ex, ew, None, log2_flood, None, fixed


@pytest.mark.parametrize(
    "d, tol, scale",
    [(4, 1e-4, 1.0), (30, 1e-4, 0.2), (12, 1e-3, 3.0), (3, 5e-2, 0.01), (9, 1e-5, 1.0)],
)
def test_the_published_error_bound_is_the_documented_budget(d, tol, scale):
    rng = np.random.default_rng(d)
    W = rng.normal(size=(2, d)) * scale
    plan = _plan(W, [0.1, -0.1], tol)
    ex, ew, bits, log2_flood, bound, fixed = _documented_plan(W, tol)
    assert (plan.log2_scale_x, plan.log2_scale_w, plan.reply_bits) == (ex, ew, bits)
    assert plan.log2_flood == log2_flood and plan.hiding_bits == HIDING_BITS
    # exactly the documented sum (the small terms are ~1e-13 of it: float64 still sees them)
    assert plan.error_bound == bound
    assert plan.error_bound <= tol
    # the narrowest width: one bit fewer would not meet the tolerance
    assert (
        bits == REPLY_BITS[0]
        or fixed
        + (plan.error_bound - fixed) * 2 * ((0.5 + 2.0 ** (bits - 53)) / (0.5 + 2.0 ** (bits - 52)))
        > tol
    )


@pytest.mark.parametrize("log2_w, log2_tol", [(52, 48), (50, 46)])
def test_every_headroom_term_counts_where_float64_can_see_it(log2_w, log2_tol):
    """A huge weight at a huge tolerance (one feature, no weight grid: ew = 0) makes σ_flood
    2^95–2^97, so six σ and twice the weights' noise bound are several float64 steps of
    0.45·Q: around the edge, intercept by intercept (one step of the sum each), the planner
    refuses exactly where the documented sum reaches 0.45·Q, and both outcomes occur."""
    limit = CAPACITY_FRACTION * default_privacy_params().Q
    W, tol = np.array([[2.0**log2_w]]), 2.0**log2_tol
    plan = _plan(W, [0.0], tol)
    assert plan.log2_scale_w == 0 and plan.log2_flood >= 95
    sw, sx = 2.0**plan.log2_scale_w, 2.0**plan.log2_scale_x
    edge = (limit - _lhs(W, [0.0], plan)) / (sw * sx)
    step = float(np.spacing(edge))
    assert step * sw * sx == np.spacing(limit)  # one intercept step is one step of the sum
    outcomes = set()
    for i in range(-40, 41):
        b = edge + i * step
        refused = _refused_for_headroom(W, [b], tol)
        assert refused == (_lhs(W, [b], plan) >= limit), i
        outcomes.add(refused)
    assert outcomes == {True, False}


def _tolerance_at_switch_floor(d: int, above: bool) -> float:
    """A tolerance (weight grid 2^8 at d = 3) at which 4·(best width's switching noise) /
    (tolerance·sw) is a power of two times (1 ± 1e-6): the ceiling that sets log2_scale_x is
    then decided by the switching floor and sits at one of its steps."""
    params = default_privacy_params()
    n, Q = params.n, params.Q
    per_unit = min((0.5 + 2.0 ** (b - 52)) * Q / 2.0**b for b in REPLY_BITS)
    switch_min = NOISE_SIGMAS * per_unit * math.sqrt((n + 1) / 3.0)
    sw = 2.0**8
    k = math.ceil(math.log2(4 * switch_min / (0.06 * sw)))
    tol = 4 * switch_min / (sw * 2.0**k) * (1 - 1e-6 if above else 1 + 1e-6)
    assert max(0, math.ceil(math.log2(4 * d / tol))) == 8
    return tol


@pytest.mark.parametrize("above", [False, True])
def test_x_is_scaled_by_the_switching_floor_at_a_large_tolerance(above):
    """docs (make_private_plan): x is scaled so that flooding costs ≤ tol/2 and the best reply
    width's switching noise ≤ tol/4. With small weights at a large tolerance the switching
    floor decides; just above and just below one of its steps the scale is the smallest that
    keeps it, and the published plan is the documented one."""
    d = 3
    tol = _tolerance_at_switch_floor(d, above)
    W = np.array([[0.01, -0.02, 0.015]])
    plan = _plan(W, [0.1], tol)
    ex, ew, bits, log2_flood, bound, _fixed = _documented_plan(W, tol)
    flood_ex = math.ceil(math.log2(2 * NOISE_SIGMAS * 2.0**log2_flood / (tol * 2.0**ew)))
    assert ex > flood_ex  # the floor, not the flooding, sets the scale
    assert (plan.log2_scale_x, plan.log2_scale_w, plan.reply_bits) == (ex, ew, bits)
    assert plan.error_bound == bound


def test_a_width_whose_bound_equals_the_tolerance_exactly_is_taken():
    """The reply width is the narrowest with error bound ≤ tolerance: a tolerance equal (in
    float64) to a width's documented bound takes that width, not the next."""
    W = np.array([[0.4, -0.3, 0.2, 0.1]])
    tol = 1e-4
    for _ in range(20):  # the tolerance the chosen width uses up: tol = tol/8 + rest
        ex, ew, _bits, _f, bound, _fixed = _documented_plan(W, tol)
        tol = (bound - tol / 8) * 8 / 7
    found = None
    for i in range(-200, 201):
        t = tol + i * float(np.spacing(tol))
        ex2, ew2, bits2, _f, bound2, _fixed2 = _documented_plan(W, t)
        if (ex2, ew2) == (ex, ew) and bound2 == t and bits2 is not None:
            found = t
            break
    assert found is not None
    plan = _plan(W, [0.0], found)
    assert plan.error_bound == found and plan.reply_bits == bits2


def test_the_error_bound_carries_the_re_randomization_term_to_the_last_bit():
    """At a large tolerance with small weights (the switching floor sets x), the
    re-randomization noise 6·σ_e·3·√N/(sx·sw) is a fraction of the bound's last float64 bit:
    over a sweep of tolerances the published bound is still exactly the documented sum."""
    W = np.array([[0.01, -0.02, 0.015]])
    for j in range(80):
        tol = 0.05 + j * 0.0005
        plan = _plan(W, [0.1], tol)
        ex, ew, bits, _f, bound, _fixed = _documented_plan(W, tol)
        assert (plan.log2_scale_x, plan.log2_scale_w, plan.reply_bits) == (ex, ew, bits)
        assert plan.error_bound == bound, tol
