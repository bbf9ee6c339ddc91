"""Client key material: SEAL secret keys per parameter set, kept in the client process.

The default scoring path needs no evaluation or public keys: the client encrypts with its
secret key (seeded symmetric CKKS) and the server only needs the parameters. This module is
never imported by heml.server (tests check that).

Key files are JSON holding SEAL's own secret-key serialization (base64), written with owner-only
permissions (0600). Anyone who holds the file can decrypt every reply made for it.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path

import numpy as np
import tenseal.sealapi as seal

from .._files import write_atomically
from ..errors import HemlError, KeyFileError
from . import kernels, seal_bridge
from .params import HEParams, check_params

KEY_FILE_FORMAT = "heml-secret-keys"
KEY_FILE_VERSION = 1


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

    def __init__(self, keys: dict[HEParams, SecretKey] | None = None) -> None:
        self._keys: dict[HEParams, SecretKey] = dict(keys or {})
        self._lock = threading.Lock()
        self.path: Path | None = None

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
        }
        return write_atomically(path, json.dumps(doc), private=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> KeySet:
        path = Path(path)
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
        ks = cls(keys)
        ks.path = path
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
