"""Tabular data as it comes: ColumnTransformer with imputation, one-hot and scaling, encrypted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, StandardScaler

import heml
from heml.errors import InputError, UnsupportedEstimatorError

from .conftest import assert_scores_close

RNG = np.random.default_rng(11)
N = 800


def _frame(n=N, rng=RNG):
    df = pd.DataFrame(
        {
            "age": rng.normal(45, 12, n),
            "income": rng.lognormal(10, 0.8, n),
            "city": rng.choice(["paris", "rome", "oslo", "lima", "kyiv", None], n),
            "plan": rng.choice(["basic", "plus", "pro"], n, p=[0.6, 0.3, 0.1]),
            "customer_id": np.arange(n),
        }
    )
    df.loc[rng.random(n) < 0.1, "age"] = np.nan
    return df


def _pipeline(encoder, estimator=None):
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    categorical = Pipeline(
        [("impute", SimpleImputer(strategy="most_frequent")), ("onehot", encoder)]
    )
    ct = ColumnTransformer(
        [("num", numeric, ["age", "income"]), ("cat", categorical, ["city", "plan"])]
    )
    return make_pipeline(ct, estimator or LogisticRegression(max_iter=3000))


ENCODERS = {
    "ignore": OneHotEncoder(handle_unknown="ignore"),
    "drop-first": OneHotEncoder(drop="first", handle_unknown="ignore"),
    "infrequent": OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=0.12),
    "error": OneHotEncoder(handle_unknown="error"),
}


@pytest.fixture(scope="module")
def tabular_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tabular")
    df = _frame()
    y = ((df["age"].fillna(45) > 47) ^ (df["city"] == "rome")).astype(int)
    fitted = {}
    for name, enc in ENCODERS.items():
        clf = _pipeline(enc).fit(df, y)
        heml.export(clf, name=f"tab-{name}").save(folder / f"tab-{name}.json")
        fitted[name] = clf
    target = df["income"].to_numpy() * 0.01 + df["age"].fillna(45).to_numpy() * 3
    reg = _pipeline(OneHotEncoder(handle_unknown="ignore"), LinearRegression()).fit(df, target)
    heml.export(reg, name="tab-reg").save(folder / "tab-reg.json")
    fitted["reg"] = reg
    with heml.serve(folder, port=0) as server, heml.Client(f"localhost:{server.port}") as c:
        yield c, fitted


@pytest.mark.parametrize("name", ["ignore", "drop-first", "infrequent"])
def test_encrypted_predict_proba_equals_sklearn_with_unknown_categories(tabular_server, name):
    client, fitted = tabular_server
    clf = fitted[name]
    test = _frame(300, np.random.default_rng(3))
    test.loc[[0, 5, 9], "city"] = "tokyo"  # never seen in training
    test.loc[[1, 2], "age"] = np.nan
    model = client.model(f"tab-{name}")
    assert model.info.input_names == ["age", "income", "city", "plan"]
    assert_scores_close(model.predict_proba(test), clf.predict_proba(test))
    assert_scores_close(model.decision_function(test), clf.decision_function(test))
    np.testing.assert_array_equal(model.predict(test), clf.predict(test))


def test_unknown_category_with_handle_unknown_error_is_refused(tabular_server):
    client, fitted = tabular_server
    test = _frame(20, np.random.default_rng(4))
    model = client.model("tab-error")
    assert_scores_close(model.predict_proba(test), fitted["error"].predict_proba(test))
    test.loc[4, "city"] = "tokyo"
    with pytest.raises(InputError, match="unknown categor.*'tokyo' at row 4"):
        model.predict(test)


def test_regression_on_tabular_data(tabular_server):
    client, fitted = tabular_server
    test = _frame(200, np.random.default_rng(5))
    assert_scores_close(client.model("tab-reg").predict(test), fitted["reg"].predict(test))


def test_plaintext_reference_matches_sklearn_exactly():
    df = _frame()
    y = (df["plan"] == "pro").astype(int)
    for enc in ENCODERS.values():
        clf = _pipeline(enc).fit(df, y)
        model = heml.export(clf, name="t")
        np.testing.assert_allclose(model.predict_proba(df), clf.predict_proba(df), atol=1e-12)


def test_unsupported_column_parts_are_named():
    df = _frame()
    y = (df["plan"] == "pro").astype(int)
    ct = ColumnTransformer(
        [("num", SimpleImputer(add_indicator=True), ["age"]), ("cat", OneHotEncoder(), ["plan"])]
    )
    clf = make_pipeline(ct, LogisticRegression()).fit(df, y)
    with pytest.raises(UnsupportedEstimatorError, match="add_indicator"):
        heml.export(clf, name="t")


def test_minmax_inside_columns_and_numeric_bounds_from_user():
    df = _frame().dropna(subset=["age"])
    y = (df["age"] > 45).astype(int)
    ct = ColumnTransformer(
        [("num", MinMaxScaler(), ["age", "income"]), ("cat", OneHotEncoder(), ["plan"])]
    )
    clf = make_pipeline(ct, LogisticRegression(max_iter=2000)).fit(df, y)
    model = heml.export(clf, name="t")
    np.testing.assert_allclose(model.predict_proba(df), clf.predict_proba(df), atol=1e-12)
    user = heml.export(clf, name="t", bounds=([0, 0], [120, 1e7]))
    assert list(user.bounds.upper[:2]) == [120, 1e7] and list(user.bounds.upper[2:]) == [1, 1, 1]
