"""Fuzz a live heml server for a set time; report inputs tried and outcomes by status code.

    .venv/bin/python benchmarks/fuzz.py --seconds 60 [--workers 2]

Starts its own server on a free port with a demo model, then sends random, truncated,
bit-flipped, re-parameterized (other N), wrong-count and garbage-protobuf requests, plus a
valid request every 50 inputs. The run fails (exit 1) if any answer is INTERNAL/UNKNOWN, a
valid request fails, or a worker process dies.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import sys
import tempfile
import time

import grpc
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import heml
from heml.he.scoring import Block
from heml.v1 import heml_pb2 as pb
from heml.v1 import heml_pb2_grpc

BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


def mutate(rng: random.Random, ct: bytes) -> bytes:
    kind = rng.choice(["truncate", "extend", "flip", "random", "other-n", "zeros", "ones"])
    if kind == "truncate":
        return ct[: rng.randrange(len(ct))]
    if kind == "extend":
        return ct + os.urandom(rng.randrange(1, 65))
    if kind == "flip":
        buf = bytearray(ct)
        for _ in range(rng.randrange(1, 17)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        return bytes(buf)
    if kind == "random":
        return os.urandom(len(ct))
    if kind == "other-n":
        return os.urandom(rng.choice([7 * 4096 + 64, 7 * 1024 + 64, 7 * 8192 + 64]))
    return (b"\0" if kind == "zeros" else b"\xff") * len(ct)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    X, y = load_breast_cancer(return_X_y=True)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, y)
    outcomes: collections.Counter = collections.Counter()
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        heml.export(clf, name="cancer").save(f"{folder}/cancer.json")
        with heml.serve(folder, port=0, workers=args.workers) as server:
            target = f"127.0.0.1:{server.port}"
            client = heml.Client(target)
            model = client.model("cancer")
            info, codec = model.info, model._codec
            Z = info.bounds.normalize(info.preprocessing.model_features(X[:3], info.bounds))
            row, col = Block(0, 1, "row", 1), Block(0, 3, "column", 0)
            valid = {"row": codec.encrypt(Z[:1], row), "column": codec.encrypt(Z, col)}
            ch = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 32 << 20)])
            stub = heml_pb2_grpc.InferenceStub(ch)
            raw = ch.unary_unary("/heml.v1.Inference/Predict")
            deadline = time.monotonic() + args.seconds
            tried = 0
            while time.monotonic() < deadline:
                tried += 1
                if tried % 50 == 0:
                    req = pb.PredictRequest(
                        model="cancer",
                        layout=pb.ROW,
                        n=1,
                        samples_per_ciphertext=1,
                        ciphertexts=valid["row"],
                    )
                    try:
                        reply = stub.Predict(req, timeout=30)
                        codec.decrypt(list(reply.replies), row)
                        outcomes["valid: OK"] += 1
                    except grpc.RpcError as exc:
                        failures.append(f"valid request failed: {exc.code().name} {exc.details()}")
                    continue
                case = rng.choice(["ciphertext", "fields", "protobuf"])
                try:
                    if case == "protobuf":
                        raw(os.urandom(rng.randrange(0, 2048)), timeout=30)
                    else:
                        layout = rng.choice(["row", "column"])
                        cts = list(valid[layout])
                        if case == "ciphertext":
                            i = rng.randrange(len(cts))
                            cts[i] = mutate(rng, cts[i])
                        else:
                            cts = cts[: rng.randrange(len(cts) + 1)] * rng.randrange(1, 3)
                        fields = case == "fields"
                        req = pb.PredictRequest(
                            model=rng.choice(["cancer", "cancer", "", "nope"])
                            if fields
                            else "cancer",
                            version=rng.choice([0, 0, 1, 2, 2**32 - 1]) if fields else 0,
                            layout=rng.choice([pb.ROW, pb.COLUMN, 0, 9])
                            if case == "fields"
                            else (pb.ROW if layout == "row" else pb.COLUMN),
                            n=rng.choice([1, 3, 0, 5000, 2**32 - 1])
                            if case == "fields"
                            else (1 if layout == "row" else 3),
                            samples_per_ciphertext=rng.choice([1, 0, 68, 2**31]),
                            total_ciphertexts=rng.choice([0, 0, 1, 30, 2**32 - 1]),
                            ciphertexts=cts,
                        )
                        stub.Predict(req, timeout=30)
                    outcomes[f"{case}: OK"] += 1
                except grpc.RpcError as exc:
                    outcomes[f"{case}: {exc.code().name}"] += 1
                    if exc.code() in BAD:
                        failures.append(f"{case}: {exc.code().name} {exc.details()}")
            alive = all(os.path.exists(f"/proc/{pid}") for pid in server.worker_pids)
            ch.close()
            client.close()
    print(f"fuzzed {tried} inputs in {args.seconds:.0f} s against {args.workers} worker(s)")
    for key, count in sorted(outcomes.items()):
        print(f"  {key:<36} {count}")
    print(f"workers alive throughout: {'yes' if alive else 'NO'}")
    for f in failures[:20]:
        print("FAIL", f)
    return 0 if alive and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
