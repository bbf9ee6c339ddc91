"""Shared state in Redis (``heml serve --state redis://host:port/db``): one count for a cluster.

Every change is one Lua script, so Redis runs it atomically whatever the number of replicas:

* **token bucket** ``heml:q:<key id>`` (hash ``tokens``, ``stamp``, ``charged``): the same
  bucket as heml.server.quota, timed by Redis' own clock (``TIME``), so replica clocks do not
  matter; ``charged`` counts the sample slots charged in all (an audit figure).
* **allowances that never refill** ``heml:t:<name>`` (hash field ``used``): the model-privacy
  quota per (model, API key).
* **calls in flight** ``heml:c:<key id>``: a set of ``<lease>|<call id>`` members. Each worker
  process holds a lease ``heml:lease:<lease>`` that it renews every SYNC_SECONDS with a TTL of
  LEASE_SECONDS; members of a lease that expired (a killed replica) are dropped by the next
  ``acquire`` once Redis has seen the lease missing for LEASE_GRACE_SECONDS (marker
  ``heml:gone:<lease>``), so a dead replica's calls stop counting within LEASE_SECONDS +
  LEASE_GRACE_SECONDS, while a live worker whose lease expired (during an outage, or while its
  process was paused) renews it and puts its running calls back at its next sync.
* **model-privacy public keys** ``heml:pk:<model>:<version>:*``: validated key bytes (nonce ‖
  p0) with the same per-identity cap, overall capacity and eviction order as the in-process
  store (heml.he.private.PublicKeyStore); each replica keeps a validated local copy as a cache.
  Deleted when a replica stops serving the version; the registry expires as one unit
  REGISTRY_TTL after the model's last use.
* **API keys** ``heml:apikeys`` (id -> key-file JSON line, from ``heml keys issue --state``) and
  **revocations** ``heml:apikeys:revoked`` (SHA-256 hex of revoked keys), with a version
  counter that each worker polls every SYNC_SECONDS. Revocations are monotonic: a worker
  keeps every one it has seen and writes back those Redis lacks.
* **data marker** ``heml:epoch``: a random id written when Redis is found empty, and
  **generation** ``heml:gen``, incremented by every allowance granted. A worker that finds the
  marker gone or changed, or the generation below the highest it saw (an older copy: snapshot
  reloaded, lagging replica promoted), knows Redis lost its data: it writes back revocations
  and its running calls, and sets ``heml:lost``, which refuses model-privacy allowances (they
  cannot be rebuilt) until an operator deletes it.

Charges carry an id unique to the charge (``<call id>.<n>``); the script records it
(``heml:charge:<id>``, kept CHARGE_TTL = 5 minutes), so running it again after a lost reply returns
the first result instead of charging twice. A call that ends UNAVAILABLE because Redis could not
be reached has its charges voided (refunded once, by the same records) as soon as Redis answers
again, so a failed call costs nothing, a served one exactly once. Releases of in-flight slots
that could not be sent are retried the same way.

Redis unreachable (or refusing commands: OOM, READONLY, BUSY...): every call that needs it
fails with UNAVAILABLE (fail closed), one log line when it goes and one when it comes back;
nothing needs a restart. Values read back are checked
(numbers in range, key bytes validated again); a malformed value fails closed too.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import urllib.parse
import uuid

from ..auth import (
    MAX_KEYS,
    ApiKey,
    ApiKeyFileError,
    KeyStore,
    bearer_token,
    find_key,
    parse_key_file,
)

log = logging.getLogger("heml.server")

SYNC_SECONDS = 0.5  # lease renewal, API-key poll and retry of pending voids/releases
LEASE_SECONDS = 10  # a killed worker's in-flight calls stop counting after this
MAX_STALE_SECONDS = 2.0  # API keys older than this (Redis unreachable): fail closed
REVOCATION_SECONDS = 2.0  # documented bound: a revocation reaches every replica within this
# seconds a charge record is kept: a retry comes within the call, a void when Redis answers
# again; ~150 bytes each, so 1,000 calls/s keep ~45 MB of records
CHARGE_TTL = 300
SOCKET_SECONDS = 1.0
PREFIX = "heml:"
APIKEYS = PREFIX + "apikeys"
REVOKED = APIKEYS + ":revoked"
APIKEYS_VERSION = APIKEYS + ":version"
MAX_PENDING = 100_000  # voids and releases waiting for Redis (bounded memory)
FLUSH_BATCH = 500  # voids/releases sent per round trip when Redis answers again
# a member of an in-flight set whose lease is missing is dropped once the lease has been seen
# missing this long (a live worker renews its lease within SYNC_SECONDS of Redis' return)
LEASE_GRACE_SECONDS = 2.0
REGISTRY_TTL = 7 * 86400  # a model's key registry expires this long after its last use
MAX_ENTRY_CHARS = 4096  # an API key entry in Redis longer than this is refused unparsed
EPOCH = PREFIX + "epoch"  # data marker: gone or changed = Redis lost its data
LOST = PREFIX + "lost"  # set when a loss was seen: model-privacy allowances refused
# generation: +1 by every allowance charge granted; a Redis whose generation is below the
# highest a live worker saw is an older copy of itself (snapshot reloaded, lagging replica
# promoted, backup restored) even though its data marker is the same
GEN = PREFIX + "gen"

# Charge record formats: "b|<capacity>|<cost>|<bucket key>" (token bucket) and
# "h|<cost>|<hash key>|<field>" (a counter); "void" once undone.
_CHECK_RECORD = """
local rec = redis.call('GET', KEYS[2])
if rec then
  if rec == 'void' then return {-1, '0'} end
  return {1, '0'}
end
"""

TAKE = (
    _CHECK_RECORD
    + """
local cost, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local rate = cap / 60.0
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local h = redis.call('HMGET', KEYS[1], 'tokens', 'stamp', 'charged')
if h[3] and not string.match(h[3], '^%d+$') then return {-2, 'charged'} end
local tokens, stamp = tonumber(h[1]), tonumber(h[2])
if not h[1] and not h[2] then
  tokens = cap
elseif tokens == nil or stamp == nil or tokens ~= tokens or stamp ~= stamp
    or tokens < 0 or stamp < 0 or stamp > now + 5 then
  tokens = 0  -- malformed: no credit, refills from now (fail closed)
else
  tokens = math.min(cap, tokens + math.max(0, now - stamp) * rate)
end
local granted = 0
if cost <= tokens then
  tokens = tokens - cost
  granted = 1
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
  'stamp', string.format('%.6f', now))
if granted == 1 then
  redis.call('HINCRBY', KEYS[1], 'charged', cost)
  redis.call('SET', KEYS[2], 'b|' .. ARGV[2] .. '|' .. ARGV[1] .. '|' .. KEYS[1], 'EX', ARGV[3])
end
return {granted, string.format('%.17g', tokens)}
"""
)

# KEYS[1] hash, KEYS[2] charge record; ARGV field, cost, limit, ttl, (optional) a key
# that must exist first (the registered public key whose allowance this is), and the data-loss
# marker: while it exists the counts may have restarted from zero, so nothing is granted (-4);
# then the data marker key and the value this worker last saw: if they differ, Redis lost its
# data since the worker's last sync, which has not noticed yet: nothing is granted (-5) and the
# loss marker is set (message ARGV[11]); then the generation key and the highest generation
# this worker saw: a lower one is an older copy of Redis (loss marker set, -4). A grant bumps
# the generation and returns it.
TAKE_TOTAL = (
    _CHECK_RECORD
    + """
if redis.call('EXISTS', ARGV[6]) == 1 then return {-4, '0'} end
if ARGV[8] == '' then return {-5, '0'} end
if redis.call('GET', ARGV[7]) ~= ARGV[8] then
  -- the marker this worker saw is gone or replaced: Redis lost its data; say so at once, so
  -- a worker that makes first contact now (it has no marker to compare) is refused too
  redis.call('SET', ARGV[6], ARGV[11], 'NX')
  return {-5, '0'}
end
local gen = tonumber(redis.call('GET', ARGV[9]) or '0')
if gen == nil or gen < tonumber(ARGV[10]) then  -- an older copy of Redis (or a malformed one)
  redis.call('SET', ARGV[6], ARGV[11], 'NX')
  return {-4, '0'}
end
if ARGV[5] and ARGV[5] ~= '' and redis.call('HEXISTS', ARGV[5], ARGV[1]) == 0 then
  return {-3, '0'}
end
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local used = 0
if raw then
  if not string.match(raw, '^%d+$') or #raw > 15 then return {-2, ARGV[1]} end
  used = tonumber(raw)
end
local cost, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
if used + cost > limit then return {0, tostring(used)} end
redis.call('HINCRBY', KEYS[1], ARGV[1], cost)
redis.call('SET', KEYS[2], 'h|' .. ARGV[2] .. '|' .. KEYS[1] .. '|' .. ARGV[1], 'EX', ARGV[4])
return {1, tostring(used), tostring(redis.call('INCR', ARGV[9]))}
"""
)

# Every read comes before the first write: a script stopped half way by an error (a command
# the ACL denies) has changed nothing, so the void, kept queued, refunds when sent again
# (Redis does not roll a script back: a 'void' record written first would block the refund).
VOID = """
local rec = redis.call('GET', KEYS[1])
if not rec or rec == 'void' then
  redis.call('SET', KEYS[1], 'void', 'EX', ARGV[1])
  return 0
end
local cap, cost, key = string.match(rec, '^b|(%d+)|(%d+)|(.+)$')
local cost2, hkey, field = string.match(rec, '^h|(%d+)|(.+)|([^|]+)$')
local h, raw
if key then
  h = redis.call('HMGET', key, 'tokens', 'charged')
elseif hkey then
  raw = redis.call('HGET', hkey, field)
end
if key then
  local tokens = tonumber(h[1])
  if tokens and tokens == tokens and tokens >= 0 then
    tokens = math.min(tonumber(cap), tokens + tonumber(cost))
    redis.call('HSET', key, 'tokens', string.format('%.17g', tokens))
  end
  if h[2] and string.match(h[2], '^%d+$') then
    redis.call('HSET', key, 'charged', math.max(0, tonumber(h[2]) - tonumber(cost)))
  end
elseif hkey and raw and string.match(raw, '^%d+$') then
  redis.call('HSET', hkey, field, math.max(0, tonumber(raw) - tonumber(cost2)))
end
redis.call('SET', KEYS[1], 'void', 'EX', ARGV[1])
if key or hkey then return 1 end
return 0
"""

# KEYS[1] in-flight set; ARGV limit, member, lease key prefix, "gone" marker prefix, grace
# seconds. A member whose lease is missing is dropped only once the lease has been seen
# missing for the grace period (marker heml:gone:<lease>, timed by Redis' clock): a live worker
# whose lease expired while Redis was down renews it within SYNC_SECONDS of Redis' return, so
# its calls keep counting; a dead worker's calls stop counting LEASE_SECONDS + grace after it died.
ACQUIRE = """
if redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 1 then return -1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local grace = tonumber(ARGV[5])
local live = 0
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local lease = string.match(m, '^([0-9a-f]+)|')
  if lease and redis.call('EXISTS', ARGV[3] .. lease) == 1 then
    live = live + 1
  elseif lease then
    local raw = redis.call('GET', ARGV[4] .. lease)
    local since = raw and tonumber(raw)
    if not since then
      redis.call('SET', ARGV[4] .. lease, string.format('%.6f', now), 'EX',
        math.ceil(grace) * 10 + 60)
      live = live + 1
    elseif now - since >= grace then
      redis.call('SREM', KEYS[1], m)
    else
      live = live + 1
    end
  else
    redis.call('SREM', KEYS[1], m)
  end
end
if live >= tonumber(ARGV[1]) then return live end
redis.call('SADD', KEYS[1], ARGV[2])
return -1
"""

# Model-privacy key registry of one model (ARGV[1] = its key prefix P):
#   P..'blob' key id -> nonce ‖ p0, P..'owner' key id -> identity, P..'used' key id -> slots,
#   P..'own:'..identity zset key id -> tick of last use, P..'idents' zset identity -> tick.
# Every loop is bounded, and every step of an eviction loop removes one zset member whatever
# the other keys hold: a registry made inconsistent (a key deleted or evicted by hand) is
# repaired by dropping what does not match, never loops (a looping script makes Redis answer
# BUSY to every replica and cannot be killed once it wrote). The registry's keys expire
# REGISTRY_TTL seconds after the model was last used (ARGV[2] of the common part).
_REGISTRY_COMMON = """
local P = ARGV[1]
local ttl = tonumber(ARGV[2])
local bad = 0
-- The registry expires as one unit: every structure, every identity's zset included, is given
-- the same expiry, renewed together once a tenth of the TTL has passed (so an identity idle
-- while others use the model keeps its zset as long as its keys: the cap and eviction see
-- them); a structure created since (a new identity's zset, the allowance counts) joins the
-- unit with the time it has left.
local function renew(ident)
  local ms = ttl * 1000
  local left = redis.call('PTTL', P .. 'tick')
  if left < ms * 0.9 then
    left = ms
    for _, name in ipairs({'blob', 'owner', 'used', 'idents', 'tick'}) do
      redis.call('PEXPIRE', P .. name, ms)
    end
    for _, who in ipairs(redis.call('ZRANGE', P .. 'idents', 0, -1)) do
      redis.call('PEXPIRE', P .. 'own:' .. who, ms)
    end
  end
  for _, name in ipairs({'blob', 'owner', 'used', 'idents', 'tick', 'own:' .. ident}) do
    if redis.call('PTTL', P .. name) == -1 then redis.call('PEXPIRE', P .. name, left) end
  end
end
local function touch(key, ident, tick)
  redis.call('ZADD', P .. 'own:' .. ident, tick, key)
  redis.call('ZADD', P .. 'idents', tick, ident)
  renew(ident)
end
-- drop a key id listed in ident's zset; counts an entry the owner hash does not match
local function drop(key, ident)
  local owner = redis.call('HGET', P .. 'owner', key)
  if owner ~= ident then bad = bad + 1 end
  redis.call('HDEL', P .. 'blob', key)
  redis.call('HDEL', P .. 'owner', key)
  redis.call('HDEL', P .. 'used', key)
  for _, who in ipairs({ident, owner}) do
    if who then
      redis.call('ZREM', P .. 'own:' .. who, key)
      if redis.call('ZCARD', P .. 'own:' .. who) == 0 then
        redis.call('DEL', P .. 'own:' .. who)
        redis.call('ZREM', P .. 'idents', who)
      end
    end
  end
end
"""

# ARGV prefix, ttl, key id, identity, blob, per identity, capacity -> {1 new | 0 known, bad}
REGISTER = (
    _REGISTRY_COMMON
    + """
local k, who = ARGV[3], ARGV[4]
local tick = redis.call('INCR', P .. 'tick')
local owner = redis.call('HGET', P .. 'owner', k)
if owner then
  touch(k, owner, tick)
  return {0, 0}
end
redis.call('HSET', P .. 'blob', k, ARGV[5])
redis.call('HSET', P .. 'owner', k, who)
touch(k, who, tick)
local per, cap = tonumber(ARGV[6]), tonumber(ARGV[7])
local excess = redis.call('ZCARD', P .. 'own:' .. who) - per
for _ = 1, excess do
  local oldest = redis.call('ZRANGE', P .. 'own:' .. who, 0, 0)[1]
  if not oldest then break end
  drop(oldest, who)
end
if bad > 0 then  -- the identity's zset named keys it does not own: drop every such entry
  for _, m in ipairs(redis.call('ZRANGE', P .. 'own:' .. who, 0, -1)) do
    if redis.call('HGET', P .. 'owner', m) ~= who then
      redis.call('ZREM', P .. 'own:' .. who, m)
      bad = bad + 1
    end
  end
end
-- each round removes one zset member or one identity: at most (members + identities) rounds
local rounds = redis.call('ZCARD', P .. 'idents') + redis.call('HLEN', P .. 'owner') + 1
for _ = 1, rounds do
  if redis.call('HLEN', P .. 'owner') <= cap then break end
  -- the identity holding the most keys; ties: the least recently active one
  local best, bestn = nil, -1
  for _, ident in ipairs(redis.call('ZRANGE', P .. 'idents', 0, -1)) do
    local n = redis.call('ZCARD', P .. 'own:' .. ident)
    if n > bestn then best, bestn = ident, n end
  end
  if best == nil then break end
  local victim = redis.call('ZRANGE', P .. 'own:' .. best, 0, 0)[1]
  if victim then drop(victim, best) else redis.call('ZREM', P .. 'idents', best) end
end
return {1, bad}
"""
)

# ARGV prefix, ttl, key id, '1' to return the key bytes too -> {0} or {1, owner[, blob]}
TOUCH = (
    _REGISTRY_COMMON
    + """
local k = ARGV[3]
local owner = redis.call('HGET', P .. 'owner', k)
if not owner then return {0} end
touch(k, owner, redis.call('INCR', P .. 'tick'))
if ARGV[4] == '1' then return {1, owner, redis.call('HGET', P .. 'blob', k) or ''} end
return {1, owner}
"""
)


# One sync of a worker: KEYS lease, gone marker, data marker, loss marker, generation; ARGV
# lease seconds, the data marker this worker saw ('' at first contact), the highest generation
# it saw, a new marker, the loss message. Renews the lease and says whether it had expired
# (the worker's calls in flight may have been dropped by another's acquire: put them back),
# compares marker and generation (gone, changed or lower: Redis lost its data or is an older
# copy; the loss marker is set, and for an older copy a new data marker is written so every
# replica puts back what it holds) -> {lease was missing, lost (0 no, 1 marker gone or
# changed, 2 older copy), data marker, generation (-1 if malformed)}
SYNC = """
local had = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
redis.call('DEL', KEYS[2])
local epoch = redis.call('GET', KEYS[3])
local gen = tonumber(redis.call('GET', KEYS[5]) or '0') or -1
local lost = 0
if ARGV[2] ~= '' and (epoch ~= ARGV[2] or gen < tonumber(ARGV[3])) then
  lost = 1
  redis.call('SET', KEYS[4], ARGV[5], 'NX')
  if epoch == ARGV[2] then  -- same marker, lower generation: an older copy
    lost = 2
    redis.call('SET', KEYS[3], ARGV[4])
    epoch = ARGV[4]
  end
end
if not epoch then
  redis.call('SET', KEYS[3], ARGV[4])
  epoch = ARGV[4]
end
return {had, lost, epoch, tostring(gen)}
"""


_URL_SHAPE = (
    "expected redis://[user:password@]host:port/db (rediss://…/db?ssl_ca_certs=/path/ca.pem "
    "for TLS, unix:///path?db=0); "
    "percent-encode '/', '@', ':', '?' and '#' in the password (e.g. '/' as %2F)"
)


def parse_url(url: str) -> urllib.parse.SplitResult:
    """Check a --state URL's form (ValueError with the reason and the expected shape). The
    message never quotes the URL: a password with an unencoded '/' or '@' shifts its parts, so
    a "port" or "database" may be part of the password."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        raise ValueError(f"--state URL cannot be parsed: {_URL_SHAPE}") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"--state URL has an unsupported scheme: {_URL_SHAPE}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"--state URL needs a host: {_URL_SHAPE}")
    try:
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        raise ValueError(
            f"--state URL has a bad port (not a number in 0-65535): {_URL_SHAPE}"
        ) from None
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ValueError(f"--state URL database must be a number: {_URL_SHAPE}")
    _check_options(parts)
    return parts


# URL options heml passes on to redis-py (anything else would reach redis-py's connection as a
# keyword it rejects, a traceback at the first connection, or change heml's timeouts and
# retries): the database, and the TLS settings of a rediss:// URL
TLS_OPTIONS = (
    "ssl_ca_certs",  # PEM file of the CA(s) the server's certificate must chain to
    "ssl_ca_path",  # a folder of CA certificates (c_rehash layout)
    "ssl_certfile",  # client certificate (PEM) when Redis requires one (tls-auth-clients)
    "ssl_keyfile",  # its private key (PEM)
    "ssl_password",  # the private key's password, if it is encrypted
    "ssl_check_hostname",  # default true: the certificate must name the host of the URL
    "ssl_cert_reqs",  # default required: the server's certificate is checked
)
_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def _check_options(parts: urllib.parse.SplitResult) -> None:
    """The URL's query: only ``db`` and, with rediss://, TLS_OPTIONS; the files they name must
    be readable. Errors name the option, never its value (a password may spill into it)."""
    import os

    accepted = ("db", *TLS_OPTIONS) if parts.scheme == "rediss" else ("db",)
    try:
        options = urllib.parse.parse_qsl(
            parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)
        )
    except ValueError:
        raise ValueError(f"--state URL options cannot be parsed: {_URL_SHAPE}") from None
    for name, value in options:
        if name in TLS_OPTIONS and name not in accepted:
            raise ValueError(
                f"--state URL option {name} needs TLS: use rediss:// (redis:// is plaintext)"
            )
        if name not in accepted:
            raise ValueError(  # the name is not quoted: it may be part of a password
                "--state URL has an option heml does not accept (accepted: "
                f"{', '.join(accepted)}): {_URL_SHAPE}"
            )
        if name == "db" and not value.isdigit():
            raise ValueError(f"--state URL option db must be a number: {_URL_SHAPE}")
        if name in _FILES and not (os.path.isfile(value) and os.access(value, os.R_OK)):
            raise ValueError(f"--state URL option {name} names no readable file")
        if name == "ssl_ca_path" and not os.path.isdir(value):
            raise ValueError("--state URL option ssl_ca_path names no folder")


def safe_url(url: str) -> str:
    """The URL without its password (for logs)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def connect(url: str):
    """A redis-py client for ``url`` with short timeouts and no hidden retries (each script is
    retried by RedisState.run, with the same charge id)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_timeout=SOCKET_SECONDS,
        socket_connect_timeout=SOCKET_SECONDS,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


def ping(url: str) -> str | None:
    """None if Redis at ``url`` answers, else why not (the supervisor's startup check)."""
    import redis

    client = connect(url)
    try:
        client.ping()
        return None
    except redis.RedisError as exc:
        return why_refused(exc) or str(exc) or type(exc).__name__
    finally:
        client.close()


def why_refused(exc: BaseException) -> str | None:
    """What an operator must fix when Redis answers but refuses heml's login (AUTH) or a
    command heml needs (ACL); None for anything else. Redis' own message quotes no password."""
    import redis

    if isinstance(exc, redis.AuthenticationError):
        return (
            f"Redis refused heml's login ({exc}): check the user and password in the --state "
            "URL (docs/deploy.md, 'Keep Redis private')"
        )
    if _denied(exc):
        return (
            f"Redis denied a command heml needs ({exc}): give heml's Redis user the ACL in "
            "docs/deploy.md ('Keep Redis private')"
        )
    return None


def _denied(exc: BaseException) -> bool:
    """An ACL refusal: NOPERM, or a command inside a script the user may not run."""
    import redis

    return isinstance(exc, redis.exceptions.NoPermissionError) or (
        isinstance(exc, redis.ResponseError)
        and ("no permissions to" in str(exc) or "can't run this command" in str(exc))
    )


class RedisState:
    """The Redis backend for one worker process (see the module docstring)."""

    name = "redis"

    def __init__(self, url: str, api_keys: str | None = None, *, start: bool = True) -> None:
        self.url = url
        self.where = safe_url(url)
        self.client = connect(url)
        self.lease = uuid.uuid4().hex
        self._scripts = {
            name: self.client.register_script(src)
            for name, src in (
                ("take", TAKE),
                ("total", TAKE_TOTAL),
                ("void", VOID),
                ("acquire", ACQUIRE),
                ("register", REGISTER),
                ("touch", TOUCH),
                ("sync", SYNC),
            )
        }
        self._pending: collections.deque = collections.deque()
        self._dropped = 0  # voids and releases not kept (queue full) since the last flush
        self._rotate = False  # a release was dropped: move this worker's calls to a new lease
        self._reassert = False  # Redis was unreachable: put this worker's calls back first
        self._epoch: str | None = None  # the data marker this worker saw (None: not yet)
        self._gen = 0  # the highest generation this worker saw (GEN)
        self._down_since: float | None = None
        self._state_lock = threading.Lock()
        self._last_refresh = -1e18
        self._errors_logged: set[str] = set()
        self.quotas = RedisQuotas(self)
        self.keys = RedisKeyStore(self, api_keys) if api_keys else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sync()  # lease and keys before the first call (a failure is retried below)
        if start:
            self._thread = threading.Thread(target=self._loop, name="heml-state", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------ reaching Redis
    def run(self, script: str, keys: list[str], args: list, *, attempts: int = 2):
        """Run a script; a lost connection is retried once with the same arguments (every
        script is idempotent for its charge or call id). Raises StateUnavailable."""
        import redis

        from . import StateUnavailable

        last: Exception | None = None
        for _ in range(attempts):
            try:
                result = self._scripts[script](keys=keys, args=args)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                last = exc
                continue
            except redis.RedisError as exc:
                if _denied(exc):  # the ACL lacks a command: an outage until fixed, logged once
                    self._mark_down(exc)
                    raise StateUnavailable(
                        f"shared state at {self.where} denies a command heml needs; see the "
                        "server log"
                    ) from exc
                if _refusing(exc):  # OOM, READONLY, BUSY...: an outage, logged once
                    self._mark_down(exc, refusing=True)
                    raise StateUnavailable(
                        f"shared state at {self.where} refuses commands ({_code(exc)}); "
                        "try again shortly"
                    ) from exc
                # a script error: malformed data, wrong type
                log.error("shared state at %s refused a %s script: %s", self.where, script, exc)
                raise StateUnavailable(
                    f"shared state at {self.where} holds data heml cannot use ({script}); "
                    "see the server log"
                ) from exc
            self._mark_up()
            return result
        self._mark_down(last)
        raise StateUnavailable(
            f"shared state at {self.where} is unreachable; try again shortly"
        ) from last

    def _mark_down(self, exc: BaseException | None, *, refusing: bool = False) -> None:
        """Record an outage; one ERROR line when it starts, not one per call."""
        with self._state_lock:
            self._reassert = True
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
        why = why_refused(exc) if exc is not None else None
        if why is not None:
            log.error(
                "shared state at %s: %s; calls that need it fail with UNAVAILABLE until it "
                "accepts them",
                self.where,
                why,
            )
        elif refusing:
            log.error(
                "shared state at %s refuses commands (%s: %s): calls that need it fail with "
                "UNAVAILABLE until it accepts them again (check its memory: maxmemory, "
                "maxmemory-policy noeviction; and that it is the primary)",
                self.where,
                type(exc).__name__,
                exc,
            )
        else:
            log.error(
                "shared state at %s is unreachable (%s): calls that need it fail with "
                "UNAVAILABLE until it answers again",
                self.where,
                exc,
            )

    def _mark_up(self) -> None:
        with self._state_lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            log.warning(
                "shared state at %s answers again after %.1f s",
                self.where,
                time.monotonic() - since,
            )

    @property
    def available(self) -> bool:
        return self._down_since is None

    def defer(self, kind: str, *args) -> None:
        """Queue a void or a release to send when Redis answers again (both idempotent). The
        queue holds MAX_PENDING; beyond, the entry is counted and dropped (logged when Redis
        answers): a dropped void leaves its call charged (fail closed), a dropped release is
        made harmless by moving this worker's live calls to a new lease (_rotate_lease)."""
        if len(self._pending) >= MAX_PENDING:
            self._dropped += 1
            if kind == "release":
                self._rotate = True
            return
        self._pending.append((kind, args))

    def sync(self) -> bool:
        """Renew the lease, put this worker's calls back after an outage, refresh API keys,
        then send what is pending; False if Redis did not answer. The background thread calls
        this every SYNC_SECONDS; it never raises (the thread must not die)."""
        try:
            if not self._refresh():
                return False
            return self._flush()
        except Exception as exc:  # never let the state thread die: log, try again next round
            self._log_once(f"{type(exc).__name__}: {exc}"[:300])
            return False

    def _log_once(self, message: str) -> None:
        if message not in self._errors_logged:
            if len(self._errors_logged) < 100:
                self._errors_logged.add(message)
            log.error("shared state at %s: sync failed (%s); retrying", self.where, message)

    def _refresh(self) -> bool:
        """The part of a sync that must not wait behind a backlog: lease, data marker, this
        worker's calls after an outage, API keys."""
        import redis

        try:
            pipe = self.client.pipeline(transaction=False)
            seen = self._epoch
            self._scripts["sync"](
                keys=[
                    PREFIX + "lease:" + self.lease,
                    PREFIX + "gone:" + self.lease,
                    EPOCH,
                    LOST,
                    GEN,
                ],
                args=[LEASE_SECONDS, seen or "", self._gen, uuid.uuid4().hex, self.loss_note(seen)],
                client=pipe,
            )
            pipe.get(APIKEYS_VERSION)
            pipe.scard(REVOKED)
            (had, lost, epoch, gen), version, revoked = pipe.execute()
            lost = self._seen(seen, int(lost), _text(epoch), int(gen))
            if not int(had) and seen is not None:  # expired: another's acquire may drop our calls
                with self._state_lock:
                    self._reassert = True
            with self._state_lock:
                reassert, self._reassert = self._reassert or lost, False
            if reassert:
                try:
                    self.quotas.reassert()
                except BaseException:
                    self._reassert = True
                    raise
            if self.keys is not None:
                self.keys.refresh(version, int(revoked or 0), force=lost)
            self._last_refresh = time.monotonic()
            self._mark_up()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._mark_down(exc)
            return False
        except redis.RedisError as exc:
            if _refusing(exc) or _denied(exc):
                self._mark_down(exc, refusing=True)
            else:
                self._log_once(str(exc)[:300])
            return False
        return True

    def loss_note(self, seen: str | None) -> str:
        """The value of LOST when this worker is the one that sees a loss (for the operator)."""
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return (
            f"data marker {(seen or '')[:12]} lost or older at {when}, seen by lease {self.lease}"
        )

    def saw_generation(self, gen: int) -> None:
        """Remember the highest generation seen (a grant's reply or a sync)."""
        with self._state_lock:
            self._gen = max(self._gen, gen)

    def _seen(self, seen: str | None, lost: int, epoch: str, gen: int) -> bool:
        """Take in a sync's reply: the data marker and generation Redis holds, and whether the
        script found a loss (marker gone or changed, or a generation below the highest this
        worker saw: an older copy). Then one ERROR line, and the caller puts back this
        worker's revocations and calls; LOST was set by the script (model-privacy allowances
        refused until an operator removes it)."""
        self._epoch = epoch
        if not lost:
            self.saw_generation(gen)
            return False
        with self._state_lock:
            self._gen = max(gen, 0)  # from now on, compare with what this Redis holds
        log.error(
            "shared state at %s lost its data (%s): revocations this replica knows are "
            "written back and its calls in flight put back; model-privacy allowances cannot "
            "be recounted, so model-privacy scoring fails with FAILED_PRECONDITION until an "
            "operator restores Redis or deletes the key %s (docs/deploy.md, 'When Redis "
            "loses its data')",
            self.where,
            f"it is an older copy: generation {gen}, below the last this replica saw"
            if lost == 2
            else f"its data marker {(seen or '')[:12]} is gone or changed",
            LOST,
        )
        return True

    def _flush(self) -> bool:
        """Send pending voids and releases, FLUSH_BATCH per round trip; between batches the
        lease and API keys are refreshed every SYNC_SECONDS, so a long backlog never makes
        keys stale while Redis answers."""
        import redis

        dropped, self._dropped = self._dropped, 0
        if dropped:
            log.error(
                "shared state at %s: %d voids/releases were dropped while it was unreachable "
                "(more than %d waiting): those calls stay charged%s",
                self.where,
                dropped,
                MAX_PENDING,
                "; this worker's calls in flight move to a new lease" if self._rotate else "",
            )
        if self._rotate:
            self._rotate = False
            self._rotate_lease()
        while self._pending:
            if time.monotonic() - self._last_refresh > SYNC_SECONDS and not self._refresh():
                return False
            batch = [self._pending[i] for i in range(min(FLUSH_BATCH, len(self._pending)))]
            pipe = self.client.pipeline(transaction=False)
            for kind, args in batch:
                if kind == "void":
                    self._scripts["void"](keys=[args[0], args[0]], args=[CHARGE_TTL], client=pipe)
                else:  # release
                    pipe.srem(*args)
            try:
                replies = pipe.execute(raise_on_error=False)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self._mark_down(exc)
                return False
            failed = [r for r in replies if isinstance(r, Exception)]
            if failed and (_refusing(failed[0]) or _denied(failed[0])):  # kept for later
                self._mark_down(failed[0], refusing=True)
                return False
            if failed:  # malformed data for those entries: sending again would not help
                self._log_once(f"{len(failed)} voids/releases refused: {failed[0]}"[:300])
            for _ in batch:
                self._pending.popleft()
        return True

    def _rotate_lease(self) -> None:
        """Move this worker's calls in flight to a new lease and delete the old one, so every
        member under the old lease (releases that were dropped) stops counting within
        LEASE_GRACE_SECONDS."""
        old, self.lease = self.lease, uuid.uuid4().hex
        self.client.set(PREFIX + "lease:" + self.lease, "1", ex=LEASE_SECONDS)
        self.quotas.reassert()
        self.client.delete(PREFIX + "lease:" + old)

    def _loop(self) -> None:
        while not self._stop.wait(SYNC_SECONDS):
            self.sync()

    def private_keys(self, served):
        return RedisPrivateKeys(self, served)

    def forget_registry(self, name: str, version: int) -> None:
        """Delete a model version's key registry from Redis (the version is no longer served
        by this replica; heml:t: allowances are kept, so a rollback does not reset them).
        Redis unreachable: left to REGISTRY_TTL."""
        import redis

        prefix = f"{PREFIX}pk:{name}:{version}:"
        try:
            idents = self.client.zrange(prefix + "idents", 0, -1)
            names = [prefix + n for n in ("blob", "owner", "used", "idents", "tick")]
            names += [prefix + "own:" + _text(i) for i in idents]
            for i in range(0, len(names), 500):
                self.client.delete(*names[i : i + 500])
        except redis.RedisError as exc:
            log.warning(
                "shared state at %s: the key registry of %s v%d was not deleted (%s); it "
                "expires %d days after its last use",
                self.where,
                name,
                version,
                exc,
                REGISTRY_TTL // 86400,
            )

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.client.close()


_REFUSING = frozenset(
    ("OOM", "READONLY", "BUSY", "LOADING", "MASTERDOWN", "NOREPLICAS", "MISCONF", "TRYAGAIN")
)


def _code(exc: BaseException) -> str:
    """Redis' error code (OOM, READONLY...): redis-py keeps it as ``status_code`` when it
    strips it from the message, else it is the message's first word."""
    code = getattr(exc, "status_code", None)
    return str(code) if code else (str(exc).split() or [type(exc).__name__])[0]


def _refusing(exc: BaseException) -> bool:
    """Redis answers but refuses every command for now (out of memory, a read-only replica,
    a script running, loading its file): an outage, not malformed data."""
    return _code(exc) in _REFUSING


def _charge_key(charge_id: str) -> str:
    return PREFIX + "charge:" + charge_id


class RedisQuotas:
    """The quota interface over Redis scripts (heml.server.state)."""

    def __init__(self, state: RedisState) -> None:
        self.state = state
        self._live: dict[str, tuple[str, str]] = {}  # call id -> (set, member) acquired here
        self._live_lock = threading.Lock()

    def _check(self, reply, what: str) -> tuple[int, float]:
        from . import StateUnavailable

        code = int(reply[0])
        if code == -2:
            log.error("shared state: malformed %s record (%s); failing closed", what, reply[1])
            raise StateUnavailable(f"shared state holds a malformed {what} record")
        if code == -1:  # the charge was voided before it ran: treat as not granted
            raise StateUnavailable("the charge was voided; try again")
        return code, float(reply[1])

    def take(self, key_id: str, cost: int, per_minute: int, charge_id: str) -> float | None:
        import math

        reply = self.state.run(
            "take",
            [PREFIX + "q:" + key_id, _charge_key(charge_id)],
            [int(cost), int(per_minute), CHARGE_TTL],
        )
        granted, tokens = self._check(reply, "quota")
        if granted == 1:
            return None
        if cost > per_minute:
            return math.inf
        return max(0.0, (cost - tokens) / (per_minute / 60.0))

    def take_total(
        self,
        name: str,
        cost: int,
        limit: int,
        charge_id: str,
        *,
        hash_key: str | None = None,
        field: str = "used",
        must_exist: str = "",
    ) -> int | None:
        reply = self.state.run(
            "total",
            [hash_key or PREFIX + "t:" + name, _charge_key(charge_id)],
            [
                field,
                int(cost),
                int(limit),
                CHARGE_TTL,
                must_exist,
                LOST,
                EPOCH,
                self.state._epoch or "",
                GEN,
                self.state._gen,
                self.state.loss_note(self.state._epoch),
            ],
        )
        if int(reply[0]) == 1 and len(reply) > 2:
            self.state.saw_generation(int(reply[2]))
        if int(reply[0]) == -5:
            from . import StateUnavailable

            raise StateUnavailable(
                f"shared state at {self.state.where} changed since this replica last checked "
                "it; try again shortly"
            )
        if int(reply[0]) == -3:
            raise KeyError(field)
        if int(reply[0]) == -4:
            from . import StateDataLost

            raise StateDataLost(
                f"shared state at {self.state.where} lost its data, so model-privacy "
                "allowances may have restarted from zero: model-privacy scoring is refused "
                f"until the operator restores Redis from its backup or deletes the key {LOST} "
                "to accept the reset (docs/deploy.md, 'When Redis loses its data')"
            )
        granted, used = self._check(reply, "allowance")
        return None if granted == 1 else int(used)

    def acquire(self, key_id: str, limit: int, call_id: str) -> int | None:
        from . import StateUnavailable

        member = f"{self.state.lease}|{call_id}"
        key = PREFIX + "c:" + key_id
        try:
            live = int(
                self.state.run(
                    "acquire",
                    [key],
                    [int(limit), member, PREFIX + "lease:", PREFIX + "gone:", LEASE_GRACE_SECONDS],
                )
            )
        except StateUnavailable:
            self.state.defer("release", key, member)  # in case it ran and the reply was lost
            raise
        if live >= 0:
            return live
        with self._live_lock:
            self._live[call_id] = (key, member)
        return None

    def release(self, key_id: str, call_id: str) -> None:
        import redis

        with self._live_lock:
            entry = self._live.pop(call_id, None)
        key, member = entry or (PREFIX + "c:" + key_id, f"{self.state.lease}|{call_id}")
        try:
            self.state.client.srem(key, member)
        except redis.RedisError as exc:
            self.state._mark_down(exc, refusing=_refusing(exc))
            self.state.defer("release", key, member)

    def reassert(self) -> None:
        """Put this worker's calls in flight back into Redis under its current lease (after an
        outage, a data loss or a new lease): they still run, so they still count. A call
        released meanwhile is taken out again, so a release is never undone."""
        with self._live_lock:
            snapshot = list(self._live.items())
        if not snapshot:
            return
        lease = self.state.lease
        pipe = self.state.client.pipeline(transaction=False)
        for call_id, (key, member) in snapshot:
            pipe.sadd(key, f"{lease}|{call_id}")
            if member != f"{lease}|{call_id}":  # a new lease: the old name would count twice
                pipe.srem(key, member)
        pipe.execute()
        ended = []
        with self._live_lock:
            for call_id, (key, _member) in snapshot:
                if call_id in self._live:
                    self._live[call_id] = (key, f"{lease}|{call_id}")
                else:
                    ended.append((key, f"{lease}|{call_id}"))
        for key, member in ended:
            self.state.client.srem(key, member)

    def void(self, charge_ids: list[str]) -> None:
        """Undo these charges (a call that failed because Redis could not be reached); sent
        now if Redis answers, else when it does."""
        from . import StateUnavailable

        for charge_id in charge_ids:
            key = _charge_key(charge_id)
            try:
                self.state.run("void", [key, key], [CHARGE_TTL], attempts=1)
            except StateUnavailable:
                self.state.defer("void", key)

    def charged(self, key_id: str) -> int:
        """Sample slots charged to ``key_id``'s bucket in all (tests and operators)."""
        raw = self.state.client.hget(PREFIX + "q:" + key_id, "charged")
        return int(raw or 0)


class RedisPrivateKeys:
    """A model-privacy model's key registry in Redis, with the replica's PublicKeyStore as a
    validated local cache (encryptors are built from it). Same interface as PublicKeyStore:
    ``register``, ``in``, ``take``."""

    def __init__(self, state: RedisState, served) -> None:
        self.state = state
        self.local = served.private.keys
        model = served.model
        self.prefix = f"{PREFIX}pk:{model.name}:{model.version}:"
        hooks = getattr(served, "retire_hooks", None)
        if hooks is not None and id(state) not in hooks:  # freed when no longer served
            hooks[id(state)] = lambda: state.forget_registry(model.name, model.version)

    def register(self, nonce: bytes, p0: bytes, identity: str) -> str:
        from ...he.private import key_id_of, validate_public_key

        key_id = key_id_of(nonce, p0)
        checked = None
        if key_id not in self.local:  # validated already if cached (same bytes, same id)
            checked = validate_public_key(nonce, p0, self.local.params)  # before Redis
        reply = self.state.run(
            "register",
            [self.prefix + "owner"],
            [
                self.prefix,
                REGISTRY_TTL,
                key_id,
                identity,
                nonce + p0,
                self.local.per_identity,
                self.local.capacity,
            ],
        )
        if int(reply[1]) > 0:
            from . import StateUnavailable

            log.error(
                "shared state: the key registry %s* was inconsistent (%d entries named keys "
                "it did not hold); they were dropped",
                self.prefix,
                int(reply[1]),
            )
            raise StateUnavailable("the shared key registry was inconsistent; try again")
        if checked is not None:
            self.local.install_checked(*checked, identity)
        return key_id

    def __contains__(self, key_id: str) -> bool:
        from ...he.private import valid_key_id

        if not valid_key_id(key_id):
            return False
        cached = key_id in self.local
        reply = self.state.run(
            "touch",
            [self.prefix + "owner"],
            [self.prefix, REGISTRY_TTL, key_id, "0" if cached else "1"],
        )
        if int(reply[0]) != 1:
            return False
        if not cached:
            self._install_from_redis(key_id, reply[1], reply[2])
        return True

    def _install_from_redis(self, key_id: str, owner, blob: bytes) -> None:
        """Validate key bytes read back from Redis exactly as a registration (fail closed)."""
        from ...errors import InvalidCiphertext
        from ...he.private import KEY_NONCE_BYTES, validate_public_key
        from . import StateUnavailable

        try:
            nonce, p0 = bytes(blob[:KEY_NONCE_BYTES]), bytes(blob[KEY_NONCE_BYTES:])
            checked = validate_public_key(nonce, p0, self.local.params)
            if checked[0] != key_id:
                raise InvalidCiphertext("key bytes do not hash to their key id")
        except InvalidCiphertext as exc:
            log.error("shared state: public key %s in Redis is malformed (%s)", key_id[:16], exc)
            raise StateUnavailable("shared state holds a malformed public key") from exc
        identity = owner.decode("utf-8", "replace") if isinstance(owner, bytes) else str(owner)
        self.local.install_checked(*checked, identity[:200])

    def take(self, key_id: str, slots: int, limit: int, charge_id: str | None = None):
        """The key's own lifetime allowance (no API keys), counted in Redis."""
        return self.state.quotas.take_total(
            key_id,
            slots,
            limit,
            charge_id or uuid.uuid4().hex,
            hash_key=self.prefix + "used",
            field=key_id,
            must_exist=self.prefix + "owner",
        )


class RedisKeyStore:
    """API keys: the key file (reloaded as today) plus keys issued into Redis, minus keys
    revoked in Redis. Refreshed by the state's background thread every SYNC_SECONDS; when
    Redis has not answered for MAX_STALE_SECONDS, calls fail closed (UNAVAILABLE).

    Revocations are monotonic: the worker keeps every revocation it has seen, whatever Redis
    holds later, and writes back those Redis lacks (a Redis that lost its data, an entry
    deleted by hand), so a revoked key is never accepted again while any replica that saw the
    revocation runs."""

    def __init__(self, state: RedisState, path: str) -> None:
        self.state = state
        self.file = KeyStore(path)
        self._shared: tuple[ApiKey, ...] = ()
        self._revoked: frozenset[bytes] = frozenset()  # every revocation seen, never shrinks
        self._version = object()  # never equal to a version read
        self._synced = -1e18
        self._logged: set[str] = set()  # malformed entries already logged

    def refresh(self, version, revoked_count: int = -1, *, force: bool = False) -> None:
        """Reload the Redis entries when their version changed, or Redis holds fewer
        revocations than this worker has seen (called by RedisState.sync)."""
        if force or version != self._version or 0 <= revoked_count < len(self._revoked):
            pipe = self.state.client.pipeline(transaction=True)
            pipe.hgetall(APIKEYS)
            pipe.smembers(REVOKED)
            entries, revoked = pipe.execute()
            self._shared = tuple(_parse_shared(entries, self._logged))
            in_redis = frozenset(_parse_revoked(revoked))
            missing = self._revoked - in_redis
            if missing:  # Redis lost them: write them back for every replica
                log.error(
                    "shared state at %s lacks %d revocation(s) this replica has seen; "
                    "writing them back",
                    self.state.where,
                    len(missing),
                )
                pipe = self.state.client.pipeline(transaction=True)
                pipe.sadd(REVOKED, *sorted(d.hex() for d in missing))
                pipe.incr(APIKEYS_VERSION)
                version = str(pipe.execute()[-1]).encode()  # as GET returns it
            self._revoked = self._revoked | in_redis
            self._version = version
        self._synced = time.monotonic()

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        revoked = self._revoked
        return tuple(k for k in (*self.file.keys, *self._shared) if k.digest not in revoked)

    def authenticate(self, metadata) -> ApiKey:
        from . import StateUnavailable

        bearer_token(metadata)  # a call without a key is UNAUTHENTICATED, whatever the state
        if time.monotonic() - self._synced > MAX_STALE_SECONDS:
            raise StateUnavailable(
                f"cannot check API key revocations: shared state at {self.state.where} is "
                "unreachable; try again shortly"
            )
        return find_key(self.keys, metadata)


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _parse_shared(entries: dict, logged: set[str] | None = None) -> list[ApiKey]:
    """Key entries read back from Redis, each checked like a key-file line. A malformed one
    (too long, nested too deep, anything the parser raises) is left out and logged once:
    fail closed for that entry, never for the worker."""
    keys: list[ApiKey] = []
    logged = set() if logged is None else logged
    for field, line in sorted(entries.items()):
        name = _text(field)[:64]
        try:
            text = _text(line)
            if len(text) > MAX_ENTRY_CHARS:
                raise ApiKeyFileError(f"entry is {len(text)} characters, above {MAX_ENTRY_CHARS}")
            (entry,) = parse_key_file(text, "shared state")
            if entry.key_id != _text(field):
                raise ApiKeyFileError("its id differs from its field")
        except Exception as exc:  # RecursionError, MemoryError...: only this entry is refused
            if name not in logged:
                if len(logged) < 1000:
                    logged.add(name)
                log.error("ignoring API key %r in shared state: %s", name, str(exc)[:200])
            continue
        keys.append(entry)
        if len(keys) >= MAX_KEYS:
            log.error("shared state holds more than %d API keys; ignoring the rest", MAX_KEYS)
            break
    return keys


def _parse_revoked(values) -> list[bytes]:
    out = []
    for value in values:
        text = _text(value)
        if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
            out.append(bytes.fromhex(text))
        else:
            log.error("ignoring a malformed revocation in shared state: %r", text[:80])
    return out


# ---------------------------------------------------------------------- `heml keys --state`
def publish_key(url: str, entry: ApiKey) -> None:
    """Add a key entry to Redis (``heml keys issue --state``): every replica accepts it
    within REVOCATION_SECONDS, without a key-file change."""
    client = connect(url)
    try:
        pipe = client.pipeline(transaction=True)
        pipe.hset(APIKEYS, entry.key_id, entry.to_json())
        pipe.srem(REVOKED, entry.digest.hex())
        pipe.incr(APIKEYS_VERSION)
        pipe.execute()
    finally:
        client.close()


def publish_revocation(url: str, key_id: str, digests: list[bytes]) -> bool:
    """Revoke ``key_id`` in Redis (``heml keys revoke --state``): its entry there goes and the
    hashes of its keys (from the key file and Redis) are listed as revoked, so replicas whose
    own key file still holds it refuse it too. Returns whether anything was found."""
    client = connect(url)
    try:
        line = client.hget(APIKEYS, key_id)
        found = list(digests)
        if line is not None:  # parsed defensively, like the replicas do
            found.extend(k.digest for k in _parse_shared({key_id: line}))
        if not found and line is None:
            return False
        pipe = client.pipeline(transaction=True)
        pipe.hdel(APIKEYS, key_id)
        for digest in found:
            pipe.sadd(REVOKED, digest.hex())
        pipe.incr(APIKEYS_VERSION)
        pipe.execute()
        return True
    finally:
        client.close()


def key_file_digests(path: str, key_id: str) -> list[bytes]:
    """The hashes of ``key_id``'s entries in a key file (before it is revoked there)."""
    from ..auth import read_key_file

    return [k.digest for k in read_key_file(path) if k.key_id == key_id]


__all__ = [
    "REVOCATION_SECONDS",
    "RedisState",
    "parse_url",
    "ping",
    "publish_key",
    "publish_revocation",
]
