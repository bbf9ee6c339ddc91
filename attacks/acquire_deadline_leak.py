"""A call whose deadline passes while its in-flight slot is being acquired in Redis leaks
the slot for as long as the worker lives: the RPC's termination callback runs Guard.exit
first (nothing acquired yet, so nothing released, and exit is marked done), then the acquire
script's reply arrives and the slot is held; the handler's own exit is then a no-op.

Usage: PYTHONPATH=$PWD /work/main/.venv/bin/python attacks/acquire_deadline_leak.py
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import grpc

from heml.server.auth import issue_key
from heml.v1 import heml_pb2 as pb
from heml.v1 import heml_pb2_grpc
from tests.cluster_support import Redis
from tests.guard_support import inprocess_server, linear_model

root = Path(tempfile.mkdtemp())
(root / "models").mkdir()
linear_model(3, "small", 1).save(root / "models" / "small.json")
key = issue_key(root / "keys", "alice", max_concurrent=1)
meta = [("authorization", f"Bearer {key}")]
# a read-only script that keeps Redis busy for ARGV[1] seconds (DEBUG SLEEP is disabled)
BUSY = """
local t = redis.call('TIME')
local start = tonumber(t[1]) + tonumber(t[2]) / 1e6
local now = start
while now - start < tonumber(ARGV[1]) do
  t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
return 1
"""
redis = Redis()
try:
    with inprocess_server(root / "models", api_keys=str(root / "keys"), state=redis.url) as port:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = heml_pb2_grpc.InferenceStub(channel)

        def status(timeout: float = 10) -> str:
            try:
                stub.ListModels(pb.ListModelsRequest(), metadata=meta, timeout=timeout)
                return "OK"
            except grpc.RpcError as exc:
                return exc.code().name

        print("before:", status(), status())
        slow = threading.Thread(target=lambda: redis.client().eval(BUSY, 0, "0.6"))
        slow.start()  # Redis answers 0.6 s late (a slow disk, a busy script, a far replica)
        time.sleep(0.05)
        print("call with a 0.2 s deadline:", status(0.2))
        slow.join()
        time.sleep(1.0)
        print("after (Redis answers again):", [status() for _ in range(3)])
        print("members of heml:c:alice:", redis.client().smembers("heml:c:alice"))
        channel.close()
finally:
    redis.stop()
