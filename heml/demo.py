"""heml demo: train a model, serve it, score the test split encrypted, report the numbers."""

from __future__ import annotations

import importlib.util
import statistics
import sys
import tempfile
import time

import numpy as np


def _train(X_public, y_public, X_train, y_train, private: bool, epsilon: float):
    """Scaler from a separate public split, so preprocessing leaks nothing about X_train."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X_public)
    if private and importlib.util.find_spec("heml.dp") is not None:
        from .dp import DPLogisticRegression

        # features clipped to ±3 public standard deviations, then (ε, δ)-DP training
        # the label set comes from the public split too: reading it from y_train would leak
        dp = DPLogisticRegression(
            epsilon=epsilon, delta=1e-5, classes=np.unique(y_public), bounds_X=(-3.0, 3.0)
        )
        dp.fit(scaler.transform(X_train), y_train)
        return make_pipeline(scaler, dp), True
    # not private anyway: fit the scaler on every non-test sample
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    import pandas as pd

    return clf.fit(pd.concat([X_public, X_train]), pd.concat([y_public, y_train])), False


def run_demo(*, epsilon: float = 1.0, private: bool = True, workers: int = 1) -> int:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    import heml

    out = sys.stdout
    started = time.perf_counter()
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    X_rest, X_test, y_rest, y_test = train_test_split(
        X, y, test_size=0.3, random_state=0, stratify=y
    )
    X_train, X_public, y_train, y_public = train_test_split(
        X_rest, y_rest, test_size=0.2, random_state=0, stratify=y_rest
    )
    clf, is_dp = _train(X_public, y_public, X_train, y_train, private, epsilon)
    model = heml.export(clf, name="cancer")
    if is_dp:
        print(f"trained   {model!r} on {len(X_train)} private samples (breast cancer)", file=out)
        print(
            f"          scaler fitted on a separate public split ({len(X_public)} rows)", file=out
        )
    else:
        n_fit = len(X_train) + len(X_public)
        print(f"trained   {model!r} on {n_fit} samples (breast cancer)", file=out)
    if private and not is_dp:
        print(
            "          (heml.dp is not installed: trained without differential privacy)", file=out
        )

    with tempfile.TemporaryDirectory() as folder:
        model.save(f"{folder}/cancer.json")
        with heml.serve(folder, port=0, workers=workers) as server:
            print(f"serving   on {server.address} ({workers} worker process(es))", file=out)
            with heml.Client(f"localhost:{server.port}") as client:
                remote = client.model("cancer")
                proba = remote.predict_proba(X_test)
                batch = remote.last_call
                lat = []
                for i in range(20):
                    remote.predict_proba(X_test.iloc[i : i + 1])
                    lat.append(remote.last_call.seconds)
                single = remote.last_call
                info = remote.info

    plain = model.predict_proba(X_test)
    err = float(np.abs(proba - plain).max())
    acc = float((model.classes[proba.argmax(axis=1)] == y_test.to_numpy()).mean())
    plain_acc = float((model.predict(X_test) == y_test.to_numpy()).mean())
    print("", file=out)
    print(f"agreement with plaintext   max |p_enc - p_plain| = {err:.2e}", file=out)
    print(f"accuracy (encrypted)       {acc:.3f}   (plaintext model: {plain_acc:.3f})", file=out)
    print(
        f"one prediction             {statistics.median(lat) * 1e3:.2f} ms median of 20 "
        f"({single.bytes_sent / 1024:.1f} KiB up, {single.bytes_received / 1024:.1f} KiB down)",
        file=out,
    )
    print(
        f"batch of {len(X_test)}              {batch.seconds * 1e3:.1f} ms = "
        f"{len(X_test) / batch.seconds:,.0f} predictions/s "
        f"({batch.bytes_sent / 1024:.0f} KiB up, {batch.bytes_received / 1024:.0f} KiB down)",
        file=out,
    )
    print(f"DP guarantee               {info.describe_dp()}", file=out)
    if info.is_private:
        for item in info.dp.get("not_covered", []):
            print(f"  not covered: {item}", file=out)
    print(
        "what the server saw        ciphertexts only (CKKS, 128-bit parameters); "
        "keys never left this process",
        file=out,
    )
    print(f"done in {time.perf_counter() - started:.1f} s", file=out)
    return 0
