"""Where a server keeps what its calls share: API keys, per-key quotas, model-privacy keys.

One small interface, two backends, chosen by ``heml serve --state``:

* ``embedded`` (the default; no service needed): the key file (heml.server.auth.KeyStore), the
  mmap quota table every worker of this host shares (heml.server.quota.QuotaTable) and each
  worker's own model-privacy key store (heml.he.private.PublicKeyStore). Exact on one host;
  every replica of a cluster counts on its own.
* ``redis://host:port/db`` (or ``rediss://`` for TLS): the same quotas, the key registry and
  API key revocation kept in one Redis and changed by Lua scripts, so every replica sees one
  count (heml.server.state.redis_backend).

A backend offers three things (any may be None when the server does not use it):

* ``keys.authenticate(metadata) -> ApiKey`` (raises AuthError, or StateUnavailable);
* ``quotas``: ``take`` (token bucket), ``take_total`` (an allowance that never refills),
  ``acquire``/``release`` (calls in flight), each given an id unique to the charge or call so
  a retry after a lost reply cannot count twice, and ``void`` (undo the charges of a call that
  failed because the state could not be reached);
* ``private_keys(served)``: the registry of a model-privacy model's public keys
  (``register``, ``in``, ``take``), validated by heml.he.private before anything is kept.

Failures to reach shared state raise StateUnavailable; callers answer UNAVAILABLE (fail closed).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from ...errors import HemlError
from ..auth import KeyStore
from ..quota import QuotaTable, QuotaTableFull

__all__ = [
    "EMBEDDED",
    "STATE_URL_ENV",
    "EmbeddedQuotas",
    "EmbeddedState",
    "StateDataLost",
    "StateUnavailable",
    "check_state_url",
    "open_state",
]

EMBEDDED = "embedded"


class StateUnavailable(HemlError, RuntimeError):
    """The shared state cannot be reached or holds malformed data (answered UNAVAILABLE)."""


class StateDataLost(HemlError, RuntimeError):
    """The shared state lost counts that cannot be rebuilt (model-privacy allowances after
    Redis lost its data): answered FAILED_PRECONDITION until an operator acts."""


class QuotaFull(RuntimeError):
    """No room for another key's record (answered RESOURCE_EXHAUSTED)."""


STATE_URL_ENV = "HEML_STATE_URL"


def check_state_url(url: str | None) -> str | None:
    """Normalize ``--state``: None/'embedded' -> None, a redis:// or rediss:// URL as given,
    'env' -> the URL in the environment variable HEML_STATE_URL (so a password in it is not
    shown by ``ps``, as a command-line argument would be). Raises ValueError with the remedy
    for anything else."""
    if url == "env":
        url = os.environ.get(STATE_URL_ENV, "")
        if not url:
            raise ValueError(
                f"--state env reads the URL from {STATE_URL_ENV}, which is not set; "
                f"export {STATE_URL_ENV}=redis://host:6379/0"
            )
    if url is None or url == EMBEDDED:
        return None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(  # the value is not quoted: it may hold a password
            "--state must be 'embedded', 'env' or a redis://host:port/db URL (rediss:// for "
            "TLS, unix:///path for a socket)"
        )
    from .redis_backend import parse_url

    parse_url(url)  # raises ValueError with the reason
    return url


class EmbeddedQuotas:
    """The host-local quota table behind the quota interface (charge ids are not needed: the
    table is updated under a lock in shared memory, no reply can be lost)."""

    def __init__(self, table: QuotaTable, worker: int) -> None:
        self.table = table
        self.worker = worker

    def take(self, key_id: str, cost: int, per_minute: int, charge_id: str) -> float | None:
        try:
            return self.table.take(key_id, cost, per_minute)
        except QuotaTableFull as exc:
            raise QuotaFull(str(exc)) from exc

    def take_total(self, name: str, cost: int, limit: int, charge_id: str) -> int | None:
        try:
            return self.table.take_total(name, cost, limit)
        except QuotaTableFull as exc:
            raise QuotaFull(str(exc)) from exc

    def acquire(self, key_id: str, limit: int, call_id: str) -> int | None:
        try:
            return self.table.acquire(key_id, limit, self.worker)
        except QuotaTableFull as exc:
            raise QuotaFull(str(exc)) from exc

    def release(self, key_id: str, call_id: str) -> None:
        self.table.release(key_id, self.worker)

    def void(self, charge_ids: list[str]) -> None:
        """Nothing to undo: embedded charges never fail half way."""


class EmbeddedState:
    """Today's single-host state (see the module docstring)."""

    name = EMBEDDED

    def __init__(self, keys: KeyStore | None, quotas: EmbeddedQuotas | None) -> None:
        self.keys = keys
        self.quotas = quotas

    def private_keys(self, served) -> Any:
        return served.private.keys

    def close(self) -> None:
        if self.quotas is not None:
            self.quotas.table.close()


def open_state(config, worker: int = 0, runtime=None):
    """The state backend for one worker (called after the fork: may start threads)."""
    url = check_state_url(getattr(config, "state", None))
    if url is not None:
        from .redis_backend import RedisState

        return RedisState(url, api_keys=config.api_keys)
    keys = KeyStore(config.api_keys) if config.api_keys else None
    quotas = None
    if keys is not None:
        path = getattr(runtime, "quota_path", None)
        if path is None:  # a private table, unlinked at once (the mapping keeps it)
            folder = tempfile.mkdtemp(prefix="heml-quota-")
            path = os.path.join(folder, "quota")
            table = QuotaTable.create(path, workers=1)
            os.unlink(path)
            os.rmdir(folder)
            worker = 0
        else:
            table = QuotaTable(path)
        quotas = EmbeddedQuotas(table, worker)
    return EmbeddedState(keys, quotas)
