"""After an outage, the backlog of deferred voids is flushed by the same thread that keeps API
keys fresh: while it flushes (one round trip per void), keys go stale (> 2 s) and every
authenticated call on the worker fails UNAVAILABLE although Redis answers.

Usage (from the worktree): PYTHONPATH=$PWD /work/main/.venv/bin/python attacks/void_backlog.py [N]
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

from heml.server.auth import issue_key
from heml.server.state import StateUnavailable
from heml.server.state import redis_backend as rb
from tests.cluster_support import Redis

n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
folder = Path(tempfile.mkdtemp())
key = issue_key(folder / "keys", "alice", predictions_per_minute=10**9)
auth = [("authorization", f"Bearer {key}")]
redis = Redis()
state = rb.RedisState(redis.url, api_keys=str(folder / "keys"), start=False)
try:
    for i in range(n):  # what n calls that failed during an outage leave behind
        state.defer("void", rb._charge_key(f"outage-call-{i}.0"))
    assert state.keys.authenticate(auth).key_id == "alice"
    t = threading.Thread(target=state.sync)  # the first sync after Redis is back
    started = time.monotonic()
    t.start()
    refused = ok = 0
    first_refusal = None
    while t.is_alive():
        try:
            state.keys.authenticate(auth)
            ok += 1
        except StateUnavailable:
            refused += 1
            first_refusal = first_refusal or time.monotonic() - started
        time.sleep(0.01)
    took = time.monotonic() - started
    print(
        f"{n} deferred voids flushed in {took:.1f} s; auth during the flush: {ok} ok, "
        f"{refused} UNAVAILABLE (first after {first_refusal})"
    )
finally:
    state.close()
    redis.stop()
