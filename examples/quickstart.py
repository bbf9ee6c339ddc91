"""Export a scikit-learn model, serve it, and score encrypted features against it."""

import tempfile

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import heml

X, y = load_breast_cancer(return_X_y=True, as_frame=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)
clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X_train, y_train)

with tempfile.TemporaryDirectory() as models:
    heml.export(clf, name="cancer").save(f"{models}/cancer.json")  # JSON, never pickle
    with heml.serve(models, port=0) as server, heml.Client(f"localhost:{server.port}") as client:
        model = client.model("cancer")  # keys are generated here and never leave
        proba = model.predict_proba(X_test)  # encrypt -> server computes on ciphertexts -> decrypt
        stats = model.last_call
        model.predict_proba(X_test.iloc[:1])
        single = model.last_call

expected = clf.predict_proba(X_test)
print(f"model:              {model}")
print(f"max |encrypted - plaintext| probability: {np.abs(proba - expected).max():.2e}")
print(f"accuracy (encrypted): {(proba.argmax(1) == y_test.to_numpy()).mean():.3f}")
print(
    f"batch of {len(X_test)}: {stats.seconds * 1e3:.1f} ms, "
    f"{stats.bytes_sent / 1024:.0f} KiB up, {stats.bytes_received / 1024:.0f} KiB down"
)
print(
    f"one sample: {single.seconds * 1e3:.2f} ms, "
    f"{single.bytes_sent / 1024:.1f} KiB up, {single.bytes_received / 1024:.1f} KiB down"
)
