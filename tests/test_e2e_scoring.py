"""End to end over a real gRPC server on loopback, real TenSEAL ciphertexts, real models."""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import pytest

import heml
from heml.errors import InputError, ModelNotFound, OutOfBoundsError

from .conftest import assert_scores_close


def test_binary_classifier_matches_sklearn(client, cancer):
    X, _y, clf = cancer
    model = client.model("cancer")
    assert model.info.task == "binary" and model.info.n_features == 30
    assert_scores_close(model.decision_function(X), clf.decision_function(X))
    proba = model.predict_proba(X)
    assert proba.shape == (len(X), 2) and proba.dtype == np.float64
    assert_scores_close(proba, clf.predict_proba(X))
    pred = model.predict(X)
    np.testing.assert_array_equal(pred, clf.predict(X))
    assert pred.dtype == clf.predict(X).dtype


def test_multiclass_with_string_labels_matches_sklearn(client, wine):
    X, _labels, clf = wine
    model = client.model("wine")
    assert list(model.classes_) == list(clf.classes_)
    assert_scores_close(model.decision_function(X), clf.decision_function(X))
    assert_scores_close(model.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(model.predict(X), clf.predict(X))


def test_raw_unscaled_features_with_large_outputs(client, diabetes_raw):
    X, _y, reg = diabetes_raw
    model = client.model("diabetes-raw")
    want = reg.predict(X)
    assert np.abs(X).max() > 1e3 and np.abs(want).max() > 1e4
    got = model.predict(X)
    assert got.shape == want.shape
    assert_scores_close(got, want)


@pytest.mark.parametrize("n", [1, 2, 37, 4096, 4097, 20_000])
def test_any_batch_size(client, cancer, n):
    X, _y, clf = cancer
    rng = np.random.default_rng(n)
    Xn = X.iloc[rng.integers(0, len(X), size=n)]
    model = client.model("cancer")
    assert_scores_close(model.decision_function(Xn), clf.decision_function(Xn))
    stats = model.last_call
    assert stats.samples == n and stats.bytes_sent > 0 and stats.bytes_received > 0


def test_pandas_columns_by_name_and_numpy_by_position(client, cancer):
    X, _y, clf = cancer
    model = client.model("cancer")
    shuffled = X[list(reversed(X.columns))].iloc[:50].assign(patient_id=np.arange(50))
    assert_scores_close(model.predict_proba(shuffled), clf.predict_proba(X.iloc[:50]))
    with pytest.raises(InputError, match="missing 1 column"):
        model.predict(X.drop(columns=["mean area"]))
    with pytest.raises(InputError, match="X has 3 features"):
        model.predict(np.zeros((2, 3)))


def test_out_of_bounds_inputs_are_rejected_before_encryption(client, cancer):
    X, _y, _clf = cancer
    model = client.model("cancer")
    wild = X.iloc[:3].copy()
    wild.iloc[1, 4] = 1e9
    with pytest.raises(OutOfBoundsError, match="mean smoothness"):
        model.predict(wild)


def test_large_d_block_is_split_across_messages(tmp_path):
    """A COLUMN block at d=600 is ~17 MB: it must stream in messages under the size limit."""
    rng = np.random.default_rng(3)
    d, n = 600, 4096
    W, b = rng.normal(size=(2, d)), rng.normal(size=2)
    X = rng.uniform(-1, 1, size=(n, d))
    from sklearn.linear_model import LinearRegression

    reg = LinearRegression().fit(X, X @ W.T + b)
    heml.export(reg, name="wide", bounds=(-1.0, 1.0)).save(tmp_path / "wide.json")
    with heml.serve(tmp_path, port=0) as server, heml.Client(f"localhost:{server.port}") as c:
        model = c.model("wide")
        got = model.predict(X, layout="column")
        stats = model.last_call
    assert_scores_close(got, reg.predict(X))
    assert stats.bytes_sent > 16 * (1 << 20)  # more than four 4 MiB messages went up


def test_keys_never_leave_and_can_be_persisted(server, cancer, tmp_path):
    X, _y, clf = cancer
    path = tmp_path / "client.keys"
    with heml.Client(f"localhost:{server.port}", keys=path) as c:
        model = c.model("cancer")
        first = model.decision_function(X.iloc[:20])
        params = next(iter(model.info.plans.values())).params
        s_first = model._codec.keys.get(params).s
    assert (os.stat(path).st_mode & 0o777) == 0o600
    written = path.read_bytes()
    with heml.Client(f"localhost:{server.port}", keys=path) as c:
        model = c.model("cancer")
        second = model.decision_function(X.iloc[:20])
        np.testing.assert_array_equal(model._codec.keys.get(params).s, s_first)  # same key
    assert path.read_bytes() == written  # reused, not regenerated
    assert_scores_close(first, clf.decision_function(X.iloc[:20]))
    assert_scores_close(second, first)


def test_model_listing_metadata_and_unknown_model(client):
    names = {m.name for m in client.models()}
    assert names == {"cancer", "wine", "diabetes-raw"}  # broken.json is skipped
    info = client.model("cancer").info
    assert info.server.protocol_version == heml.PROTOCOL_VERSION
    assert not info.is_private and "not private" in info.describe_dp()
    for plan in info.plans.values():
        assert plan.params.q_bits == 54 and plan.error_bound <= info.tolerance
    with pytest.raises(ModelNotFound, match="no model named 'nope'"):
        client.model("nope")
    with pytest.raises(ModelNotFound, match="no version 7"):
        client.model("cancer", version=7)


def test_broken_model_file_is_reported_by_name(server):
    assert "broken.json" in server.load_errors
    assert "lacks field" in server.load_errors["broken.json"]
    assert server.worker_pids and os.getpid() not in server.worker_pids
    assert server.pid != os.getpid()


def test_unreachable_server_fails_fast_with_a_clear_error():
    started = time.monotonic()
    with (
        heml.Client("localhost:1", timeout=3, retries=2) as c,
        pytest.raises(heml.ServerUnavailable),
    ):
        c.models()
    assert time.monotonic() - started < 10


def test_pandas_dataframe_with_extra_columns_in_any_order(client, wine):
    X, _labels, clf = wine
    cols = [f"x{i}" for i in range(X.shape[1])]
    df = pd.DataFrame(X, columns=cols)[cols[::-1]]
    model = client.model("wine")
    assert model.info.input_names == cols
    assert_scores_close(model.predict_proba(df), clf.predict_proba(X))
