"""Load and soak: concurrent clients with a mix of valid and invalid requests.

    .venv/bin/python benchmarks/load.py --seconds 300 --clients 16 --workers 2

Starts a server on a free port, then runs `--clients` concurrent clients (spread over
processes, each with its own connection) for `--seconds`. 80 % of requests are valid
(single predictions and 256-sample batches, pre-encrypted, replies decrypted and checked), 20 %
are invalid (mutated ciphertexts, wrong counts, unknown models). Reports requests done, errors by
code, p50/p99 latency of valid requests and worker RSS over time. Goals: zero failed valid
requests, RSS growth under 10 % from the second fifth of the run (after warm-up) to the last.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import threading
import time

import numpy as np

from heml.bench import _rss_mb  # a process's resident memory (MB), as heml bench reads it


def _client_process(args) -> dict:
    target, keyfile, seconds, threads, seed, X = args
    import grpc

    import heml
    from heml.v1 import heml_pb2 as pb
    from heml.v1 import heml_pb2_grpc

    client = heml.Client(target, keys=keyfile)
    model = client.model("cancer")
    info, codec = model.info, model._codec
    Z = info.bounds.normalize(info.preprocessing.model_features(X, info.bounds))
    requests = []
    for n in (1, 1, 1, 256):
        block = codec.blocks(n)[0]
        req = model._header(block, 0)
        req.ciphertexts.extend(codec.encrypt(Z[block.start : block.stop], block))
        requests.append((block, req))
    results = collections.Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(idx: int) -> None:
        rng = random.Random(seed * 100 + idx)
        ch = grpc.insecure_channel(
            target,
            options=[
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.max_send_message_length", 32 << 20),
            ],
        )
        stub = heml_pb2_grpc.InferenceStub(ch)
        while time.monotonic() < stop:
            block, req = requests[rng.randrange(len(requests))]
            valid = rng.random() < 0.8
            if not valid:
                bad = pb.PredictRequest()
                bad.CopyFrom(req)
                kind = rng.choice(["flip", "count", "model", "short"])
                if kind == "flip":
                    ct = bytearray(bad.ciphertexts[0])
                    ct[rng.randrange(7 * 8)] = 0xFF
                    ct[rng.randrange(len(ct))] ^= 0xFF
                    bad.ciphertexts[0] = bytes(ct)
                elif kind == "count":
                    bad.ciphertexts.append(bad.ciphertexts[0])
                elif kind == "model":
                    bad.model = "nope"
                else:
                    bad.ciphertexts[0] = bad.ciphertexts[0][:100]
                req_to_send = bad
            else:
                req_to_send = req
            t = time.perf_counter()
            try:
                reply = stub.Predict(req_to_send, timeout=60)
                elapsed = time.perf_counter() - t
                if valid:
                    scores = codec.decrypt(list(reply.replies), block)
                    ok = np.isfinite(scores).all()
                    key = "valid: OK" if ok else "valid: WRONG"
                else:
                    key = "invalid: accepted"
            except grpc.RpcError as exc:
                elapsed = time.perf_counter() - t
                key = f"{'valid' if valid else 'invalid'}: {exc.code().name}"
            with lock:
                results[key] += 1
                if valid:
                    latencies.append(elapsed)
        ch.close()

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    client.close()
    return {"results": dict(results), "latencies": latencies}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import heml

    X, y = load_breast_cancer(return_X_y=True)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, y)
    per_process = max(1, args.clients // args.processes)
    with tempfile.TemporaryDirectory() as folder:
        heml.export(clf, name="cancer").save(f"{folder}/cancer.json")
        keyfile = f"{folder}/client.keys"
        heml.Client("127.0.0.1:1", keys=keyfile).close()  # create the key file once
        with heml.serve(folder, port=0, workers=args.workers) as server:
            target = f"127.0.0.1:{server.port}"
            rss: list[tuple[float, float]] = []
            done = threading.Event()
            started = time.monotonic()

            def sample():
                while not done.wait(1.0):
                    rss.append(
                        (time.monotonic() - started, sum(_rss_mb(p) for p in server.worker_pids))
                    )

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            ctx = mp.get_context("spawn")
            with ctx.Pool(args.processes) as pool:
                outs = pool.map(
                    _client_process,
                    [
                        (
                            target,
                            keyfile,
                            args.seconds,
                            per_process,
                            i,
                            X[i * 300 % 269 : i * 300 % 269 + 300],
                        )
                        for i in range(args.processes)
                    ],
                )
            done.set()
            sampler.join()
            alive = all(os.path.exists(f"/proc/{p}") for p in server.worker_pids)
    totals = collections.Counter()
    latencies: list[float] = []
    for o in outs:
        totals.update(o["results"])
        latencies.extend(o["latencies"])
    total = sum(totals.values())
    print(
        f"{args.clients} clients ({args.processes} processes) for {args.seconds:.0f} s against "
        f"{args.workers} worker(s): {total} requests ({total / args.seconds:.0f}/s)"
    )
    for key, count in sorted(totals.items()):
        print(f"  {key:<32} {count}")
    if latencies:
        print(
            f"valid latency p50 {statistics.median(latencies) * 1e3:.1f} ms, "
            f"p99 {np.percentile(latencies, 99) * 1e3:.1f} ms"
        )
    growth = None
    if len(rss) >= 5:
        fifth = max(1, len(rss) // 5)
        # the first fifth is warm-up (caches, keys, allocator pools): compare the second to the last
        first = statistics.mean(v for _, v in rss[fifth : 2 * fifth])
        last = statistics.mean(v for _, v in rss[-fifth:])
        growth = (last - first) / first * 100
        print(
            f"worker RSS: second fifth {first:.0f} MB, last fifth {last:.0f} MB ({growth:+.1f} %)"
        )
        marks = rss[:: max(1, len(rss) // 10)]
        print("  over time: " + ", ".join(f"{t:.0f}s {v:.0f}MB" for t, v in marks))
    failed_valid = sum(c for k, c in totals.items() if k.startswith("valid:") and k != "valid: OK")
    print(f"failed valid requests: {failed_valid}; workers alive: {'yes' if alive else 'NO'}")
    ok = failed_valid == 0 and alive and (growth is None or growth < 10)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
