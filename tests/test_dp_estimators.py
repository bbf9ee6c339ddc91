"""DP estimators: ε=∞ equals scikit-learn, determinism, accuracy, sklearn contract, export."""

import json
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine, make_classification
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import heml
from heml.dp import DPLinearRegression, DPLogisticRegression, PrivacyLeakWarning
from heml.dp._validation import clip_rows

INF = float("inf")


def _clipped(est, X):
    lo, hi = est.bounds_X_
    return clip_rows(np.asarray(X, dtype=float), lo, hi, est.data_norm_)


def _standardized(loader, regression=False, seed=0):
    X, y = loader(return_X_y=True)
    kw = {} if regression else {"stratify": y}
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=seed, **kw)
    sc = StandardScaler().fit(Xtr)
    Xtr, Xte = np.clip(sc.transform(Xtr), -3, 3), np.clip(sc.transform(Xte), -3, 3)
    if regression:
        m, s = ytr.mean(), ytr.std()
        ytr, yte = np.clip((ytr - m) / s, -3, 3), (yte - m) / s
    return Xtr, Xte, ytr, yte


# ------------------------------------------------------------------ epsilon = inf
# Tolerances: both sides solve the same convex problem; ours to machine precision, scikit-learn's
# lbfgs to tol=1e-10, so coefficients agree to 1e-6 (linear: 1e-8) and probabilities to 1e-6.
def test_linear_inf_equals_sklearn_on_the_same_clipping():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 5)) * 1.5
    y = X @ [1.0, -2.0, 0.5, 0.0, 3.0] + rng.standard_normal(300)
    dp = DPLinearRegression(epsilon=INF, bounds_X=(-3, 3), bounds_y=(-10, 10)).fit(X, y)
    sk = LinearRegression().fit(_clipped(dp, X), np.clip(y, -10, 10))
    np.testing.assert_allclose(dp.coef_, sk.coef_, atol=1e-8)
    assert dp.intercept_ == pytest.approx(sk.intercept_, abs=1e-8)
    assert dp.dp_guarantee_["private"] is False


def test_binary_inf_equals_sklearn_unpenalized():
    X, y = make_classification(
        n_samples=500, n_features=6, n_informative=4, n_redundant=0, flip_y=0.2, random_state=1
    )
    dp = DPLogisticRegression(epsilon=INF, bounds_X=(-3, 3)).fit(X, y)
    sk = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(_clipped(dp, X), y)
    np.testing.assert_allclose(dp.coef_, sk.coef_, atol=1e-6)
    np.testing.assert_allclose(dp.intercept_, sk.intercept_, atol=1e-6)
    np.testing.assert_allclose(
        dp.predict_proba(_clipped(dp, X)), sk.predict_proba(_clipped(dp, X)), atol=1e-6
    )


def test_multiclass_inf_equals_sklearn_multinomial():
    X, y = make_classification(
        n_samples=600,
        n_features=5,
        n_informative=4,
        n_redundant=0,
        n_classes=3,
        flip_y=0.2,
        random_state=2,
    )
    dp = DPLogisticRegression(epsilon=INF, bounds_X=(-3, 3)).fit(X, y)
    Xc = _clipped(dp, X)
    sk = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(Xc, y)
    np.testing.assert_allclose(dp.predict_proba(Xc), sk.predict_proba(Xc), atol=1e-6)


def test_unconverged_objective_perturbation_raises_and_still_charges(monkeypatch):
    from heml.dp import BudgetAccountant, ConvergenceError, _logistic

    monkeypatch.setattr(_logistic, "NEWTON_MAX_ITER", 1)
    X, y = make_classification(n_samples=400, n_features=5, random_state=0)
    acc = BudgetAccountant(epsilon=2.0, delta=1e-4)
    est = DPLogisticRegression(
        epsilon=1.0,
        classes=[0, 1],
        bounds_X=(-3, 3),
        accountant=acc,
        random_state=0,
        method="objpert",  # "auto" picks DP-GD for two classes since round 2 of issue 12
    )
    with pytest.raises(ConvergenceError, match="gradient tolerance"):
        est.fit(X, y)
    assert acc.spent == (1.0, 1e-5)  # the data were used: the budget is spent
    assert not hasattr(est, "coef_")


# ------------------------------------------------------------------ determinism and noise
@pytest.mark.parametrize("n_classes", [2, 3])
def test_seeds_reproduce_and_differ(n_classes):
    X, y = make_classification(
        n_samples=300, n_features=5, n_informative=3, n_classes=n_classes, random_state=0
    )
    kw = dict(classes=np.arange(n_classes), bounds_X=(-3, 3))
    fit = lambda seed: DPLogisticRegression(**kw, random_state=seed).fit(X, y)  # noqa: E731
    np.testing.assert_array_equal(fit(7).coef_, fit(7).coef_)
    assert not np.allclose(fit(7).coef_, fit(8).coef_)
    a = DPLogisticRegression(**kw).fit(X, y)  # secure noise: never repeats
    b = DPLogisticRegression(**kw).fit(X, y)
    assert not np.allclose(a.coef_, b.coef_)


def test_linear_seeds_reproduce():
    X, y = load_diabetes(return_X_y=True)
    kw = dict(bounds_X=(-0.2, 0.2), bounds_y=(0, 350), random_state=3)
    np.testing.assert_array_equal(
        DPLinearRegression(**kw).fit(X, y).coef_, DPLinearRegression(**kw).fit(X, y).coef_
    )


# ------------------------------------------------------------------ accuracy floors (real data)
# Means over 5 seeds; the benchmark's 30-run means are ≈0.93, ≈0.91 and ≈0.38. The floors sit
# a few standard errors below them and far above diffprivlib (0.80, 0.50, R² < 0).
def test_breast_cancer_accuracy_at_eps_1():
    Xtr, Xte, ytr, yte = _standardized(load_breast_cancer)
    acc = [
        DPLogisticRegression(epsilon=1.0, classes=[0, 1], bounds_X=(-3, 3), random_state=s)
        .fit(Xtr, ytr)
        .score(_clipped_for(Xte, s, Xtr, ytr), yte)
        for s in range(5)
    ]
    assert np.mean(acc) >= 0.90


def _clipped_for(Xte, seed, Xtr, ytr):
    est = DPLogisticRegression(
        epsilon=1.0, classes=[0, 1], bounds_X=(-3, 3), random_state=seed
    ).fit(Xtr, ytr)
    return _clipped(est, Xte)


def test_wine_softmax_accuracy_at_eps_2():
    Xtr, Xte, ytr, yte = _standardized(load_wine)
    scores = []
    for s in range(5):
        est = DPLogisticRegression(
            epsilon=2.0, classes=[0, 1, 2], bounds_X=(-3, 3), random_state=s
        ).fit(Xtr, ytr)
        scores.append(est.score(_clipped(est, Xte), yte))
    assert np.mean(scores) >= 0.85


def test_diabetes_r2_at_eps_5():
    Xtr, Xte, ytr, yte = _standardized(load_diabetes, regression=True)
    scores = []
    for s in range(5):
        est = DPLinearRegression(
            epsilon=5.0, bounds_X=(-3, 3), bounds_y=(-3, 3), random_state=s
        ).fit(Xtr, ytr)
        scores.append(est.score(_clipped(est, Xte), yte))
    assert np.mean(scores) >= 0.30


# ------------------------------------------------------------------ warnings, shapes, export
def test_missing_bounds_are_estimated_with_dp_and_data_bounds_warn():
    X, y = make_classification(
        n_samples=200, n_features=3, n_informative=2, n_redundant=0, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrivacyLeakWarning)
        DPLogisticRegression(classes=[0, 1], random_state=0).fit(X, y)  # DP bounds: no leak
        DPLinearRegression(bounds_X=(-5, 5), random_state=0).fit(X, X[:, 0])
        # data_norm bounds rows
        DPLogisticRegression(classes=[0, 1], data_norm=3.0, random_state=0).fit(X, y)
        DPLogisticRegression(epsilon=INF).fit(X, y)  # no privacy claimed, nothing to warn
    with pytest.warns(PrivacyLeakWarning, match="bounds_X='data'"):
        DPLogisticRegression(classes=[0, 1], bounds_X="data", random_state=0).fit(X, y)
    with pytest.warns(PrivacyLeakWarning, match="bounds_y='data'"):
        DPLinearRegression(bounds_X=(-5, 5), bounds_y="data", random_state=0).fit(X, X[:, 0])
    assert issubclass(PrivacyLeakWarning, RuntimeWarning)


def test_shapes_strings_and_dataframes():
    pd = pytest.importorskip("pandas")
    X, y = make_classification(
        n_samples=300, n_features=4, n_informative=3, n_redundant=0, n_classes=3, random_state=0
    )
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    labels = np.array(["x", "y", "z"])[y]
    clf = DPLogisticRegression(classes=list("xyz"), bounds_X=(-4, 4), random_state=0)
    clf.fit(df, labels)
    assert clf.coef_.shape == (3, 4) and clf.intercept_.shape == (3,)
    assert list(clf.feature_names_in_) == ["a", "b", "c", "d"]
    assert clf.predict_proba(df).shape == (300, 3) and set(clf.predict(df)) <= set("xyz")
    binary = DPLogisticRegression(classes=[False, True], bounds_X=(-4, 4), random_state=0)
    binary.fit(X, y == 1)
    assert binary.coef_.shape == (1, 4) and binary.decision_function(X).shape == (300,)
    assert binary.predict_proba(X).shape == (300, 2)
    with pytest.raises(ValueError, match="features"):
        binary.predict(X[:, :3])


def test_pipeline_and_export_carry_the_guarantee(tmp_path):
    X, y = load_breast_cancer(return_X_y=True)
    pipe = make_pipeline(
        StandardScaler(),
        DPLogisticRegression(
            epsilon=1.0, delta=1e-5, classes=[0, 1], bounds_X=(-3, 3), random_state=0
        ),
    ).fit(X, y)
    model = heml.export(pipe, name="cancer")
    dp = model.dp
    assert dp["private"] is True and dp["epsilon"] == 1.0 and dp["delta"] == 1e-5
    assert dp["neighbouring"] == "replace-one" and "dp-accounting" in dp["accountant"]
    assert any("StandardScaler" in s for s in dp["not_covered"])
    json.dumps(dp, allow_nan=False)
    assert model.bounds.out_of_bounds == "clip"
    path = model.save(tmp_path / "cancer.json")
    loaded = heml.LinearModel.load(path)
    # the exported model (scaler folded in, clipping client-side) predicts like the pipeline
    # wherever the row clip does not bind
    Z = pipe[0].transform(X)
    inside = np.linalg.norm(np.clip(Z, -3, 3), axis=1) <= pipe[-1].data_norm_
    np.testing.assert_allclose(
        loaded.decision_function(X[inside]), pipe.decision_function(X[inside]), atol=1e-8
    )


def test_linear_export():
    X, y = load_diabetes(return_X_y=True)
    reg = DPLinearRegression(
        epsilon=1.0, bounds_X=(-0.2, 0.2), bounds_y=(0, 350), random_state=0
    ).fit(X, y)
    model = heml.export(reg, name="diabetes")
    assert model.task == "regression" and model.dp["bounds"]["y"]["upper"] == 350


# ------------------------------------------------------------------ scikit-learn's checks
# Every check runs on both estimators, at epsilon=inf and at epsilon=1 (fixed seed, and
# delta=1e-3 so the checks' small datasets satisfy delta < 1/n). The only check DP noise
# legitimately fails: check_regressors_train asks for R² > 0.5 after scaling y on ~200 rows
# with five features, which DPLinearRegression at epsilon=1 does not reach. The classifier
# checks' accuracy floors pass. sample_weight is not a fit parameter (a per-record weight
# changes the sensitivity), so sample-weight checks are skipped by scikit-learn itself.
DP_EXPECTED_FAILURES = {
    "check_regressors_train": "R² > 0.5 on ~200 rows: not reachable with DP noise at epsilon=1",
}


# At finite ε the classifier's label set is declared (public): [0, 1, 2] here. The checks that
# train on other labels (strings, regression targets) are refused with a fixed message, and on
# the checks' two-class data the model still has three classes (scores of shape (n, 3)).
_OUTSIDE = "labels outside the declared classes are refused (the label set is public)"
_SHAPE = "two labels seen but three declared: the model keeps the declared three classes"
DP_CLASSIFIER_EXPECTED_FAILURES = {
    "check_dtype_object": _OUTSIDE,
    "check_classifiers_classes": _OUTSIDE,
    "check_classifiers_regression_target": _OUTSIDE + " (fixed message, not the label type)",
    "check_classifiers_train": _SHAPE,
    "check_decision_proba_consistency": _SHAPE,
}


def _expected(est):
    if est.epsilon == INF:
        return {}
    if isinstance(est, DPLogisticRegression):
        return DP_CLASSIFIER_EXPECTED_FAILURES
    return DP_EXPECTED_FAILURES


@parametrize_with_checks(
    [
        DPLogisticRegression(epsilon=INF, random_state=0),
        DPLinearRegression(epsilon=INF, random_state=0),
        DPLogisticRegression(epsilon=1.0, delta=1e-3, classes=[0, 1, 2], random_state=0),
        DPLinearRegression(epsilon=1.0, delta=1e-3, random_state=0),
    ],
    expected_failed_checks=_expected,
    xfail_strict=True,
)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyLeakWarning)
        check(estimator)
