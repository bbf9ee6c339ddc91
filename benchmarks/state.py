"""Latency cost of `--state redis://` against the embedded state, one replica each, same run.

    PYTHONPATH=. .venv/bin/python benchmarks/state.py --rounds 5 --calls 200

Starts redis-server (loopback, no persistence) and two `heml serve` replicas (one worker
each) with the same API key file: one embedded, one with `--state redis://…`. The key has a
per-minute quota and a concurrency limit, so every Predict takes a slot (acquire/release) and
charges its bucket. Alternating rounds, the same one-sample prediction is made sequentially
with the SDK on each; reports p50/p90 of one prediction end to end (encrypt, call, decrypt) per
side and the p50 difference (what Redis adds: three round trips per call, acquire, charge,
release).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import heml  # noqa: E402
from heml.server.auth import issue_key  # noqa: E402
from tests.cluster_support import Redis, Replica  # noqa: E402

D = 30


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=200, help="sequential calls per side per round")
    args = p.parse_args()
    from sklearn.linear_model import LinearRegression

    tmp = Path(tempfile.mkdtemp(prefix="heml-state-bench-"))
    models = tmp / "models"
    models.mkdir()
    rng = np.random.default_rng(0)
    reg = LinearRegression()
    reg.coef_, reg.intercept_, reg.n_features_in_ = rng.uniform(-1, 1, D), 0.5, D
    heml.export(reg, name="m", bounds=(-1.0, 1.0)).save(models / "m.json")
    keys = tmp / "keys"
    key = issue_key(keys, "bench", predictions_per_minute=10**12, max_concurrent=64)
    redis = Redis()
    sides = {}
    try:
        sides["embedded"] = Replica(models, None, "--api-keys", str(keys))
        sides["redis"] = Replica(models, None, "--api-keys", str(keys), "--state", redis.url)
        times: dict[str, list[float]] = {name: [] for name in sides}
        x = rng.uniform(-1, 1, size=(1, D))
        clients = {n: heml.Client(r.target, api_key=key, timeout=30) for n, r in sides.items()}
        try:
            remote = {n: c.model("m") for n, c in clients.items()}
            for m in remote.values():  # warm up: plans, connections, scripts loaded
                for _ in range(20):
                    m.predict(x)
            for _ in range(args.rounds):
                for name, m in remote.items():
                    for _ in range(args.calls):
                        m.predict(x)
                        times[name].append(m.last_call.seconds)
        finally:
            for c in clients.values():
                c.close()
        out = {}
        for name, ts in times.items():
            q = statistics.quantiles(ts, n=10)
            out[name] = {"p50_ms": statistics.median(ts) * 1e3, "p90_ms": q[8] * 1e3}
        out["redis_minus_embedded_p50_ms"] = out["redis"]["p50_ms"] - out["embedded"]["p50_ms"]
        out["calls_per_side"] = args.rounds * args.calls
        print(json.dumps(out, indent=2))
    finally:
        for r in sides.values():
            r.stop()
        redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
