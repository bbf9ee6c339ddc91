"""Release canaries: the audit sees a class list or bounds read from the data (issue 12, leaks 1
and 2), with a positive control (a leaky estimator, flagged) and a negative one (the same
estimator given its classes and bounds publicly, not flagged)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.linear_model import LinearRegression, LogisticRegression

from heml.audit import audit, canary_audit, extreme_canary, label_canary, release_statistic

RUNS = 100  # per world: 50 held out certify up to ε ≈ 2.57


class NoisyLogistic(ClassifierMixin, BaseEstimator):
    """Logistic regression with Gaussian noise on its weights, claiming ``epsilon``.

    ``classes=None`` reads the class list from the labels (np.unique(y), today's leak 1);
    given, it is public and fixed: rows with other labels are dropped, every class gets a row
    of weights whether or not the data has it.
    """

    def __init__(self, epsilon=1.0, delta=1e-5, classes=None, noise=0.5, random_state=None):
        self.epsilon = epsilon
        self.delta = delta
        self.classes = classes
        self.noise = noise
        self.random_state = random_state

    def fit(self, X, y):
        X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
        if self.classes is None:
            classes = np.unique(y)
        else:
            classes = np.asarray(self.classes)
            keep = np.isin(y, classes)
            X, y = X[keep], y[keep]
        rng = np.random.default_rng(self.random_state)
        coef = np.zeros((len(classes), X.shape[1]))
        seen = np.isin(classes, y)
        if seen.sum() >= 2:
            lr = LogisticRegression(max_iter=200).fit(X, y)
            fitted = lr.coef_ if len(lr.classes_) > 2 else np.vstack([-lr.coef_, lr.coef_]) / 2
            coef[np.searchsorted(classes, lr.classes_)] = fitted
        self.classes_ = classes
        self.coef_ = coef + rng.normal(0.0, self.noise, coef.shape)
        self.intercept_ = np.zeros(len(classes))
        return self

    def decision_function(self, X):
        return np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_

    def predict(self, X):
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]


class NoisyBoundedRegression(RegressorMixin, BaseEstimator):
    """Least squares plus weight noise; exports ``bounds_X_``/``bounds_y_`` like heml.dp.

    Without ``bounds_X``/``bounds_y`` they are the data's min/max (today's leak 2).
    """

    def __init__(self, epsilon=1.0, bounds_X=None, bounds_y=None, noise=0.5, random_state=None):
        self.epsilon = epsilon
        self.bounds_X = bounds_X
        self.bounds_y = bounds_y
        self.noise = noise
        self.random_state = random_state

    def fit(self, X, y):
        X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
        lo, hi = self.bounds_X if self.bounds_X is not None else (X.min(0), X.max(0))
        ylo, yhi = self.bounds_y if self.bounds_y is not None else (y.min(), y.max())
        Xc, yc = np.clip(X, lo, hi), np.clip(y, ylo, yhi)
        rng = np.random.default_rng(self.random_state)
        lr = LinearRegression().fit(Xc, yc)
        self.coef_ = lr.coef_ + rng.normal(0.0, self.noise, lr.coef_.shape)
        self.intercept_ = lr.intercept_
        self.bounds_X_ = (np.broadcast_to(lo, X.shape[1:]), np.broadcast_to(hi, X.shape[1:]))
        self.bounds_y_ = (float(ylo), float(yhi))
        return self

    def predict(self, X):
        return np.clip(np.asarray(X) @ self.coef_ + self.intercept_, *self.bounds_y_)


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = (X[:, 0] + 0.5 * rng.normal(size=200) > 0).astype(int)
    return X, y


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(1)
    X = rng.uniform(-1, 1, size=(200, 3))
    y = X @ [1.0, -2.0, 0.5] + 0.1 * rng.normal(size=200)
    return X, y


def test_label_set_canary_flags_a_class_list_read_from_the_data(blobs):
    X, y = blobs
    leaky = canary_audit(
        lambda e: NoisyLogistic(epsilon=e), X, y, epsilon=1.0, runs=RUNS, statistic="label_set"
    )
    # positive control: the fresh label shows up in the class list (and the weights' shape)
    assert leaky.bound.epsilon_lb > 2.0, leaky.bound
    assert leaky.bound.epsilon_lb == pytest.approx(leaky.bound.ceiling)
    private = canary_audit(
        lambda e: NoisyLogistic(epsilon=e, classes=[0, 1]),
        X,
        y,
        epsilon=1.0,
        runs=RUNS,
        statistic="label_set",
    )
    assert private.bound.epsilon_lb < 0.5, private.bound
    # the margin canary is blind to it: the scores of seen labels barely move
    margin = canary_audit(lambda e: NoisyLogistic(epsilon=e), X, y, epsilon=1.0, runs=RUNS)
    assert margin.bound.epsilon_lb < leaky.bound.epsilon_lb - 1.0, margin.bound


class IgnoresItsClasses(NoisyLogistic):
    """Declares a label set but reads the class list from the labels anyway (leak 1)."""

    def fit(self, X, y):
        declared, self.classes = self.classes, None
        try:
            return super().fit(X, y)
        finally:
            self.classes = declared


def test_label_set_canary_stays_inside_a_declared_label_set(blobs):
    X, y = blobs
    # the label set is declared as {0, 1, 2} and no record carries 2: the canary adds one
    # class-2 record (a declared label), never an undeclared one the estimator would refuse
    canary = canary_audit(
        lambda e: NoisyLogistic(epsilon=e, classes=[0, 1, 2]),
        X, y, epsilon=1.0, runs=RUNS, statistic="label_set",
    )  # fmt: skip
    assert canary.canary.y == 2
    assert canary.bound.epsilon_lb < 0.5, canary.bound
    # positive control: an estimator that ignores its declared classes is flagged
    leaky = canary_audit(
        lambda e: IgnoresItsClasses(epsilon=e, classes=[0, 1, 2]),
        X, y, epsilon=1.0, runs=RUNS, statistic="label_set",
    )  # fmt: skip
    assert leaky.bound.epsilon_lb > 2.0, leaky.bound


def test_label_set_canary_passes_heml_dp_with_declared_classes(blobs):
    from heml.dp import DPLogisticRegression

    X, y = blobs
    Xc = np.clip(X, -3, 3)
    res = canary_audit(
        lambda e: DPLogisticRegression(epsilon=e, classes=[0, 1, 2], bounds_X=(-3, 3)),
        Xc, y, epsilon=1.0, runs=20, statistic="label_set",
    )  # fmt: skip
    assert res.canary.y == 2 and res.bound.epsilon_lb == 0.0, res.bound


def test_extreme_record_canary_flags_bounds_read_from_the_data(linear):
    X, y = linear
    leaky = canary_audit(
        lambda e: NoisyBoundedRegression(epsilon=e),
        X,
        y,
        epsilon=1.0,
        runs=RUNS,
        statistic="extreme_record",
    )
    assert leaky.bound.epsilon_lb > 2.0, leaky.bound
    public = canary_audit(
        lambda e: NoisyBoundedRegression(epsilon=e, bounds_X=(-1.0, 1.0), bounds_y=(-4.0, 4.0)),
        X,
        y,
        epsilon=1.0,
        runs=RUNS,
        statistic="extreme_record",
    )
    assert public.bound.epsilon_lb < 0.5, public.bound


def test_heml_dp_regression_with_public_bounds_passes_the_extreme_record_canary(linear):
    from heml.dp import DPLinearRegression

    X, y = linear
    result = canary_audit(
        lambda e: DPLinearRegression(epsilon=e, bounds_X=(-1, 1), bounds_y=(-4, 4)),
        X,
        y,
        epsilon=1.0,
        runs=RUNS,
        statistic="extreme_record",
    )
    assert result.bound.epsilon_lb < 0.5, result.bound


def test_audit_fails_a_leaky_estimator_on_its_release_canaries(blobs):
    X, y = blobs
    kw = dict(
        epsilons=(1.0,), n_shadow=4, canary_runs=20, release_runs=RUNS, n_bootstrap=0,
        progress=False,
    )  # fmt: skip
    leaky = audit(lambda e: NoisyLogistic(epsilon=e), X[:150], y[:150], X[150:], y[150:], **kw)
    m = leaky.model(1.0)
    assert m.audit_status == "FAILED" and leaky.passed is False
    assert m.summary["epsilon_lower_bound_canary"] == "label_set"
    assert m.summary["epsilon_lower_bound"] > 2.0
    assert m.release_canaries["label_set"]["passed"] is False
    assert "label set" in leaky.to_markdown()
    private = audit(
        lambda e: NoisyLogistic(epsilon=e, classes=[0, 1]), X[:150], y[:150], X[150:], y[150:],
        **kw,
    )  # fmt: skip
    pm = private.model(1.0)
    assert pm.release_canaries["label_set"]["epsilon_lb"] < 0.5
    assert pm.release_canaries["label_set"]["passed"] is True
    assert set(pm.release_canaries) == {"label_set", "extreme_record"}


def test_a_rare_class_no_longer_stops_the_shadow_models(blobs):
    # one record of class 2: shadow models that do not train on it do not know the class,
    # and its statistic there is the unseen-label margin instead of an error
    X, y = blobs
    y = y.copy()
    y[3] = 2
    report = audit(
        lambda e: NoisyLogistic(epsilon=e), X[:150], y[:150], X[150:], y[150:],
        epsilons=(math.inf,), n_shadow=4, canaries=False, release_canaries=False,
        n_bootstrap=0, progress=False,
    )  # fmt: skip
    assert report.data["classes"] == [0, 1, 2]


def test_release_statistics_and_canaries():
    X = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, -1.0]])
    assert label_canary(X, np.array([0, 1, 1])).y == 2
    assert label_canary(X, np.array(["a", "b", "b"])).y not in ("a", "b")
    assert label_canary(X, np.array([True, False, True])) is None
    ext = extreme_canary(X, np.array([1.0, 2.0, 3.0]), classifier=False)
    assert np.all(ext.x > X.max(0) + 9 * np.ptp(X, axis=0)) and ext.y == pytest.approx(23.0)
    fit = NoisyBoundedRegression(random_state=0).fit(X, [1.0, 2.0, 3.0])
    assert release_statistic("extreme_record", fit, ext) == 4.0
    assert release_statistic("extreme_record", LinearRegression().fit(X, [1, 2, 3]), ext) == -1.0
    clf = NoisyLogistic(random_state=0).fit(X, [0, 1, 2])
    assert release_statistic("label_set", clf, label_canary(X, np.array([0, 1, 1]))) == 7.0
    with pytest.raises(ValueError, match="unknown release canary"):
        release_statistic("bogus", clf, ext)


def test_a_fit_that_fails_only_with_the_canary_is_flagged(blobs):
    # NoisySumClassifier reads two classes from the labels and raises on a third: the error is
    # an outcome the canary's presence decides, as telling as any attribute
    from heml.audit import NoisySumClassifier

    X, y = blobs
    Xn = X / np.linalg.norm(X, axis=1).max()
    leaky = canary_audit(
        lambda e: NoisySumClassifier(epsilon=e), Xn, y, epsilon=1.0, runs=RUNS,
        statistic="label_set",
    )  # fmt: skip
    assert leaky.bound.epsilon_lb > 2.0 and leaky.scores_in.min() > 1e99
    public = canary_audit(
        lambda e: NoisySumClassifier(epsilon=e, classes=(0, 1)), Xn, y, epsilon=1.0, runs=RUNS,
        statistic="label_set",
    )  # fmt: skip
    assert public.bound.epsilon_lb == 0.0


def test_heml_audit_gives_the_public_classes_to_the_classifier(monkeypatch):
    import heml.dp._public_scaling as scaling
    from heml.audit import NoisySumClassifier
    from heml.audit.cli import EstimatorFactory, _parse_classes

    monkeypatch.setattr(
        scaling, "cli_estimator", lambda task, **kw: NoisySumClassifier(epsilon=kw["epsilon"])
    )
    make = EstimatorFactory("classification", 1e-5, None, None, True, (0, 1))
    assert make(1.0).classes == [0, 1]
    assert EstimatorFactory("classification", 1e-5, None, None, True)(1.0).classes is None
    assert _parse_classes("0, 1,2", np.array([0, 1])) == (0, 1, 2)
    assert _parse_classes("no,yes", np.array(["no", "yes"], dtype=object)) == ("no", "yes")
