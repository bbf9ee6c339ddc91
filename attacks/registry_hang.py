"""An own:<identity> zset that names keys the owner hash does not (hand-written value, deleted
owner hash, maxmemory allkeys-* eviction) makes REGISTER loop for ever inside Redis.

Usage: PYTHONPATH=$PWD /work/main/.venv/bin/python attacks/registry_hang.py
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import redis as redis_py

from heml.he.encrypt import public_key_p0
from heml.he.keys import KeySet
from heml.he.private import KEY_NONCE_BYTES, PublicKeyStore, default_privacy_params
from heml.server.state import StateUnavailable
from heml.server.state import redis_backend as rb
from tests.cluster_support import Redis

params = default_privacy_params()
served = SimpleNamespace(
    private=SimpleNamespace(keys=PublicKeyStore(params, budget_bytes=1 << 30, per_identity=8)),
    model=SimpleNamespace(name="m", version=1),
)
sk = KeySet().get(params)
nonce = b"\x05" * KEY_NONCE_BYTES
redis = Redis()
state = rb.RedisState(redis.url, start=False)
probe = redis_py.Redis(host="127.0.0.1", port=redis.port, socket_timeout=2)
try:
    probe.zadd("heml:pk:m:1:own:key:mallory", {f"{i:064x}": i for i in range(8)})
    started = time.monotonic()
    try:
        state.private_keys(served).register(nonce, public_key_p0(sk, nonce), "key:mallory")
        print("registered (no hang)")
    except StateUnavailable as exc:
        print(f"register: StateUnavailable after {time.monotonic() - started:.1f} s: {exc}")
    for command in (("PING",), ("SCRIPT", "KILL")):
        try:
            print(command, "->", probe.execute_command(*command))
        except redis_py.RedisError as exc:
            print(command, "->", exc)
finally:
    state.close()
    probe.close()
    redis.proc.kill()
    redis.proc.wait(10)
    redis.stop()
