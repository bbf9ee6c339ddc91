"""heml.audit metrics: exact ROC, the score convention, confidence intervals, DP limits."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from heml.audit import attack_metrics, dp_max_advantage, dp_tpr_bound, roc_curve


def test_roc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    member = rng.random(500) < 0.4
    scores = np.round(rng.normal(member * 0.7, 1.0), 1)  # many ties
    roc = roc_curve(scores, member)
    fpr, tpr, thr = sk_roc_curve(member, scores, drop_intermediate=False)
    np.testing.assert_allclose(roc.fpr, fpr)
    np.testing.assert_allclose(roc.tpr, tpr)
    np.testing.assert_allclose(roc.thresholds[1:], thr[1:])
    assert roc.auc == pytest.approx(roc_auc_score(member, scores), abs=1e-12)
    assert roc.fpr.size == np.unique(scores).size + 1  # one vertex per distinct score


def test_convention_higher_score_is_member_and_members_are_positive():
    member = np.array([True, True, False, False])
    assert roc_curve([0.9, 0.8, 0.2, 0.1], member).auc == 1.0
    assert roc_curve([0.1, 0.2, 0.8, 0.9], member).auc == 0.0
    # integer labels are read the same way: 1 = member
    assert roc_curve([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]).auc == 1.0
    with pytest.raises(ValueError, match="boolean"):
        roc_curve([0.9, 0.8, 0.2, 0.1], [2, 2, 0, 0])
    with pytest.raises(ValueError, match="both members and non-members"):
        roc_curve([0.9, 0.8], [True, True])
    rng = np.random.default_rng(1)
    s, m = rng.normal(size=300), rng.random(300) < 0.5
    assert roc_curve(-s, m).auc == pytest.approx(1.0 - roc_curve(s, m).auc, abs=1e-12)


def test_tpr_at_fpr_and_advantage_by_hand():
    # members 5, 4, 3; non-members 4.5, 2, 1
    scores = [5, 4, 3, 4.5, 2, 1]
    member = [True, True, True, False, False, False]
    roc = roc_curve(scores, member)
    assert roc.tpr_at_fpr(0.0) == pytest.approx(1 / 3)  # only "5" before the first non-member
    assert roc.tpr_at_fpr(0.34) == pytest.approx(1.0)  # one false positive allowed
    assert roc.advantage == pytest.approx(2 / 3)  # threshold 3: TPR 1, FPR 1/3
    # brute force over every threshold
    s, m = np.array(scores, float), np.array(member)
    adv = max((s[m] >= t).mean() - (s[~m] >= t).mean() for t in s)
    assert roc.advantage == pytest.approx(adv)


def test_exact_roc_resolves_what_a_threshold_grid_misses():
    """LeakPro#282: a linspace of thresholds collapses when one score is an outlier."""
    rng = np.random.default_rng(2)
    member = np.r_[np.ones(1000, bool), np.zeros(1000, bool)]
    scores = np.r_[rng.normal(0.3, 0.1, 1000), rng.normal(0.0, 0.1, 1000)]
    scores[0] = 1e9  # one member with an absurd score
    grid = np.linspace(scores.min(), scores.max(), 200)
    tpr_g = [(scores[member] >= t).mean() for t in grid]
    fpr_g = [(scores[~member] >= t).mean() for t in grid]
    grid_auc = -np.trapezoid(tpr_g, fpr_g)
    exact = roc_curve(scores, member).auc
    assert exact == pytest.approx(roc_auc_score(member, scores), abs=1e-12)
    assert exact > 0.97  # the true separation (d' = 3)
    assert grid_auc < 0.6  # the grid sees one step from (0,0) to (1,1)


def test_vertices_describe_the_same_curve():
    rng = np.random.default_rng(3)
    member = rng.random(4000) < 0.5
    scores = rng.normal(member * 0.5, 1.0)
    scores[:500] = np.round(scores[:500], 1)  # some ties: diagonal steps
    roc = roc_curve(scores, member)
    fpr, tpr = roc.vertices()
    # runs of vertical or horizontal steps are straight lines: about half the points go
    assert fpr.size < 0.6 * roc.fpr.size
    # every original point lies on the segment between the vertices around it
    where = {(a, b): i for i, (a, b) in enumerate(zip(roc.fpr, roc.tpr, strict=True))}
    idx = np.array([where[(a, b)] for a, b in zip(fpr, tpr, strict=True)])
    assert idx[0] == 0 and idx[-1] == roc.fpr.size - 1 and np.all(np.diff(idx) > 0)
    seg = np.searchsorted(idx, np.arange(roc.fpr.size), side="right") - 1
    seg = np.minimum(seg, idx.size - 2)
    a = np.c_[fpr[seg], tpr[seg]]
    b = np.c_[fpr[seg + 1], tpr[seg + 1]]
    p = np.c_[roc.fpr, roc.tpr]
    cross = (b - a)[:, 0] * (p - a)[:, 1] - (b - a)[:, 1] * (p - a)[:, 0]
    np.testing.assert_allclose(cross, 0.0, atol=1e-12)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc.auc, abs=1e-12)


def test_samples_are_exact_points_of_the_curve():
    rng = np.random.default_rng(6)
    member = rng.random(3000) < 0.5
    roc = roc_curve(rng.normal(member * 0.8, 1.0), member)
    fpr, tpr = roc.sample(50)
    assert fpr[0] == 0.0 and fpr[1] == pytest.approx(1 / roc.n_nonmembers) and fpr[-1] == 1.0
    for f, t in zip(fpr, tpr, strict=True):
        assert t == roc.tpr_at_fpr(f)


def test_bootstrap_ci_covers_chance_for_random_scores():
    covered = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        m = rng.random(600) < 0.5
        met = attack_metrics(rng.normal(size=600), m, n_bootstrap=200, random_state=seed)
        lo, hi = met["auc_ci"]
        covered += lo <= 0.5 <= hi
        assert lo <= met["auc"] <= hi
    assert covered >= 34  # nominal 95 %: ≥ 85 % of 40 with room for sampling error


def test_grouped_bootstrap_accounts_for_repeated_records():
    """Pooled targets score the same record several times; resampling scores is overconfident."""
    grouped_cover, ratios = 0, []
    for seed in range(30):
        rng = np.random.default_rng(100 + seed)
        n_rec, n_targets = 200, 10
        member = np.tile(rng.random(n_rec) < 0.5, n_targets)
        per_record = rng.normal(size=n_rec)  # a record's score barely changes between targets
        scores = np.tile(per_record, n_targets) + 0.05 * rng.normal(size=n_rec * n_targets)
        groups = np.tile(np.arange(n_rec), n_targets)
        naive = attack_metrics(scores, member, n_bootstrap=200, random_state=seed)["auc_ci"]
        grouped = attack_metrics(scores, member, groups=groups, n_bootstrap=200, random_state=seed)
        g = grouped["auc_ci"]
        grouped_cover += g[0] <= 0.5 <= g[1]
        ratios.append((g[1] - g[0]) / (naive[1] - naive[0]))
        assert grouped["n_records"] == n_rec
    assert grouped_cover >= 25  # nominal 95 % of 30
    # ten near-copies of each record: the honest interval is about √10 ≈ 3.2 times wider
    assert 2.5 < np.median(ratios) < 4.0


def test_tpr_at_low_fpr_is_flagged_when_unresolvable():
    rng = np.random.default_rng(4)
    m = rng.random(2000) < 0.5
    met = attack_metrics(rng.normal(size=2000), m, n_bootstrap=0)
    assert met["tpr_at_fpr_reliable"] == {0.01: True, 0.001: False}
    assert met["auc_ci"] is None


def test_dp_tpr_bound_and_max_advantage():
    assert dp_max_advantage(1.0, 0.0) == pytest.approx((math.e - 1) / (math.e + 1))
    assert dp_max_advantage(1.0, 0.0) == pytest.approx(0.462, abs=1e-3)
    assert dp_max_advantage(0.1, 0.0) == pytest.approx(0.05, abs=1e-3)
    for eps, delta in ((0.5, 1e-5), (1.0, 0.0), (3.0, 1e-3)):
        f = np.linspace(0, 1, 200001)
        b = dp_tpr_bound(f, eps, delta)
        assert np.all(np.diff(b) >= -1e-15) and b[-1] == 1.0
        assert b[0] == pytest.approx(delta)
        assert np.max(b - f) == pytest.approx(dp_max_advantage(eps, delta), abs=1e-5)
        # the region is symmetric: (FPR, TPR) feasible iff (1−TPR, 1−FPR) is
        g = np.linspace(0.001, 0.2, 50)
        t = dp_tpr_bound(g, eps, delta)
        assert np.all(dp_tpr_bound(1 - t, eps, delta) >= 1 - g - 1e-12)
    assert np.all(dp_tpr_bound([0.0, 0.3], math.inf, 0.0) == 1.0)
