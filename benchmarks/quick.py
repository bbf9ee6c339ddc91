"""Quick benchmark: encrypted scoring vs plaintext scikit-learn, d in {10, 100, 1000}.

For each d: median (and p95) latency of one encrypted prediction through the SDK end to end
(encrypt -> gRPC Predict on loopback -> decrypt -> link), and throughput of a 4096-sample batch
end to end, beside scikit-learn's predict_proba on the same data in the same run.

    .venv/bin/python benchmarks/quick.py [--reps 30] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import heml
from heml.bench import _timed  # wall-clock times of repeated calls, as heml bench takes them


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--batch-reps", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--dims", default="10,100,1000")
    args = ap.parse_args()
    dims = [int(x) for x in args.dims.split(",")]
    rng = np.random.default_rng(0)
    data = {}
    with tempfile.TemporaryDirectory() as folder:
        for d in dims:
            X = rng.normal(size=(4096, d))
            w = rng.normal(size=d) / np.sqrt(d)
            y = (X @ w + 0.3 * rng.normal(size=4096) > 0).astype(int)
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
            heml.export(clf, name=f"d{d}").save(f"{folder}/d{d}.json")
            data[d] = (X, clf)
        rows = []
        with (
            heml.serve(folder, port=0, workers=args.workers) as server,
            heml.Client(f"localhost:{server.port}") as client,
        ):
            for d in dims:
                X, clf = data[d]
                model = client.model(f"d{d}")
                one = X[:1]
                model.predict_proba(one)  # warm-up: keys, caches, connection
                lat = _timed(lambda m=model, o=one: m.predict_proba(o), args.reps)
                single = model.last_call
                model.predict_proba(X)
                thr = _timed(lambda m=model, x=X: m.predict_proba(x), args.batch_reps)
                batch = model.last_call
                err = np.abs(model.predict_proba(X) - clf.predict_proba(X)).max()
                sk1 = _timed(lambda c=clf, o=one: c.predict_proba(o), args.reps)
                skb = _timed(lambda c=clf, x=X: c.predict_proba(x), args.batch_reps)
                rows.append((d, lat, single, thr, batch, err, sk1, skb))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"server workers: {args.workers}; medians of {args.reps} single / "
        f"{args.batch_reps} batch runs"
    )
    head = (
        f"{'d':>5} | {'1 sample ms (p95)':>18} | {'sklearn 1 ms':>12} | {'up/down KiB':>12} | "
        f"{'4096 batch pred/s':>17} | {'sklearn pred/s':>14} | {'B up/value':>10} | max |err|"
    )
    print(head)
    print("-" * len(head))
    for d, lat, single, thr, batch, err, sk1, skb in rows:
        p95 = float(np.percentile(lat, 95)) * 1e3
        up_per_value = batch.bytes_sent / (4096 * d)
        print(
            f"{d:>5} | {statistics.median(lat) * 1e3:>8.2f} ({p95:>6.2f}) | "
            f"{statistics.median(sk1) * 1e3:>12.3f} | "
            f"{single.bytes_sent / 1024:>5.1f}/{single.bytes_received / 1024:<6.1f} | "
            f"{4096 / statistics.median(thr):>17,.0f} | {4096 / statistics.median(skb):>14,.0f} | "
            f"{up_per_value:>10.2f} | {err:.1e}"
        )


if __name__ == "__main__":
    main()
