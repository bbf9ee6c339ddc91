"""Moving polynomial data between numpy and SEAL objects (tenseal.sealapi).

``tenseal.sealapi`` exposes no buffer access: ``save``/``load`` take file paths and always
zstd-compress. heml needs the raw words, so this module offers two routes:

* serialization (always available): save to an in-memory file, decompress, parse SEAL's
  documented layout; load from a blob built here (uncompressed).
* zero copy (fast, CPython only): a numpy view of the object's data buffer, found through
  pybind11's instance layout and SEAL 4's class layout. Every access re-checks the object's
  header words (size, N, coefficient-modulus count, buffer length) against the object's own
  accessors, and a self-test at first use compares both routes; if anything disagrees the
  zero-copy route is switched off for the process (``HEML_ZERO_COPY=0`` forces that too).

Only data this process made or validated is ever written into a SEAL object.
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
import sys
import sysconfig
import threading

import numpy as np
import tenseal.sealapi as seal
import zstandard

from .params import HEParams

SEAL_MAGIC = 0xA15E
SEAL_VERSION = (4, 3)
COMPR_NONE, COMPR_ZSTD = 0, 2
_HEADER = struct.Struct("<HBBBBHQ")
_MAX_BLOB = 1 << 26

# word offsets in SEAL 4's Ciphertext (parms_id[4], is_ntt, size, N, L, scale, correction,
# DynArray{pool[2], capacity, size, data*})
_CT_SIZE, _CT_N, _CT_L, _CT_CAP, _CT_LEN, _CT_PTR = 5, 6, 7, 12, 13, 14
# Plaintext (parms_id[4], coeff_count, scale, DynArray{pool[2], capacity, size, data*})
_PT_COUNT, _PT_CAP, _PT_LEN, _PT_PTR = 4, 8, 9, 10

_local = threading.local()


# ---------------------------------------------------------------------- serialization route
def _memfd() -> tuple[int, str]:
    fd = getattr(_local, "fd", None)
    if fd is None:
        fd = os.memfd_create("heml-seal", 0)
        _local.fd = fd
    return fd, f"/proc/self/fd/{fd}"


def save_bytes(obj) -> bytes:
    """``obj.save`` into memory (SEAL's format, zstd-compressed)."""
    fd, path = _memfd()
    os.ftruncate(fd, 0)
    obj.save(path)
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0)


def load_from_bytes(obj, context, blob: bytes) -> None:
    fd, path = _memfd()
    os.ftruncate(fd, 0)
    os.pwrite(fd, blob, 0)
    if context is None:
        obj.load(path)
    else:
        obj.load(context, path)


def _header(size: int, compr: int = COMPR_NONE) -> bytes:
    return _HEADER.pack(SEAL_MAGIC, 16, SEAL_VERSION[0], SEAL_VERSION[1], compr, 0, size)


def unwrap(blob: bytes) -> bytes:
    """A SEAL serialization -> its uncompressed body (header checked)."""
    if len(blob) < _HEADER.size:
        raise ValueError("SEAL blob shorter than its header")
    magic, hsize, _vmaj, _vmin, compr, _res, size = _HEADER.unpack_from(blob)
    if magic != SEAL_MAGIC or hsize != 16 or size != len(blob) or size > _MAX_BLOB:
        raise ValueError("not a SEAL serialization")
    body = blob[_HEADER.size :]
    if compr == COMPR_ZSTD:
        body = zstandard.ZstdDecompressor().decompress(body, max_output_size=_MAX_BLOB)
    elif compr != COMPR_NONE:
        raise ValueError(f"unsupported SEAL compression mode {compr}")
    return body


def _parse_dynarray(body: bytes, offset: int) -> tuple[np.ndarray, int]:
    inner = unwrap(body[offset : offset + _HEADER.unpack_from(body, offset)[6]])
    (count,) = struct.unpack_from("<Q", inner)
    data = np.frombuffer(inner, dtype=np.uint64, count=count, offset=8).copy()
    return data, offset + _HEADER.unpack_from(body, offset)[6]


def ciphertext_words_serialized(ct) -> np.ndarray:
    """All data words of a (non-seeded) ciphertext via save()."""
    body = unwrap(save_bytes(ct))
    data, _ = _parse_dynarray(body, 32 + 1 + 5 * 8)
    return data


def plaintext_words_serialized(pt) -> np.ndarray:
    body = unwrap(save_bytes(pt))
    data, _ = _parse_dynarray(body, 32 + 8 + 8)
    return data


def ciphertext_from_words(params: HEParams, words: np.ndarray, *, ntt: bool) -> seal.Ciphertext:
    """A size-2 SEAL ciphertext holding ``words`` (shape (2, N)), built via an uncompressed blob."""
    words = np.ascontiguousarray(words, dtype=np.uint64).reshape(2, params.n)
    if np.any(words >= np.uint64(params.q)):
        raise ValueError("ciphertext words must be below q")
    dyn = _header(16 + 8 + words.nbytes) + struct.pack("<Q", words.size) + words.tobytes()
    body = (
        struct.pack("<4Q", *params.parms_id)
        + struct.pack("<B", 1 if ntt else 0)
        + struct.pack("<QQQdQ", 2, params.n, 1, 1.0, 1)
        + dyn
    )
    ct = seal.Ciphertext(params.context)
    load_from_bytes(ct, params.context, _header(16 + len(body)) + body)
    return ct


# ---------------------------------------------------------------------- zero-copy route
def _zero_copy_supported_platform() -> bool:
    return (
        sys.implementation.name == "cpython"
        and struct.calcsize("P") == 8
        and not sysconfig.get_config_var("Py_GIL_DISABLED")
        and sys.byteorder == "little"
        and os.environ.get("HEML_ZERO_COPY", "1") != "0"
    )


def _object_words(obj, count: int) -> np.ndarray:
    # pybind11 stores the C++ object pointer right after the PyObject header (16 bytes)
    addr = ctypes.c_void_p.from_address(id(obj) + 16).value
    if not addr:
        raise RuntimeError("null SEAL object pointer")
    return np.ctypeslib.as_array((ctypes.c_uint64 * count).from_address(addr))


def _buffer_view(ptr: int, length: int) -> np.ndarray:
    if not ptr or length <= 0:
        raise RuntimeError("empty SEAL buffer")
    return np.ctypeslib.as_array((ctypes.c_uint64 * length).from_address(ptr))


def ciphertext_view(ct, *, expect: tuple[int, int, int] | None = None) -> np.ndarray:
    """Zero-copy view of a ciphertext's data (size × L × N words). Keep ``ct`` alive.

    The header words are checked against the object's accessors, or against ``expect`` =
    (size, N, L) for objects without accessors (``Serializable<Ciphertext>``).
    """
    w = _object_words(ct, 15)
    size, n, levels = int(w[_CT_SIZE]), int(w[_CT_N]), int(w[_CT_L])
    length, cap = int(w[_CT_LEN]), int(w[_CT_CAP])
    want = expect or (ct.size(), ct.poly_modulus_degree(), ct.coeff_modulus_size())
    if (size, n, levels) != tuple(want) or length != size * n * levels or cap < length:
        raise RuntimeError("SEAL ciphertext layout is not the one heml was verified against")
    return _buffer_view(int(w[_CT_PTR]), length)


def set_ntt_form(ct, ntt_form: bool) -> bool:
    """Mark a ciphertext as NTT or coefficient form without transforming it (its words are
    about to be overwritten). Checks the flag byte against ``is_ntt_form()`` before and after;
    returns False (and changes nothing) when the layout is not the verified one."""
    flag = ctypes.c_uint8.from_address(ctypes.c_void_p.from_address(id(ct) + 16).value + 32)
    if flag.value not in (0, 1) or bool(flag.value) != ct.is_ntt_form():
        return False
    flag.value = 1 if ntt_form else 0
    if ct.is_ntt_form() != ntt_form:  # pragma: no cover - layout drift
        flag.value = 0 if ntt_form else 1
        return False
    return True


class ViewCache:
    """Zero-copy views of long-lived SEAL objects, re-derived only when SEAL reallocates.

    The header words are re-read on every access (a numpy view of the object itself), so a
    moved or resized buffer is noticed; the expensive part, building the views, is cached.
    """

    def __init__(self) -> None:
        self._cache: dict[int, tuple] = {}

    def ciphertext(self, ct) -> np.ndarray:
        return self._view(ct, 15, _CT_PTR, _CT_LEN, ciphertext_view)

    def plaintext(self, pt) -> np.ndarray:
        return self._view(pt, 11, _PT_PTR, _PT_LEN, plaintext_view)

    def _view(self, obj, header_words: int, ptr: int, length: int, make) -> np.ndarray:
        hit = self._cache.get(id(obj))
        if hit is not None:
            owner, header, addr, size, view = hit
            if owner is obj and int(header[ptr]) == addr and int(header[length]) == size:
                return view
        view = make(obj)
        header = _object_words(obj, header_words)
        self._cache[id(obj)] = (obj, header, int(header[ptr]), view.size, view)
        return view


def plaintext_view(pt) -> np.ndarray:
    w = _object_words(pt, 11)
    count, length, cap = int(w[_PT_COUNT]), int(w[_PT_LEN]), int(w[_PT_CAP])
    if count != pt.coeff_count() or length != count or cap < length:
        raise RuntimeError("SEAL plaintext layout is not the one heml was verified against")
    return _buffer_view(int(w[_PT_PTR]), length)


@functools.lru_cache(maxsize=1)
def zero_copy_enabled() -> bool:
    """True when the zero-copy route is supported here and agrees with serialization."""
    if not _zero_copy_supported_platform():
        return False
    try:
        from .params import default_params

        params = default_params(2048)
        rng = np.random.default_rng(7)
        words = rng.integers(0, params.q, size=(2, params.n), dtype=np.uint64)
        ct = ciphertext_from_words(params, words, ntt=True)
        if not np.array_equal(ciphertext_view(ct), words.reshape(-1)):
            return False
        if not np.array_equal(ciphertext_words_serialized(ct), words.reshape(-1)):
            return False
        pt = seal.Plaintext()
        seal.CKKSEncoder(params.context).encode(0.25, 1.0, pt)
        return bool(np.array_equal(plaintext_view(pt), plaintext_words_serialized(pt)))
    except Exception:
        return False


def secret_key_ntt(sk, n: int) -> np.ndarray:
    """The secret key's NTT-form words for its first prime (client side only)."""
    words = plaintext_view(sk.data()).copy() if zero_copy_enabled() else None
    if words is None:
        words = plaintext_words_serialized(sk.data())
    if words.size % n:
        raise ValueError(f"secret key has {words.size} words, not a multiple of {n}")
    return words[:n]


def words_serialized(obj) -> np.ndarray:
    """All data words of a ciphertext-like SEAL object (e.g. a PublicKey) via save()."""
    body = unwrap(save_bytes(obj))
    data, _ = _parse_dynarray(body, 32 + 1 + 5 * 8)
    return data
