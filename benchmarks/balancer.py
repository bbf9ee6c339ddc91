"""Throughput and latency through nginx (deploy/nginx) against the same replicas direct.

    PYTHONPATH=. .venv/bin/python benchmarks/balancer.py --replicas 3 --rounds 5 --seconds 4

Starts `--replicas` `heml serve` processes (one worker each) and nginx in front of them, all
on 127.0.0.1 (needs the nginx binary: `make test` installs it as root). Then, alternating in
the same run so both sides see the same machine load:

* throughput: `--channels` gRPC channels send pre-encrypted Predict calls of `--samples`
  samples back to back for `--seconds`; direct, channel i goes to replica i mod N (an ideal
  client-side spread); through nginx, all go to nginx. Median predictions/s over `--rounds`.
* latency: one prediction (1 sample) with the SDK, encryption and decryption included,
  `--latency-calls` sequential calls per round; p50 over all rounds.

Goal (issue 14): throughput through nginx ≥ 0.85 × direct.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import heml  # noqa: E402
from heml.bench import codec_normalize  # noqa: E402
from tests.cluster_support import Nginx, Replica  # noqa: E402

D = 30


def _model(folder: Path):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, D))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    heml.export(LogisticRegression(max_iter=500).fit(X, y), name="m", bounds=(-6.0, 6.0)).save(
        folder / "m.json"
    )


def _request(target: str, samples: int):
    """One pre-encrypted Predict request (the SDK's own encoding) and its sample count."""
    with heml.Client(target) as client:
        model = client.model("m")
        X = np.random.default_rng(1).uniform(-3, 3, size=(samples, D))
        block = model._codec.blocks(samples)[0]
        request = model._header(block, 0)
        cts = model._codec.encrypt(codec_normalize(model, X[: block.n]), block)
        request.ciphertexts.extend(cts)
        request.total_ciphertexts = len(cts)
        return request, block.n


def throughput(targets: list[str], request, n: int, seconds: float) -> float:
    """Predictions/s with one channel (own connection) per entry of `targets`."""
    import grpc

    from heml.v1 import heml_pb2_grpc

    done: list[int] = []
    failed: list[BaseException] = []
    barrier = threading.Barrier(len(targets) + 1)
    stop = [0.0]

    def run(target: str) -> None:
        options = [
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.use_local_subchannel_pool", 1),
        ]
        with grpc.insecure_channel(target, options=options) as ch:
            stub = heml_pb2_grpc.InferenceStub(ch)
            stub.Predict(request, timeout=60)  # connected and warm
            barrier.wait()
            count = 0
            try:
                while time.monotonic() < stop[0]:
                    stub.Predict(request, timeout=60)
                    count += n
            except grpc.RpcError as exc:
                failed.append(exc)
            done.append(count)

    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    for th in threads:
        th.start()
    stop[0] = time.monotonic() + 3600
    barrier.wait()
    start = time.monotonic()
    stop[0] = start + seconds
    for th in threads:
        th.join()
    if failed:
        raise RuntimeError(f"{len(failed)} call(s) failed: {failed[0]}")
    return sum(done) / (time.monotonic() - start)


def latencies(target: str, calls: int) -> list[float]:
    x = np.random.default_rng(2).uniform(-3, 3, size=(1, D))
    out = []
    with heml.Client(target) as client:
        model = client.model("m")
        model.decision_function(x)
        for _ in range(calls):
            t = time.perf_counter()
            model.decision_function(x)
            out.append(time.perf_counter() - t)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--channels", type=int, default=6, help="concurrent channels (default 6)")
    p.add_argument("--samples", type=int, default=256, help="samples per call (default 256)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=4.0, help="per side per round")
    p.add_argument("--latency-calls", type=int, default=40, help="per side per round")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="heml-bench-balancer-"))
    _model(folder)
    replicas: list[Replica] = []
    nginx = None
    try:
        replicas.extend(Replica(folder) for _ in range(args.replicas))
        nginx = Nginx([r.target for r in replicas])
        request, n = _request(replicas[0].target, args.samples)
        direct_targets = [replicas[i % len(replicas)].target for i in range(args.channels)]
        via_targets = [nginx.target] * args.channels
        tput = {"direct": [], "nginx": []}
        lat = {"direct": [], "nginx": []}
        for r in range(args.rounds):
            # alternate which side goes first so drift in machine load hits both alike
            order = ("direct", "nginx") if r % 2 == 0 else ("nginx", "direct")
            for side in order:
                targets = direct_targets if side == "direct" else via_targets
                tput[side].append(throughput(targets, request, n, args.seconds))
                lat[side].extend(
                    latencies(
                        replicas[r % len(replicas)].target if side == "direct" else nginx.target,
                        args.latency_calls,
                    )
                )
            print(
                f"round {r + 1}: direct {tput['direct'][-1]:8.0f}/s  "
                f"nginx {tput['nginx'][-1]:8.0f}/s",
                file=sys.stderr,
            )
        result = {
            "replicas": args.replicas,
            "channels": args.channels,
            "samples_per_call": n,
            "rounds": args.rounds,
            "direct_predictions_per_s": statistics.median(tput["direct"]),
            "nginx_predictions_per_s": statistics.median(tput["nginx"]),
            "direct_p50_ms": 1000 * statistics.median(lat["direct"]),
            "nginx_p50_ms": 1000 * statistics.median(lat["nginx"]),
        }
        result["ratio"] = result["nginx_predictions_per_s"] / result["direct_predictions_per_s"]
        result["goal_met"] = result["ratio"] >= 0.85
    finally:
        if nginx is not None:
            nginx.stop()
        for r in replicas:
            r.stop()
    verdict = "met" if result["goal_met"] else "NOT met"
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(
            f"{args.replicas} replicas, {args.channels} channels, {n} samples/call, "
            f"medians of {args.rounds} rounds\n"
            f"throughput  direct {result['direct_predictions_per_s']:.0f}/s  "
            f"nginx {result['nginx_predictions_per_s']:.0f}/s  "
            f"ratio {result['ratio']:.2f} (goal ≥ 0.85: {verdict})\n"
            f"p50 latency of one prediction  direct {result['direct_p50_ms']:.1f} ms  "
            f"nginx {result['nginx_p50_ms']:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
