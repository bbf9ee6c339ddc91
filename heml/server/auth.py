"""API keys: the key file, issuing and revoking keys, and checking ``authorization`` metadata.

A key is ``heml_`` + 43 base64url characters (32 random bytes). The server stores only its
SHA-256 in the key file, one JSON object per line::

    {"id": "alice", "sha256": "<64 hex>", "created": "2025-01-01T00:00:00Z",
     "predictions_per_minute": 6000, "max_concurrent": 4}

A fast hash is enough: the key is 256 bits of randomness, so a stolen key file cannot be
searched for keys (no dictionary to try). Quotas are optional per key (``null`` = unlimited).
Checking a key hashes it once and compares the digest with every entry using
``hmac.compare_digest``, without stopping at a match, so the time taken does not depend on
which entry (if any) matched. The file is written atomically (temporary file + rename) with
mode 0600 under a ``FILE.lock`` lock; servers notice changes within a second and reload, so
``heml keys issue``/``revoke`` take effect without a restart. A file that group or others can
write is refused (anyone who can append a line can let themselves in).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .._files import write_atomically
from ..errors import KeyFileError

log = logging.getLogger("heml.server")

KEY_PREFIX = "heml_"
KEY_BYTES = 32
MAX_KEYS = 4096
RELOAD_INTERVAL = 1.0  # seconds between checks of the key file for changes
KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_FIELDS = {"id", "sha256", "created", "predictions_per_minute", "max_concurrent"}


class ApiKeyFileError(KeyFileError, ValueError):
    """An API key file that cannot be read, is malformed, or is writable by others."""


class AuthError(Exception):
    """The call carries no valid API key (answered with UNAUTHENTICATED)."""


@dataclass(frozen=True)
class ApiKey:
    """One client's entry: who it is, the hash of its key, and its quotas (None = no limit)."""

    key_id: str
    digest: bytes
    predictions_per_minute: int | None = None
    max_concurrent: int | None = None
    created: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.key_id,
                "sha256": self.digest.hex(),
                "created": self.created,
                "predictions_per_minute": self.predictions_per_minute,
                "max_concurrent": self.max_concurrent,
            }
        )


def new_api_key() -> str:
    """A fresh random API key (shown to its owner once, never stored)."""
    raw = secrets.token_bytes(KEY_BYTES)
    return KEY_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _limit(entry: dict, name: str, where: str) -> int | None:
    value = entry.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiKeyFileError(f"{where}: {name} must be a positive integer or null, got {value!r}")
    return value


def parse_key_file(text: str, source: str = "key file") -> list[ApiKey]:
    keys: list[ApiKey] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source} line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ApiKeyFileError(f"{where}: not a JSON object ({exc.msg})") from None
        if not isinstance(entry, dict):
            raise ApiKeyFileError(f"{where}: not a JSON object")
        unknown = sorted(set(entry) - _FIELDS)
        if unknown:
            raise ApiKeyFileError(f"{where}: unknown field(s) {', '.join(unknown)}")
        key_id = entry.get("id")
        if not isinstance(key_id, str) or not KEY_ID.match(key_id):
            raise ApiKeyFileError(
                f"{where}: id must be 1-64 letters, digits or . _ @ - (starting with a letter "
                "or digit)"
            )
        if key_id in seen:
            raise ApiKeyFileError(f"{where}: duplicate id {key_id!r}")
        digest = entry.get("sha256")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ApiKeyFileError(f"{where}: sha256 must be 64 lowercase hex digits")
        created = entry.get("created")
        keys.append(
            ApiKey(
                key_id,
                bytes.fromhex(digest),
                _limit(entry, "predictions_per_minute", where),
                _limit(entry, "max_concurrent", where),
                created if isinstance(created, str) else None,
            )
        )
        seen.add(key_id)
    if len(keys) > MAX_KEYS:
        raise ApiKeyFileError(f"{source} has {len(keys)} keys; at most {MAX_KEYS} are supported")
    return keys


def _check_mode(path: Path, st: os.stat_result) -> None:
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ApiKeyFileError(
            f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"anyone who can add a line can let themselves in: chmod 600 {path}"
        )


def read_key_file(path: str | os.PathLike) -> list[ApiKey]:
    """Parse and check an API key file (raises ApiKeyFileError with the reason)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ApiKeyFileError(f"{path} is not a regular file")
            _check_mode(path, st)
            data = f.read(16 << 20)
    except FileNotFoundError:
        raise ApiKeyFileError(
            f"API key file {path} does not exist; create it with `heml keys issue --api-keys "
            f"{path} --id NAME`"
        ) from None
    except OSError as exc:
        raise ApiKeyFileError(f"cannot read API key file {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiKeyFileError(f"{path} is not UTF-8 text") from None
    return parse_key_file(text, str(path))


# ---------------------------------------------------------------------- editing the file
@contextlib.contextmanager
def _locked(path: Path):
    """Serialize editors of one key file (readers never block: writes are atomic renames)."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_atomically(path: Path, keys: Iterable[ApiKey]) -> None:
    write_atomically(path, "".join(k.to_json() + "\n" for k in keys), private=True)


def issue_key(
    path: str | os.PathLike,
    key_id: str,
    *,
    predictions_per_minute: int | None = None,
    max_concurrent: int | None = None,
) -> str:
    """Create a key for ``key_id``, add its hash to the file (mode 0600) and return the key.

    The key itself is not stored anywhere: show it to its owner once.
    """
    path = Path(path)
    if not KEY_ID.match(key_id):
        raise ApiKeyFileError(
            f"invalid key id {key_id!r}: use 1-64 letters, digits or . _ @ - (starting with a "
            "letter or digit)"
        )
    for name, value in (
        ("predictions_per_minute", predictions_per_minute),
        ("max_concurrent", max_concurrent),
    ):
        if value is not None and value < 1:
            raise ApiKeyFileError(f"{name} must be at least 1 (or unset for no limit)")
    with _locked(path):
        keys = read_key_file(path) if path.exists() else []
        if any(k.key_id == key_id for k in keys):
            raise ApiKeyFileError(
                f"{path} already has a key with id {key_id!r}; revoke it first or pick another id"
            )
        key = new_api_key()
        created = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        entry = ApiKey(key_id, key_digest(key), predictions_per_minute, max_concurrent, created)
        _write_atomically(path, [*keys, entry])
    return key


def revoke_key(path: str | os.PathLike, key_id: str) -> bool:
    """Remove ``key_id`` from the file; returns False if there was no such key."""
    path = Path(path)
    with _locked(path):
        keys = read_key_file(path)
        kept = [k for k in keys if k.key_id != key_id]
        if len(kept) == len(keys):
            return False
        _write_atomically(path, kept)
    return True


# ---------------------------------------------------------------------- the server's view
def bearer_token(metadata) -> str:
    """The key from ``authorization: Bearer <key>`` metadata (raises AuthError)."""
    values = [v for k, v in (metadata or ()) if k == "authorization"]
    if not values:
        raise AuthError("missing API key: send the metadata 'authorization: Bearer <key>'")
    if len(values) > 1:
        raise AuthError("more than one authorization metadata entry")
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise AuthError("malformed authorization metadata: expected 'Bearer <key>'")
    return token


class KeyStore:
    """The keys a worker accepts; reloads the file when it changes (checked once a second).

    A reload that fails (file removed, malformed, made group-writable) keeps the previous keys
    and logs the reason, so a bad edit cannot lock everyone out or let anyone in.
    """

    def __init__(self, path: str | os.PathLike, reload_interval: float = RELOAD_INTERVAL) -> None:
        self.path = Path(path)
        self.reload_interval = reload_interval
        self._lock = threading.Lock()
        self._keys = tuple(read_key_file(self.path))
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()
        self._warn_if_readable()

    def _file_stamp(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode)

    def _warn_if_readable(self) -> None:
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_mode & 0o044:
                log.warning(
                    "API key file %s is readable by group or others; it holds only hashes, "
                    "but chmod 600 is advised",
                    self.path,
                )

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        self._maybe_reload()
        return self._keys

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.reload_interval:
            return
        with self._lock:
            if now - self._checked < self.reload_interval:
                return
            self._checked = now
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                keys = tuple(read_key_file(self.path))
            except ApiKeyFileError as exc:
                log.error("keeping the previous API keys: %s", exc)  # pragma: no mutate, a log line
                return
            self._keys = keys
            # pragma: no mutate start, a log line
            log.info("reloaded %d API key(s) from %s", len(keys), self.path)
            # pragma: no mutate end

    def authenticate(self, metadata) -> ApiKey:
        """The entry whose key the call carries (raises AuthError)."""
        return find_key(self.keys, metadata)


def find_key(keys: Iterable[ApiKey], metadata) -> ApiKey:
    """The entry whose key the call's bearer token is, compared in constant time against every
    entry (no early exit: the time does not say which entry matched). Raises AuthError."""
    digest = key_digest(bearer_token(metadata))
    found = None
    for entry in keys:
        if hmac.compare_digest(digest, entry.digest):
            found = entry
    if found is None:
        raise AuthError("invalid API key")
    return found
