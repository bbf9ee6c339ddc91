"""DP models end to end: the guarantee travels into the file, GetModel and the client."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import heml
from heml.dp import DPLinearRegression, DPLogisticRegression

from .conftest import assert_scores_close


def test_dp_models_score_the_same_encrypted_as_in_plaintext(tmp_path):
    Xc, yc = load_breast_cancer(return_X_y=True)
    Xw, yw = load_wine(return_X_y=True)
    Xd, yd = load_diabetes(return_X_y=True)
    binary = make_pipeline(
        StandardScaler(),
        DPLogisticRegression(epsilon=1.0, classes=[0, 1], bounds_X=(-3, 3), random_state=0),
    ).fit(Xc, yc)
    multi = make_pipeline(
        StandardScaler(),
        DPLogisticRegression(epsilon=2.0, classes=[0, 1, 2], bounds_X=(-3, 3), random_state=1),
    ).fit(Xw, yw)
    reg = make_pipeline(
        StandardScaler(),
        DPLinearRegression(epsilon=1.0, bounds_X=(-3, 3), bounds_y=(0, 400), random_state=2),
    ).fit(Xd, yd)
    for name, est in (("dp-binary", binary), ("dp-multi", multi), ("dp-reg", reg)):
        heml.export(est, name=name).save(tmp_path / f"{name}.json")
    saved = json.loads((tmp_path / "dp-binary.json").read_text())
    assert saved["dp"]["private"] is True and saved["dp"]["epsilon"] == 1.0
    assert saved["dp"]["neighbouring"] == "replace-one"
    assert saved["bounds"]["out_of_bounds"] == "clip"
    assert saved["preprocessing"]["row_norm"]["max_norm"] > 0

    wild = Xc.copy()
    wild[:5] *= 50  # far outside the bounds: clipped on the client exactly as in training
    with heml.serve(tmp_path, port=0) as server, heml.Client(f"localhost:{server.port}") as c:
        m = c.model("dp-binary")
        assert m.info.is_private and m.info.dp["epsilon"] == 1.0
        assert "ε=1" in m.info.describe_dp() and m.info.dp["not_covered"]
        assert_scores_close(m.decision_function(wild), binary.decision_function(wild))
        assert_scores_close(m.predict_proba(wild), binary.predict_proba(wild))
        np.testing.assert_array_equal(m.predict(Xc), binary.predict(Xc))
        assert_scores_close(c.model("dp-multi").predict_proba(Xw), multi.predict_proba(Xw))
        assert_scores_close(c.model("dp-reg").predict(Xd), reg.predict(Xd))
        listed = {i.name: i for i in c.models()}
        assert listed["dp-reg"].dp["mechanism"]


def test_heml_train_then_serve_then_predict(tmp_path):
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    # features on a public common scale (the CLI takes one --bounds pair for every feature)
    X = (X - X.mean()) / X.std()
    frame = X.assign(label=y)
    csv = tmp_path / "cancer.csv"
    frame.to_csv(csv, index=False)
    models = tmp_path / "models"
    models.mkdir()
    out = models / "cancer.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "heml",
            "train",
            str(csv),
            "--target",
            "label",
            "--epsilon",
            "1",
            "--delta",
            "1e-5",
            "-o",
            str(out),
            "--bounds=-3,3",
            "--seed",
            "0",
            "--classes",
            "0,1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    model = heml.LinearModel.load(out)
    assert model.is_private and model.dp["epsilon"] == 1.0
    with heml.serve(models, port=0) as server, heml.Client(f"localhost:{server.port}") as c:
        remote = c.model("cancer")
        got = remote.predict_proba(pd.DataFrame(X))
    assert_scores_close(got, model.predict_proba(X))
    assert (got.argmax(1) == y.to_numpy()).mean() > 0.85
