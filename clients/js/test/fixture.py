"""Python side of the Node client's end-to-end test (run by test/e2e.test.ts).

    python fixture.py prepare DIR        models, inputs, TLS certificates and an API key in DIR
    python fixture.py score PORT DIR     the Python SDK's scores for them -> DIR/python.json

Models: breast cancer (binary, d = 30), wine (multiclass with string labels, d = 13) and
diabetes (regression, d = 10), all with scikit-learn pipelines exported by heml.export, and a
DP logistic regression on breast cancer (clipping bounds and row-norm clipping).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def prepare(out: Path) -> None:
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import heml
    from heml.server.auth import issue_key
    from tests.security_support import TestCA

    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(16)
    cases = {}
    for name, (X, y), est in (
        ("cancer", load_breast_cancer(return_X_y=True), LogisticRegression(max_iter=2000)),
        ("wine", load_wine(return_X_y=True), LogisticRegression(max_iter=2000)),
        ("diabetes", load_diabetes(return_X_y=True), LinearRegression()),
    ):
        if name == "wine":
            y = np.array(["barolo", "grignolino", "barbera"])[y]
        pipe = make_pipeline(StandardScaler(), est).fit(X, y)
        heml.export(pipe, name=name).save(models / f"{name}.json")
        # wine: 200 rows, so ROW packs them in two sample groups of 157 with one class per reply
        size = 200 if name == "wine" else 40
        rows = X[rng.choice(len(X), size=size, replace=size > len(X))]
        if name == "diabetes":
            plain = pipe.predict(rows).reshape(-1, 1)
        else:
            plain = pipe.decision_function(rows).reshape(len(rows), -1)
        cases[name] = {"x": rows.tolist(), "plaintext_scores": plain.tolist()}
    # a DP model: its bounds clip (out_of_bounds="clip") and its rows are norm-clipped
    from heml.dp import DPLogisticRegression

    X, y = load_breast_cancer(return_X_y=True)
    dp = make_pipeline(
        StandardScaler(),
        DPLogisticRegression(epsilon=1.0, classes=[0, 1], bounds_X=(-3, 3), random_state=0),
    ).fit(X, y)
    exported = heml.export(dp, name="dp-cancer")
    exported.save(models / "dp-cancer.json")
    rows = np.vstack([X[rng.choice(len(X), size=39, replace=False)], X.max(axis=0) * 2])
    cases["dp-cancer"] = {"x": rows.tolist(), "plaintext_scores": exported.scores(rows).tolist()}
    (out / "cases.json").write_text(json.dumps(cases))
    ca = TestCA("heml-js-test-ca")
    cert, key = ca.issue("localhost", server=True)
    (out / "ca.pem").write_bytes(ca.pem)
    (out / "server.pem").write_bytes(cert)
    (out / "server.key").write_bytes(key)
    (out / "api_key.txt").write_text(issue_key(out / "api-keys.json", "js-test"))


def score(port: int, out: Path) -> None:
    import heml

    cases = json.loads((out / "cases.json").read_text())
    result = {}
    with heml.Client(f"127.0.0.1:{port}") as client:
        for name, case in cases.items():
            model = client.model(name)
            X = np.array(case["x"])
            entry = {}
            for layout in ("row", "column"):
                entry[layout] = model.scores(X, layout=layout).tolist()
            entry["predict"] = model.predict(X).tolist()
            entry["error_bound"] = {k: p.error_bound for k, p in model.info.plans.items()}
            if name == "cancer":  # one prediction at d = 30, the README's latency
                x1 = X[:1]
                model.scores(x1)
                times = []
                for _ in range(20):
                    t = time.perf_counter()
                    model.scores(x1)
                    times.append(time.perf_counter() - t)
                entry["latency_ms"] = sorted(times)[len(times) // 2] * 1000
            result[name] = entry
    (out / "python.json").write_text(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(Path(sys.argv[2]))
    elif sys.argv[1] == "score":
        score(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        raise SystemExit(f"unknown command {sys.argv[1]!r}: prepare DIR | score PORT DIR")
