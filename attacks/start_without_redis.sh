#!/usr/bin/env bash
# `heml serve --state redis://…` started while Redis is down: calls of a limited key fail
# UNAVAILABLE, then work once Redis starts, without restarting the server.
set -u
PY=/work/main/.venv/bin/python
export PYTHONPATH=$PWD
T=$(mktemp -d)
free() { $PY -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
RP=$(free); HP=$(free)
mkdir "$T/models"
$PY -c "
from tests.guard_support import linear_model
linear_model(3, 'small', 1).save('$T/models/small.json')"
KEY=$($PY -m heml keys issue --api-keys "$T/keys" --id alice --predictions-per-minute 100000 --max-concurrent 2 2>/dev/null | head -1)
$PY -m heml serve --models "$T/models" --port "$HP" --workers 2 --api-keys "$T/keys" \
  --state "redis://127.0.0.1:$RP/0" --reload-seconds 0 >"$T/serve.log" 2>&1 &
SPID=$!
sleep 6
call() { timeout 20 $PY - <<PYEOF
import numpy as np, heml
try:
    with heml.Client("127.0.0.1:$HP", api_key="$KEY", retries=0) as c:
        print("predict:", c.model("small").predict(np.zeros((2, 3))).shape)
except Exception as e:
    print("predict:", type(e).__name__, str(e)[:120])
PYEOF
}
echo "Redis down:"; call
redis-server --bind 127.0.0.1 --port "$RP" --save "" --appendonly no --dir "$T" >/dev/null &
RPID=$!
sleep 2
echo "Redis up:"; call; call
echo "--- log lines about the state:"; grep -E "shared state" "$T/serve.log" | cut -c1-160
kill "$SPID"; wait "$SPID" 2>/dev/null
kill "$RPID"; wait "$RPID" 2>/dev/null
rm -rf "$T"
