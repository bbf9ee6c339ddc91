"""heml.audit attacks: LiRA against a known ground truth, leave-one-out, the model statistic."""

import numpy as np
import pytest
from scipy.special import logit, ndtr
from sklearn.datasets import load_iris, make_classification
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from heml.audit import balanced_keep, leave_one_out_scores, lira, membership_signal, roc_curve
from heml.audit._signals import UNSEEN_LABEL_MARGIN


def _gaussian_world(seed, n_models=65, n_records=400, shift=1.0):
    """Record i's statistic ~ N(μ_i + shift·member, 1), with very different μ_i per record."""
    rng = np.random.default_rng(seed)
    keep = balanced_keep(n_models, n_records, rng)
    mu = rng.normal(0.0, 4.0, n_records)  # "difficulty": hides membership from a global threshold
    stats = mu + shift * keep + rng.normal(size=keep.shape)
    return stats, keep


def test_balanced_keep_puts_every_record_in_half_the_models():
    keep = balanced_keep(65, 1000, np.random.default_rng(0))
    assert np.all(keep.sum(axis=0) == 32)
    assert np.all(np.abs(keep.sum(axis=1) - 1000 * 32 / 65) < 80)


def test_lira_recovers_the_optimal_test_and_beats_the_threshold_attack():
    stats, keep = _gaussian_world(0, shift=1.0)
    scores, pooled = leave_one_out_scores(stats, keep, fix_variance=False)
    assert not pooled
    auc = {k: roc_curve(v.ravel(), keep.ravel()).auc for k, v in scores.items()}
    optimal = ndtr(1.0 / np.sqrt(2.0))  # AUC of N(1,1) vs N(0,1) with known means: 0.760
    assert auc["lira_online"] == pytest.approx(optimal, abs=0.02)
    assert auc["lira_offline"] == pytest.approx(optimal, abs=0.02)
    assert auc["threshold"] < 0.6  # per-record difficulty swamps a global threshold
    # at low FPR, online LiRA is near the Neyman-Pearson optimum Φ(1 − z_0.99) = 0.092
    roc = roc_curve(scores["lira_online"].ravel(), keep.ravel())
    assert roc.tpr_at_fpr(0.01) == pytest.approx(0.092, abs=0.02)


def test_online_lira_uses_per_record_variances_when_they_differ():
    rng = np.random.default_rng(1)
    keep = balanced_keep(129, 300, rng)
    sd_in = np.where(np.arange(300) % 2 == 0, 0.3, 1.0)  # membership also shrinks the spread
    stats = np.where(keep, 1.0 + sd_in * rng.normal(size=keep.shape), rng.normal(size=keep.shape))
    fixed, _ = leave_one_out_scores(stats, keep, fix_variance=True)
    per, _ = leave_one_out_scores(stats, keep, fix_variance=False)
    auc_fixed = roc_curve(fixed["lira_online"].ravel(), keep.ravel()).auc
    auc_per = roc_curve(per["lira_online"].ravel(), keep.ravel()).auc
    assert auc_per > auc_fixed + 0.01


@pytest.mark.parametrize("fix_variance", [True, False])
def test_leave_one_out_equals_explicit_shadows(fix_variance):
    """Target t's scores use exactly the other models as shadows, never its own statistics."""
    stats, keep = _gaussian_world(2, n_models=9, n_records=50)
    scores, _ = leave_one_out_scores(stats, keep, fix_variance=fix_variance)
    for t in range(stats.shape[0]):
        others = np.arange(stats.shape[0]) != t
        for online, name in ((True, "lira_online"), (False, "lira_offline")):
            direct = lira(
                stats[t], stats[others], keep[others], online=online, fix_variance=fix_variance
            )
            np.testing.assert_allclose(scores[name][t], direct, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(scores["threshold"], stats)


def test_lira_validates_shapes_and_needs_both_sides():
    stats, keep = _gaussian_world(4, n_models=5, n_records=20)
    with pytest.raises(ValueError, match="must be"):
        lira(stats[0], stats[1:], keep[1:, :10])
    with pytest.raises(ValueError, match="at least 3 models"):
        leave_one_out_scores(stats[:2], keep[:2])
    all_in = np.ones_like(keep[1:])
    with pytest.raises(ValueError, match="without each record"):
        lira(stats[0], stats[1:], all_in)


# ---------------------------------------------------------------------- the statistic
def test_binary_margin_is_the_signed_decision_function():
    X, y = make_classification(n_samples=200, n_features=5, random_state=0)
    labels = np.where(y == 1, "yes", "no")  # string classes
    clf = LogisticRegression().fit(X, labels)
    m = membership_signal(clf, X, labels)
    z = clf.decision_function(X)
    np.testing.assert_allclose(m, np.where(labels == "yes", z, -z))
    # the margin is the logit of the true class's probability
    p_true = clf.predict_proba(X)[np.arange(200), (labels == "yes").astype(int)]
    np.testing.assert_allclose(m, logit(p_true), rtol=1e-6, atol=1e-9)
    # higher margin = better fit: correctly classified points have positive margin
    assert np.all((m > 0) == (clf.predict(X) == labels))


def test_multiclass_margin_is_the_softmax_logit_of_the_true_class():
    X, y = load_iris(return_X_y=True)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
    m = membership_signal(clf, X, y)
    p = clf.predict_proba(X)[np.arange(y.size), y]
    np.testing.assert_allclose(m, np.log(p) - np.log1p(-p), rtol=1e-6, atol=1e-8)
    # a label the model never saw is the worst fit there is, not an error (leak 1: a model
    # that knows a rare class only when it trained on it)
    got = membership_signal(clf, X[:3], [0, 7, 2])
    assert got[1] == UNSEEN_LABEL_MARGIN < min(m.min(), -700)
    np.testing.assert_allclose(got[[0, 2]], membership_signal(clf, X[[0, 2]], [0, 2]))


def test_regression_statistic_is_minus_absolute_residual():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(100, 3))
    y = X @ [1.0, -2.0, 0.5] + rng.normal(size=100)
    reg = LinearRegression().fit(X, y)
    np.testing.assert_allclose(membership_signal(reg, X, y), -np.abs(y - reg.predict(X)))
