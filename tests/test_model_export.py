"""heml.export and LinearModel: every supported estimator matches scikit-learn in plaintext."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import (
    ElasticNet,
    GammaRegressor,
    Lasso,
    LinearRegression,
    LogisticRegression,
    PoissonRegressor,
    Ridge,
    RidgeClassifier,
    SGDClassifier,
    SGDRegressor,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, RobustScaler, StandardScaler
from sklearn.svm import LinearSVC

import heml
from heml.errors import (
    InputError,
    ModelError,
    OutOfBoundsError,
    UnsupportedEstimatorError,
)

RNG = np.random.default_rng(0)
Xc, yc = make_classification(n_samples=300, n_features=8, n_informative=5, random_state=0)
Xm, ym = make_classification(
    n_samples=300, n_features=8, n_informative=6, n_classes=4, random_state=1
)
Xr, yr = make_regression(n_samples=300, n_features=8, noise=5.0, random_state=2)
BOUNDS = (-20.0, 20.0)

CLASSIFIERS = [
    ("logreg-binary", LogisticRegression(max_iter=1000), Xc, yc),
    ("logreg-multinomial", LogisticRegression(max_iter=1000), Xm, ym),
    ("sgd-log-binary", SGDClassifier(loss="log_loss", random_state=0), Xc, yc),
    ("sgd-log-ovr", SGDClassifier(loss="log_loss", random_state=0), Xm, ym),
    ("sgd-huber-binary", SGDClassifier(loss="modified_huber", random_state=0), Xc, yc),
    ("sgd-huber-multi", SGDClassifier(loss="modified_huber", random_state=0), Xm, ym),
]
REGRESSORS = [
    ("linear", LinearRegression(), Xr, yr),
    ("ridge", Ridge(alpha=1.0), Xr, yr),
    ("lasso", Lasso(alpha=0.5), Xr, yr),
    ("elasticnet", ElasticNet(alpha=0.5), Xr, yr),
    ("sgd-regressor", SGDRegressor(random_state=0), Xr, yr),
    ("multioutput", LinearRegression(), Xr, np.c_[yr, 2 * yr + 1]),
    ("poisson", PoissonRegressor(max_iter=300), Xr / 100, np.abs(yr) / 100),
    ("gamma", GammaRegressor(max_iter=300), Xr / 100, np.abs(yr) / 100 + 1),
]


@pytest.mark.parametrize("name,est,X,y", CLASSIFIERS, ids=[c[0] for c in CLASSIFIERS])
def test_classifier_plaintext_reference_matches_sklearn(name, est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    model = heml.export(est, name=name, bounds=BOUNDS)
    np.testing.assert_allclose(
        model.decision_function(X), est.decision_function(X), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(model.predict_proba(X), est.predict_proba(X), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(model.predict(X), est.predict(X))


@pytest.mark.parametrize("name,est,X,y", REGRESSORS, ids=[r[0] for r in REGRESSORS])
def test_regressor_plaintext_reference_matches_sklearn(name, est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    model = heml.export(est, name=name, bounds=(X.min(0), X.max(0)))
    got = model.predict(X)
    assert got.shape == est.predict(X).shape
    np.testing.assert_allclose(got, est.predict(X), rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize(
    "scaler", [StandardScaler(), MinMaxScaler(), MaxAbsScaler(), RobustScaler()]
)
def test_scalers_are_folded_into_the_weights(scaler):
    pipe = make_pipeline(scaler, LogisticRegression(max_iter=1000)).fit(Xm, ym)
    model = heml.export(pipe, name="folded")
    assert model.n_features == Xm.shape[1]
    np.testing.assert_allclose(model.predict_proba(Xm), pipe.predict_proba(Xm), atol=1e-12)
    np.testing.assert_allclose(model.decision_function(Xm), pipe.decision_function(Xm), atol=1e-10)


def test_minmax_clip_becomes_client_side_clipping():
    pipe = make_pipeline(MinMaxScaler(clip=True), LinearRegression()).fit(Xr, yr)
    model = heml.export(pipe, name="clipped")
    assert model.bounds.out_of_bounds == "clip"
    wild = Xr * 3
    np.testing.assert_allclose(model.predict(wild), pipe.predict(wild), rtol=1e-10, atol=1e-8)


def test_string_and_bool_classes_round_trip(tmp_path):
    labels = np.array(["cat", "dog", "emu", "yak"])[ym]
    clf = LogisticRegression(max_iter=1000).fit(Xm, labels)
    model = heml.export(clf, name="animals", bounds=BOUNDS)
    path = model.save(tmp_path / "animals.json")
    back = heml.LinearModel.load(path)
    assert back.classes.dtype == clf.classes_.dtype
    np.testing.assert_array_equal(back.predict(Xm), clf.predict(Xm))
    boolclf = LogisticRegression().fit(Xc, yc.astype(bool))
    bmodel = heml.LinearModel.load(
        heml.export(boolclf, name="b", bounds=BOUNDS).save(tmp_path / "b.json")
    )
    assert bmodel.predict(Xc).dtype == np.bool_
    np.testing.assert_array_equal(bmodel.predict(Xc), boolclf.predict(Xc))


def test_save_load_is_json_and_lossless(tmp_path, cancer):
    X, _, clf = cancer
    model = heml.export(clf, name="cancer", version=3)
    path = model.save(tmp_path / "m.json")
    data = json.loads(path.read_text())
    assert data["schema"] == "heml.linear-model" and data["schema_version"] == 1
    assert data["dp"] == {} and data["version"] == 3
    back = heml.LinearModel.load(path)
    np.testing.assert_array_equal(back.coef, model.coef)
    np.testing.assert_array_equal(back.intercept, model.intercept)
    assert back.feature_names == list(X.columns)
    assert back.fingerprint() == model.fingerprint()
    assert not path.read_bytes().startswith(b"\x80")  # never pickle


def test_pandas_columns_are_matched_by_name(cancer):
    X, _, clf = cancer
    model = heml.export(clf, name="cancer")
    shuffled = X[list(reversed(X.columns))].assign(extra=1.0)
    np.testing.assert_allclose(model.predict_proba(shuffled), clf.predict_proba(X), atol=1e-12)
    with pytest.raises(InputError, match="missing 2 column"):
        model.predict(X.drop(columns=["mean radius", "worst area"]))


def test_wrong_feature_count_and_non_finite_values_are_clear_errors(cancer):
    X, _, clf = cancer
    model = heml.export(clf, name="cancer")
    with pytest.raises(InputError, match="X has 29 features, but the model expects 30"):
        model.predict(X.to_numpy()[:, :29])
    bad = X.to_numpy().copy()
    bad[3, 2] = np.nan
    with pytest.raises(InputError, match="missing \\(NaN\\)"):
        model.predict(bad)


def test_out_of_bounds_error_names_the_feature_and_clip_policy_clips():
    reg = LinearRegression().fit(Xr, yr)
    model = heml.export(reg, name="r", bounds=(-1.0, 1.0))
    with pytest.raises(OutOfBoundsError, match="outside the model's declared bounds"):
        model.predict(Xr)
    clipped = heml.export(reg, name="r", bounds=(-1.0, 1.0), out_of_bounds="clip")
    np.testing.assert_allclose(clipped.predict(Xr), reg.predict(np.clip(Xr, -1, 1)))


def test_plain_estimator_without_bounds_explains_what_to_pass():
    reg = LinearRegression().fit(Xr, yr)
    with pytest.raises(ModelError, match="margin around the training range") as exc:
        heml.export(reg, name="r")
    # the suggestion in the message works on rows outside the training range (issue 15.5)
    lo, hi = Xr.min(0), Xr.max(0)
    suggested = heml.export(
        reg, name="r", bounds=(lo - (hi - lo), hi + (hi - lo)), out_of_bounds="clip"
    )
    far = np.vstack([hi + 0.5 * (hi - lo), lo - 5 * (hi - lo)])
    assert np.all(np.isfinite(suggested.predict(far)))
    assert "out_of_bounds='clip'" in str(exc.value)


def test_unsupported_estimators_get_a_clear_error():
    rf = RandomForestClassifier(n_estimators=3).fit(Xc, yc)
    with pytest.raises(UnsupportedEstimatorError, match="only linear models"):
        heml.export(rf, name="rf")
    with pytest.raises(ModelError, match="not fitted"):
        heml.export(LogisticRegression(), name="unfitted")


@pytest.mark.parametrize("est", [LinearSVC(), RidgeClassifier(), SGDClassifier(loss="hinge")])
def test_margin_classifiers_predict_but_have_no_probabilities(est):
    est.fit(Xc, yc)
    model = heml.export(est, name="margin", bounds=BOUNDS)
    np.testing.assert_array_equal(model.predict(Xc), est.predict(Xc))
    np.testing.assert_allclose(model.decision_function(Xc), est.decision_function(Xc), atol=1e-10)
    with pytest.raises(AttributeError, match="no probability estimates"):
        model.predict_proba(Xc)


def test_artifact_validation_lists_problems(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"schema": "heml.linear-model", "schema_version": 99}))
    with pytest.raises(ModelError, match="schema_version 99"):
        heml.LinearModel.load(p)
    p.write_text(json.dumps({"schema": "heml.linear-model", "schema_version": 1}))
    with pytest.raises(ModelError, match="lacks field"):
        heml.LinearModel.load(p)
    p.write_text("\x80\x04pickle")
    with pytest.raises(ModelError, match="not valid JSON"):
        heml.LinearModel.load(p)
    with pytest.raises(ModelError, match="model name"):
        heml.export(LinearRegression().fit(Xr, yr), name="../etc/passwd", bounds=BOUNDS)


def test_dataframe_feature_names_flow_into_the_model():
    df = pd.DataFrame(Xr, columns=[f"f{i}" for i in range(Xr.shape[1])])
    reg = LinearRegression().fit(df, yr)
    model = heml.export(reg, name="named", bounds=BOUNDS)
    assert model.feature_names == list(df.columns)
