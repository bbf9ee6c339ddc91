"""Client key material: SEAL secret keys per parameter set, kept in the client process.

The default scoring path needs no evaluation or public keys: the client encrypts with its
secret key (seeded symmetric CKKS) and the server only needs the parameters. This module is
never imported by heml.server (tests check that).

Key files are JSON holding SEAL's own secret-key serialization (base64), written with owner-only
permissions (0600). Anyone who holds the file can decrypt every reply made for it.

Remote models never use those stored keys directly: each (server, model) gets its own key,
derived from the key set's 32-byte master seed (``KeySet.for_peer``, HKDF-SHA256 then a
SHAKE-256 stream sampled into a uniform ternary s). A server that learns its key learns nothing
about the keys used with other servers or models. A key file without a seed (written by an
older heml) gets one added on first open; the seed is stored beside the keys.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import struct
import threading
import warnings
from pathlib import Path

import numpy as np
import tenseal.sealapi as seal

from .._files import write_atomically
from ..errors import HemlError, KeyFileError
from . import kernels, seal_bridge
from .params import HEParams, check_params

KEY_FILE_FORMAT = "heml-secret-keys"
KEY_FILE_VERSION = 1
MASTER_SEED_BYTES = 32


def _primes(params) -> tuple[int, ...]:
    return tuple(params.primes) if hasattr(params, "primes") else (params.q,)


class SecretKey:
    """One SEAL secret key and its ternary coefficient vector s (for numpy decryption)."""

    def __init__(self, params, sk: seal.SecretKey) -> None:
        """``params``: HEParams (one prime) or RNSParams (several; model-privacy mode)."""
        self.params = params
        self._sk = sk
        first = HEParams(params.n, _primes(params)[0])
        words = seal_bridge.secret_key_ntt(sk, params.n)
        coeffs = kernels.for_params(first).intt(words)
        s = np.zeros(params.n, dtype=np.int8)
        s[coeffs == 1] = 1
        s[coeffs == np.uint64(first.q - 1)] = -1
        if np.count_nonzero(s) != np.count_nonzero(coeffs):
            raise KeyFileError("secret key is not ternary; the key file is corrupt or foreign")
        self.s = s
        # NTT(s) modulo each prime: what encryption multiplies the public polynomial a by
        self.s_ntt = np.stack(
            [
                kernels.for_params(HEParams(params.n, q)).ntt(
                    np.where(s < 0, np.uint64(q - 1), s.astype(np.uint64))
                )
                for q in _primes(params)
            ]
        )

    @classmethod
    def generate(cls, params) -> SecretKey:
        return cls(params, seal.KeyGenerator(params.context).secret_key())

    @property
    def primes(self) -> tuple[int, ...]:
        return _primes(self.params)

    @property
    def seal_key(self) -> seal.SecretKey:
        return self._sk

    def to_json(self) -> dict:
        blob = seal_bridge.save_bytes(self._sk)
        # one prime: "q"; several (model-privacy mode): "primes"
        moduli = {"primes": list(self.primes)} if len(self.primes) > 1 else {"q": self.params.q}
        return {"n": self.params.n, **moduli, "secret_key": base64.b64encode(blob).decode()}

    @classmethod
    def from_json(cls, entry: dict) -> SecretKey:
        from .private import RNSParams

        try:
            if "primes" in entry:  # model-privacy mode (RNSParams checks 128-bit security)
                params = RNSParams(int(entry["n"]), tuple(int(q) for q in entry["primes"]))
            else:
                params = HEParams(int(entry["n"]), int(entry["q"]))
                check_params(params.n, params.q)
            blob = base64.b64decode(entry["secret_key"], validate=True)
        except (KeyError, TypeError, ValueError, HemlError) as exc:
            raise KeyFileError(f"malformed key entry: {exc}") from exc
        if len(blob) > 1 << 20:
            raise KeyFileError("secret key entry is too large")
        try:
            seal_bridge.unwrap(blob)  # header and size checks before SEAL parses it
            sk = seal.SecretKey()
            seal_bridge.load_from_bytes(sk, params.context, blob)
        except Exception as exc:
            raise KeyFileError(f"cannot load secret key for N={params.n}: {exc}") from exc
        return cls(params, sk)


class KeySet:
    """The client's secret keys, one per parameter set, created on first use."""

    def __init__(
        self, keys: dict[HEParams, SecretKey] | None = None, master_seed: bytes | None = None
    ) -> None:
        self._keys: dict[HEParams, SecretKey] = dict(keys or {})
        self._lock = threading.Lock()
        self.path: Path | None = None
        self._seed = master_seed if master_seed is not None else os.urandom(MASTER_SEED_BYTES)
        self._epochs: dict[str, int] = {}  # retired (server, model) keys: sha256 label -> count

    def get(self, params: HEParams) -> SecretKey:
        with self._lock:
            key = self._keys.get(params)
            if key is None:
                key = SecretKey.generate(params)
                self._keys[params] = key
                if self.path is not None:
                    self._write(self.path)
            return key

    def ensure(self, params_list) -> None:
        for p in params_list:
            self.get(p)

    def __len__(self) -> int:
        return len(self._keys)

    def save(self, path: str | os.PathLike) -> Path:
        with self._lock:
            return self._write(Path(path))

    def _write(self, path: Path) -> Path:
        doc = {
            "format": KEY_FILE_FORMAT,
            "version": KEY_FILE_VERSION,
            "warning": "secret keys: whoever holds this file can decrypt your predictions",
            "keys": [k.to_json() for k in self._keys.values()],
            **self._derivation_json(),
        }
        return write_atomically(path, json.dumps(doc), private=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> KeySet:
        path = Path(path)
        check_key_file_mode(path)
        try:
            doc = json.loads(path.read_text())
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {str(path)!r}: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise KeyFileError(f"{path.name} is not a heml key file (invalid JSON)") from exc
        if not isinstance(doc, dict) or doc.get("format") != KEY_FILE_FORMAT:
            raise KeyFileError(f"{path.name} is not a heml key file")
        if doc.get("version") != KEY_FILE_VERSION:
            raise KeyFileError(f"{path.name}: unsupported key file version {doc.get('version')!r}")
        keys = {}
        for entry in doc.get("keys", []):
            key = SecretKey.from_json(entry)
            keys[key.params] = key
        seed, epochs = _derivation_from_json(doc, path.name)
        ks = cls(keys, seed)
        ks._epochs = epochs
        ks.path = path
        if seed is None:  # written by an older heml: add a seed (the stored keys stay)
            ks._write(path)
        return ks

    @classmethod
    def open(cls, path: str | os.PathLike) -> KeySet:
        """Load the key file at ``path``, or start an empty set that will be saved there."""
        path = Path(path)
        if path.exists():
            return cls.load(path)
        ks = cls()
        ks.path = path
        ks._write(path)
        return ks

    # per-(server, model) keys: see the module docstring and the section at the end
    def for_peer(self, server: str, model: str) -> PeerKeys:
        """The keys for one model on one server (a fresh derivation after each ``retire``)."""
        with self._lock:
            epoch = self._epochs.get(_label_id(server, model), 0)
        return PeerKeys(self._seed, peer_label(server, model, epoch))

    def retire(self, server: str, model: str) -> None:
        """Never derive the current key for (server, model) again (saved to the key file)."""
        with self._lock:
            label = _label_id(server, model)
            self._epochs[label] = self._epochs.get(label, 0) + 1
            if self.path is not None:
                self._write(self.path)

    def _derivation_json(self) -> dict:
        return {"master_seed": base64.b64encode(self._seed).decode(), "retired": self._epochs}


# ---------------------------------------------------------------------- key file permissions
def check_key_file_mode(path: Path) -> None:
    """Refuse a key file that group or others may write; warn when they may read it."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # reading reports the real problem
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise KeyFileError(
            f"{path} is writable by group or others; run `chmod 600 {path}` (anyone who can "
            "replace the file chooses your keys)"
        )
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings.warn(
            f"{path} is readable by group or others: they can decrypt every reply made for it; "
            f"run `chmod 600 {path}`",
            KeyFileWarning,
            stacklevel=3,
        )


class KeyFileWarning(UserWarning):
    """A key file that others can read."""


# ---------------------------------------------------------------------- per-peer derivation
_HKDF_SALT = b"heml/v1 secret key derivation"


def _hkdf_sha256(seed: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 HKDF-SHA256 (extract with a fixed salt, then expand)."""
    prk = hmac.new(_HKDF_SALT, seed, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def peer_label(server: str, model: str, epoch: int = 0) -> bytes:
    """What a derived key is bound to: the server as the client addresses it, the model."""
    return json.dumps([server.strip().lower(), model, epoch]).encode()


def derive_ternary(seed: bytes, label: bytes, params) -> np.ndarray:
    """A uniform ternary vector of length n from (seed, label, params): HKDF-SHA256 gives a
    32-byte key, SHAKE-256 of it a byte stream; bytes below 255 give b mod 3 - 1 (uniform)."""
    info = label + b"|" + json.dumps([params.n, list(_primes(params))]).encode()
    key = _hkdf_sha256(seed, info)
    n = params.n
    need = n + n // 8 + 64  # 1/256 of the bytes are rejected: this almost always suffices
    while True:
        stream = np.frombuffer(hashlib.shake_256(key).digest(need), dtype=np.uint8)
        kept = stream[stream < 255]
        if kept.size >= n:
            return (kept[:n] % 3).astype(np.int8) - 1
        need *= 2


def secret_key_from_ternary(params, s: np.ndarray) -> SecretKey:
    """A SEAL secret key holding the ternary s (SEAL's serialization of an NTT-form plaintext
    at the key level, one block of n words per prime)."""
    primes = _primes(params)
    n = params.n
    words = np.concatenate(
        [
            kernels.for_params(HEParams(n, q)).ntt(
                np.where(s < 0, np.uint64(q - 1), s.astype(np.uint64))
            )
            for q in primes
        ]
    ).astype("<u8")
    header = seal_bridge._header
    dyn = header(16 + 8 + words.nbytes) + struct.pack("<Q", words.size) + words.tobytes()
    parms_id = list(params.context.key_parms_id())
    body = struct.pack("<4Q", *parms_id) + struct.pack("<Qd", words.size, 1.0) + dyn
    sk = seal.SecretKey()
    seal_bridge.load_from_bytes(sk, params.context, header(16 + len(body)) + body)
    return SecretKey(params, sk)


class PeerKeys:
    """The keys one remote model is scored with: derived per parameter set from the master
    seed and (server, model, epoch); same ``get`` as KeySet. Never written anywhere."""

    def __init__(self, seed: bytes, label: bytes) -> None:
        self._seed = seed
        self.label = label
        self._keys: dict = {}
        self._lock = threading.Lock()

    def get(self, params) -> SecretKey:
        with self._lock:
            key = self._keys.get(params)
            if key is None:
                s = derive_ternary(self._seed, self.label, params)
                key = self._keys[params] = secret_key_from_ternary(params, s)
            return key


def _label_id(server: str, model: str) -> str:
    return hashlib.sha256(peer_label(server, model)).hexdigest()[:32]


def _derivation_from_json(doc: dict, name: str) -> tuple[bytes | None, dict[str, int]]:
    raw = doc.get("master_seed")
    if raw is None:
        return None, {}
    try:
        seed = base64.b64decode(raw, validate=True)
        epochs = {str(k): int(v) for k, v in dict(doc.get("retired", {})).items()}
    except (TypeError, ValueError) as exc:
        raise KeyFileError(f"{name}: malformed master seed or retired list: {exc}") from exc
    if len(seed) != MASTER_SEED_BYTES:
        raise KeyFileError(f"{name}: the master seed must be {MASTER_SEED_BYTES} bytes")
    return seed, epochs
