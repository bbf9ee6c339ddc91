#!/usr/bin/env bash
# A deeply nested JSON value in heml:apikeys (written by anyone with Redis write access, or a
# bug) makes every `heml serve --state` worker raise RecursionError at start / kills the
# running worker's state thread. Usage: bash attacks/apikey_recursion.sh  (from the worktree)
set -u
PY=/work/main/.venv/bin/python
export PYTHONPATH=$PWD
T=$(mktemp -d)
RP=$($PY -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
HP=$($PY -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
redis-server --bind 127.0.0.1 --port "$RP" --save "" --appendonly no --dir "$T" >/dev/null &
RPID=$!
sleep 0.5
mkdir "$T/models"
$PY -c "
from tests.guard_support import linear_model
linear_model(3, 'small', 1).save('$T/models/small.json')"
KEY=$($PY -m heml keys issue --api-keys "$T/keys" --id alice 2>/dev/null | head -1)
$PY - <<PYEOF
import redis
c = redis.Redis(port=$RP)
c.hset("heml:apikeys", "evil", "[" * 100000 + "]" * 100000)
c.incr("heml:apikeys:version")
PYEOF
timeout 25 $PY -m heml serve --models "$T/models" --port "$HP" --workers 1 --api-keys "$T/keys" \
  --state "redis://127.0.0.1:$RP/0" --reload-seconds 0 >"$T/serve.log" 2>&1 &
SPID=$!
sleep 12
echo "--- server log (first lines with Error/Traceback):"
grep -n -m8 -E "RecursionError|Traceback|exit|serving|worker" "$T/serve.log"
echo "--- a call with a valid key:"
timeout 10 $PY -m heml models --server "127.0.0.1:$HP" --api-key "$KEY" 2>&1 | tail -2
kill "$SPID" 2>/dev/null; wait "$SPID" 2>/dev/null
kill "$RPID"; wait "$RPID" 2>/dev/null
rm -rf "$T"
