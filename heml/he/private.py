"""Model-privacy mode (opt-in per model): replies that hide the weights from the client.

By default a client can learn W: from d+1 predictions, and from a reply's second polynomial,
which is a known linear combination of the client's own ciphertexts. In this mode the server

1. re-randomizes every reply with a fresh encryption of zero under the client's registered
   public key (p0, p1), where p1 is not the client's choice: it is expanded from
   SHA-256(domain ‖ key nonce) (``key_p1``), so the client uploads only p0 = −p1·s + e and the
   c1 part of the re-randomizer, u·p1 + e1, is an RLWE sample under the server's fresh u;
2. floods the output coefficients with Gaussian noise of standard deviation at least 2^40
   times a bound that the weights' contribution to an output coefficient's noise exceeds
   with probability ≤ 2^-41 (a Hoeffding tail of the client's centered-binomial errors times
   ‖Wq‖₂, rounded up to a power of two), so by the smudging lemma each output coefficient
   is within statistical distance 2^-40 of one without that contribution,

and the model's quota per key stays below d predictions. Flooding needs headroom: the mode uses
N = 4096 with two 54-bit primes (108 bits, 128-bit secure), ciphertexts encrypted at SEAL's key
level, the ROW layout with one weight digit, and wider replies. What it does not hide: the
predictions themselves (d+1 of them still determine a linear model; hence the quota), and it
assumes the client's ciphertexts carry honest (small) encryption noise.

Server side only: nothing here sees a secret key.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as seal

from ..errors import InvalidCiphertext, ModelError, ParameterError
from . import kernels, modmath, prng, seal_bridge
from .params import ERROR_STDDEV, MAX_MODULUS_BITS_128, HEParams, check_params
from .plan import (
    NOISE_SIGMAS,
    REPLY_BITS,
    PlanScales,
    RowGeometry,
    normalized_weights,
    quantize,
)
from .wire import C0_WORD_BYTES, pack_reply

PRIVATE = "private"
PRIVACY_DEGREE = 4096
PRIVACY_PRIME_BITS = (54, 54)
HIDING_BITS = 40
CAPACITY_FRACTION = 0.45
# Hoeffding tail for the weights' noise contribution: 2·exp(-t²/2) = 2^-(HIDING_BITS + 1)
TAIL_SIGMAS = math.sqrt(2 * math.log(2) * (HIDING_BITS + 2))
KEY_NONCE_BYTES = 32
KEY_ID_CHARS = 64  # hex SHA-256
_P1_DOMAIN = b"heml/v1/model-privacy/public-key-p1\0"
MAX_KEYS_PER_IDENTITY = 8
# a uniform coefficient is this small (|c| < q / 2^16) with probability 2^-15; an honest p0
# has ~0.1 of them among N = 4096, a degenerate one (zero, sparse, small) has thousands
_SMALL_COEFF_SHIFT = 16
_MAX_SMALL_COEFFS = 64


@dataclass(frozen=True)
class RNSParams:
    """Ring degree n and several primes; ciphertexts live modulo their product Q."""

    n: int
    primes: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.primes) < 1 or len(set(self.primes)) != len(self.primes):
            raise ParameterError("an RNS modulus needs distinct primes")
        for q in self.primes:
            check_params(self.n, q)
        bits = sum(q.bit_length() for q in self.primes)
        if bits > MAX_MODULUS_BITS_128[self.n]:
            raise ParameterError(
                f"{bits}-bit modulus is not 128-bit secure at N={self.n} "
                f"(max {MAX_MODULUS_BITS_128[self.n]})"
            )

    @property
    def Q(self) -> int:
        return math.prod(self.primes)

    @property
    def prime_params(self) -> tuple[HEParams, ...]:
        return tuple(HEParams(self.n, q) for q in self.primes)

    @property
    def context(self) -> seal.SEALContext:
        return _rns_context(self.n, self.primes)

    @property
    def key_parms_id(self) -> list[int]:
        return list(self.context.key_parms_id())

    def to_dict(self) -> dict:
        return {"scheme": "CKKS", "n": self.n, "primes": list(self.primes), "security_bits": 128}


@functools.lru_cache(maxsize=4)
def _rns_context(n: int, primes: tuple[int, ...]) -> seal.SEALContext:
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(n)
    parms.set_coeff_modulus([seal.Modulus(q) for q in primes])
    ctx = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    if not ctx.parameters_set():
        raise ParameterError(f"SEAL rejects N={n}, primes={primes}")
    return ctx


@functools.lru_cache(maxsize=1)
def default_privacy_params() -> RNSParams:
    moduli = seal.CoeffModulus.Create(PRIVACY_DEGREE, list(PRIVACY_PRIME_BITS))
    return RNSParams(PRIVACY_DEGREE, tuple(int(m.value()) for m in moduli))


def ciphertext_size(params: RNSParams) -> int:
    return C0_WORD_BYTES * params.n * len(params.primes) + prng.SEED_BYTES


@dataclass(frozen=True)
class PrivatePlan(PlanScales):
    """Scales, reply width and flooding for the model-privacy mode (one weight digit)."""

    params: RNSParams
    log2_scale_x: int
    log2_scale_w: int
    reply_bits: int
    log2_flood: float  # log2 of the flooding standard deviation (units of Q)
    hiding_bits: int
    error_bound: float
    layout: str = PRIVATE
    digits: int = 1
    digit_bits: int = 0

    def to_dict(self) -> dict:
        return {
            "layout": PRIVATE,
            **self.params.to_dict(),
            "log2_scale_x": self.log2_scale_x,
            "log2_scale_w": self.log2_scale_w,
            "reply_bits": self.reply_bits,
            "log2_flood": self.log2_flood,
            "hiding_bits": self.hiding_bits,
            "error_bound": self.error_bound,
        }


def make_private_plan(coef, intercept, center, half_width, *, tolerance: float) -> PrivatePlan:
    """Plan a model-privacy model. Everything the client sees (scales, flooding, reply width,
    error bound) is a function of public quantities (N, d, the tolerance) and one number
    about the weights: ⌈log2 ‖Wq‖₂⌉, the power of two the flooding must be sized by."""
    params = default_privacy_params()
    n, Q = params.n, params.Q
    Wn, bn = normalized_weights(coef, intercept, center, half_width)
    d = Wn.shape[1]
    # the weight scale from public inputs: rounding each weight costs ≤ 2^-(ew+1), so a row's
    # L1 quantization error is ≤ d·2^-(ew+1) ≤ tolerance/8
    ew = max(0, math.ceil(math.log2(4 * d / tolerance)))
    if ew > 40:
        raise ModelError("cannot quantize the weights finely enough for model privacy")
    Wq = quantize(Wn, ew).astype(np.float64)
    sw = math.ldexp(1.0, ew)
    # the one published fact about W: a power-of-two bound on ‖Wq‖₂ over all rows (every
    # class shares the plaintext polynomial in the ROW layout)
    l2 = float(np.sqrt((Wq**2).sum()))
    log2_norm = max(0, math.ceil(math.log2(max(1.0, l2))))
    norm_bound = math.ldexp(1.0, log2_norm)
    # the weights' contribution to an output coefficient is c = Σ_j P_j·e_j with the client's
    # errors e_j = sums of 42 independent ±1/2 (centered binomial): by Hoeffding, c is
    # sub-Gaussian with variance proxy 10.5·‖P‖₂² ≤ ERROR_STDDEV²·norm_bound², so
    # P(|c| > weight_noise) ≤ 2·exp(-TAIL²/2) = 2^-(HIDING_BITS+1)
    weight_noise = TAIL_SIGMAS * ERROR_STDDEV * norm_bound
    # smudging: N(0, σ²) and N(c, σ²) are within |c|/(σ√(2π)) in statistical distance, so
    # σ ≥ 2^40·weight_noise (rounded up to a power of two) leaves each output coefficient
    # within 2^-41 + 2^-41.3 < 2^-40 of one without c (averaged over honest errors)
    log2_flood = HIDING_BITS + math.ceil(math.log2(weight_noise))
    flood = 2.0**log2_flood
    # scale x so that flooding costs at most half the tolerance
    ex = math.ceil(math.log2(2 * NOISE_SIGMAS * flood / (tolerance * sw)))
    # and so that the best reply width's switching noise costs at most a quarter of it (at a
    # large tolerance the flooding alone would leave x too coarse for any reply width)
    per_unit = min((0.5 + math.ldexp(1.0, b - 52)) * Q / 2.0**b for b in REPLY_BITS)
    switch_min = NOISE_SIGMAS * per_unit * math.sqrt((n + 1) / 3.0)
    ex = max(ex, math.ceil(math.log2(4 * switch_min / (tolerance * sw))))
    sx = math.ldexp(1.0, ex)
    # headroom for in-bounds inputs (a server-side check; nothing about it is published)
    row_abs = sx * np.abs(Wq).sum(axis=1) + np.abs(bn) * sw * sx
    if float(row_abs.max()) + NOISE_SIGMAS * flood + 2 * weight_noise >= CAPACITY_FRACTION * Q:
        raise ModelError(
            "model privacy needs more headroom than 128-bit parameters give for this model; "
            "narrow the declared bounds or raise the tolerance"
        )
    e_w = tolerance / 8
    e_x = 0.5 * math.sqrt(d) * norm_bound / (math.ldexp(1.0, min(ex, 52)) * sw)  # ‖·‖₁ ≤ √d‖·‖₂
    e_noise = NOISE_SIGMAS * ERROR_STDDEV * norm_bound / (sx * sw)
    e_flood = NOISE_SIGMAS * flood / (sx * sw)
    # re-randomization noise (u·e' + e1 + e2·s, all small) is far below the flooding
    e_rerand = NOISE_SIGMAS * ERROR_STDDEV * 3 * math.sqrt(n) / (sx * sw)
    fixed = float(e_w + e_x + e_noise + e_flood + e_rerand)
    for bits in REPLY_BITS:
        per_word = 0.5 + math.ldexp(1.0, bits - 52)
        switch = NOISE_SIGMAS * per_word * math.sqrt((n + 1) / 3.0) * Q / 2.0**bits / (sx * sw)
        if fixed + switch <= tolerance:
            return PrivatePlan(params, ex, ew, bits, float(log2_flood), HIDING_BITS, fixed + switch)
    raise ModelError(
        f"model privacy cannot meet the tolerance {tolerance:g} for this model "
        f"(flooding alone costs {fixed:.3g}); raise the tolerance or narrow the bounds"
    )


def weight_equations_needed(plan: PrivatePlan, d: int) -> float:
    """Heuristic count of malicious-ciphertext equations that determine the weights: each
    returned coefficient gives Σ_j Wq_j·v_j for client-chosen v, precise to about
    min(log2 Q − log2_flood − 3, reply_bits) bits, and the weights are d integers of about
    log2_scale_w + 1 bits (docs/model-privacy.md). A quota per key at or above it may let a
    client that encrypts crafted plaintexts recover W by lattice reduction."""
    bits = min(math.log2(plan.params.Q) - plan.log2_flood - 3, plan.reply_bits)
    return d * (plan.log2_scale_w + 1) / bits


def max_private_quota(plan: PrivatePlan, d: int) -> int:
    """The largest lifetime quota per key heml serves for this plan: below
    weight_equations_needed (at d = 4, three crafted slots of one ciphertext give W exactly to
    a 9-dimensional LLL: tests/test_model_privacy.py), and at least 1."""
    return max(1, math.ceil(weight_equations_needed(plan, d)) - 1)


def check_private_quota(plan: PrivatePlan, d: int, quota: int) -> None:
    """Refuse a model whose quota per key reaches the crafted-ciphertext estimate."""
    cap = max_private_quota(plan, d)
    if quota > cap:
        raise ModelError(
            f"max_predictions_per_key={quota} would let a client that encrypts crafted "
            f"plaintexts recover the weights (about {weight_equations_needed(plan, d):.1f} "
            f"such predictions determine them at d={d}); use at most {cap}"
        )


# ---------------------------------------------------------------------- public keys
def key_p1(nonce: bytes, params: RNSParams) -> np.ndarray:
    """The uniform half p1 of a model-privacy public key, (L, N) words in NTT form.

    Expanded (heml.he.prng, AES-256-CTR) from SHA-256(domain ‖ nonce): the client picks the
    nonce but cannot steer p1 (every nonce gives a fresh pseudorandom polynomial), and the
    server does not pick it either, so neither side can plant a structured p1."""
    if len(nonce) != KEY_NONCE_BYTES:
        raise InvalidCiphertext(
            f"key nonce has {len(nonce)} bytes; it must have exactly {KEY_NONCE_BYTES}"
        )
    seed = hashlib.sha256(_P1_DOMAIN + nonce).digest()
    return prng.expand(seed, params.n, params.primes)


def public_key_size(params: RNSParams) -> int:
    """Bytes of the uploaded half p0 of a public key: L·N 7-byte words."""
    return C0_WORD_BYTES * params.n * len(params.primes)


def key_id_of(nonce: bytes, p0: bytes) -> str:
    """The name of a registered key: hex SHA-256 of its nonce and p0 (both determine p1, p0)."""
    return hashlib.sha256(nonce + p0).hexdigest()


def valid_key_id(key_id: str) -> bool:
    """Whether ``key_id`` has the form key_id_of returns (64 lowercase hex characters)."""
    return len(key_id) == KEY_ID_CHARS and all(c in "0123456789abcdef" for c in key_id)


def check_public_key_p0(words: np.ndarray, params: RNSParams) -> None:
    """Refuse a p0 (L, N NTT-form words) that is not below its primes or is degenerate.

    An honest p0 = −p1·s + e is pseudorandom in every prime: in the coefficient domain about
    N/2^15 coefficients fall below q/2^16 by chance. Zero, sparse and small-norm p0 have
    thousands; more than 64 such coefficients in any prime is refused (an honest key fails this
    with probability far below 2^-300)."""
    for i, q in enumerate(params.primes):
        if np.any(words[i] >= np.uint64(q)):
            raise InvalidCiphertext("public key words must be below their primes")
    for i, pp in enumerate(params.prime_params):
        coeffs = kernels.for_params(pp).intt(words[i])
        centered = np.minimum(coeffs, np.uint64(pp.q) - coeffs)
        small = int(np.count_nonzero(centered < np.uint64(pp.q >> _SMALL_COEFF_SHIFT)))
        if small > _MAX_SMALL_COEFFS:
            raise InvalidCiphertext(
                f"public key p0 is degenerate ({small} of {params.n} coefficients modulo "
                f"prime {i} are small): upload p0 = -p1*s + e for the p1 expanded from "
                "key_nonce (docs/protocol.md)"
            )


def validate_public_key(nonce: bytes, p0: bytes, params: RNSParams):
    """Check an uploaded key half p0 (size, range, not degenerate) and complete it with
    key_p1(nonce); returns (key_id, p0 words (L, N), p1 words (L, N)). Raises
    InvalidCiphertext. Every registry (in process or shared) runs exactly this check before it
    keeps a key anywhere."""
    L, n = len(params.primes), params.n
    if len(p0) != public_key_size(params):
        raise InvalidCiphertext(
            f"public key p0 has {len(p0)} bytes; N={n} with {L} primes needs "
            f"{public_key_size(params)}"
        )
    p1 = key_p1(nonce, params)
    key_id = key_id_of(nonce, p0)
    words = np.ndarray((L, n), dtype="<u8", buffer=p0 + b"\0", strides=(7 * n, 7))
    words = (words & np.uint64((1 << 56) - 1)).astype(np.uint64)
    check_public_key_p0(words, params)
    return key_id, words, p1


@dataclass
class _Key:
    encryptor: seal.Encryptor
    identity: str
    used: int = 0  # model-privacy quota used by this key (when there are no API keys)


class PublicKeyStore:
    """Registered client public keys of one model, named by key_id_of, with fair eviction.

    Memory is bounded: at most ``budget_bytes`` of keys in all and MAX_KEYS_PER_IDENTITY per
    identity (API key, else peer host). An identity over its cap loses its own least recently
    used key; when the store is full, the least recently used key of the identity holding the
    most keys goes, so one client flooding registrations evicts only its own keys while anyone
    holding fewer keys than it keeps them. Nothing is kept for ids that were never registered.
    """

    def __init__(
        self,
        params: RNSParams,
        budget_bytes: int = 64 << 20,
        per_identity: int = MAX_KEYS_PER_IDENTITY,
    ) -> None:
        self.params = params
        per_key = 2 * 8 * params.n * len(params.primes) * 3  # (p0, p1) and SEAL's copies
        self.capacity = max(1, budget_bytes // per_key)
        self.per_identity = per_identity
        self._keys: OrderedDict[str, _Key] = OrderedDict()  # least recently used first
        # identity -> its key ids; identities and keys least recently active first
        self._owned: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    def register(self, nonce: bytes, p0: bytes, identity: str) -> str:
        """Validate p0 (size, range, not degenerate), complete the key with key_p1(nonce) and
        keep an encryptor for it; returns its key id. Idempotent for the same (nonce, p0)."""
        key_id = key_id_of(nonce, p0)
        with self._lock:
            if key_id in self._keys:
                self._touch(key_id)
                return key_id
        key_id, words, p1 = validate_public_key(nonce, p0, self.params)
        self._install(key_id, words, p1, identity)
        return key_id

    def install_checked(
        self, key_id: str, words: np.ndarray, p1: np.ndarray, identity: str
    ) -> None:
        """Keep a key that validate_public_key accepted (a shared registry that validated it
        before storing it elsewhere installs it here, its local cache, the same way)."""
        self._install(key_id, words, p1, identity)

    def _install(self, key_id: str, p0: np.ndarray, p1: np.ndarray, identity: str) -> None:
        """Keep an encryptor for the key (p0, p1), unchecked (register checks; tests use this
        directly to build the keys an attacker could register without the checks)."""
        pk = seal.PublicKey()
        seal_bridge.load_from_bytes(
            pk, self.params.context, _key_level_blob(self.params, np.stack([p0, p1]))
        )
        entry = _Key(seal.Encryptor(self.params.context, pk), identity)
        with self._lock:
            if key_id in self._keys:
                self._touch(key_id)
                return
            self._keys[key_id] = entry
            self._owned.setdefault(identity, OrderedDict())[key_id] = None
            self._owned.move_to_end(identity)
            owned = self._owned[identity]
            while len(owned) > self.per_identity:
                self._drop(next(iter(owned)))
            while len(self._keys) > self.capacity:
                # ties: the identity least recently active (registering or predicting), so
                # newcomers holding one key each cannot evict a client that is using its key
                largest = max(self._owned.values(), key=len)
                self._drop(next(iter(largest)))

    def _touch(self, key_id: str) -> None:
        self._keys.move_to_end(key_id)
        identity = self._keys[key_id].identity
        self._owned[identity].move_to_end(key_id)
        self._owned.move_to_end(identity)

    def _drop(self, key_id: str) -> None:
        entry = self._keys.pop(key_id)
        owned = self._owned[entry.identity]
        del owned[key_id]
        if not owned:
            del self._owned[entry.identity]

    def __contains__(self, key_id: str) -> bool:
        with self._lock:
            return key_id in self._keys

    def encryptor(self, key_id: str) -> seal.Encryptor | None:
        with self._lock:
            entry = self._keys.get(key_id)
            if entry is None:
                return None
            self._touch(key_id)
            return entry.encryptor

    def take(self, key_id: str, slots: int, limit: int, charge_id: str = "") -> int | None:
        """Spend ``slots`` of the key's own lifetime allowance ``limit`` (the quota without API
        keys). None if granted, else the amount used; KeyError if the key is not registered.
        The count goes with the key when it is evicted (a new key is a new identity anyway).
        ``charge_id`` is ignored: an in-process count cannot lose its reply (a shared registry
        uses it to stay idempotent)."""
        with self._lock:
            entry = self._keys.get(key_id)
            if entry is None:
                raise KeyError(key_id)
            if entry.used + slots > limit:
                return entry.used
            entry.used += slots
            return None


def _key_level_blob(params: RNSParams, words: np.ndarray) -> bytes:
    """A SEAL serialization of a size-2, NTT-form, key-level ciphertext (public-key format)."""
    import struct

    flat = np.ascontiguousarray(words, dtype=np.uint64).reshape(-1)
    header = seal_bridge._header
    dyn = header(16 + 8 + flat.nbytes) + struct.pack("<Q", flat.size) + flat.tobytes()
    body = (
        struct.pack("<4Q", *params.key_parms_id)
        + struct.pack("<B", 1)
        + struct.pack("<QQQdQ", 2, params.n, len(params.primes), 1.0, 1)
        + dyn
    )
    return header(16 + len(body)) + body


# ---------------------------------------------------------------------- server evaluation
def _expand_rns(seed: bytes, params: RNSParams) -> np.ndarray:
    """The public polynomial a modulo each prime (heml.he.prng.expand)."""
    return prng.expand(seed, params.n, params.primes)


def unpack_rns_ciphertexts(bufs, params: RNSParams) -> tuple[np.ndarray, list[bytes]]:
    n, L = params.n, len(params.primes)
    size = ciphertext_size(params)
    for i, b in enumerate(bufs):
        if len(b) != size:
            raise InvalidCiphertext(
                f"ciphertext {i} has {len(b)} bytes; the privacy parameters need exactly {size}"
            )
    joined = b"".join(bufs)
    m = len(bufs)
    words = np.ndarray((m, L, n), dtype="<u8", buffer=joined, strides=(size, 7 * n, 7))
    c0 = (words & np.uint64((1 << 56) - 1)).astype(np.uint64)
    for i, q in enumerate(params.primes):
        if np.any(c0[:, i] >= np.uint64(q)):
            raise InvalidCiphertext("ciphertext coefficients must be below their primes")
    raw = np.frombuffer(joined, dtype=np.uint8).reshape(m, size)
    return c0, [bytes(raw[i, size - prng.SEED_BYTES :]) for i in range(m)]


def crt_switch(residues: np.ndarray, params: RNSParams, bits: int) -> np.ndarray:
    """Residues (L, count) of x mod Q -> round(x · 2^bits / Q) mod 2^bits, via x/Q = Σ t_i/q_i."""
    Q = params.Q
    frac = np.zeros(residues.shape[1])
    for i, q in enumerate(params.primes):
        c = pow(Q // q, -1, q)
        t = modmath.mulmod(residues[i], np.full(residues.shape[1], c, dtype=np.uint64), q)
        frac += t.astype(np.float64) / float(q)
    frac -= np.floor(frac)
    return np.rint(frac * float(1 << bits)).astype(np.uint64) & np.uint64((1 << bits) - 1)


def _gaussian_residues(count: int, log2_sigma: float, primes) -> np.ndarray:
    """CSPRNG Gaussian noise of σ = 2^log2_sigma, as residues (L, count).

    noise = 2^32 · round(z · σ / 2^32) + U[0, 2^32): a Gaussian staircase smooth at unit
    granularity (z from 53-bit uniforms of os.urandom via Box–Muller)."""
    u = np.frombuffer(os.urandom(16 * count), dtype="<u8").reshape(2, count) >> np.uint64(11)
    u1 = (u[0].astype(np.float64) + 1.0) / 2.0**53
    u2 = u[1].astype(np.float64) / 2.0**53
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    hi = np.rint(z * 2.0 ** (log2_sigma - 32)).astype(np.int64)
    lo = np.frombuffer(os.urandom(4 * count), dtype="<u4").astype(np.uint64)
    out = np.empty((len(primes), count), dtype=np.uint64)
    for i, q in enumerate(primes):
        part = modmath._mul_pow2(modmath.reduce_signed(hi, q), 32, q)
        out[i] = modmath.add_mod(part, lo % np.uint64(q), q)
    return out


class PrivateEvaluator:
    """Server side of the model-privacy mode for one model."""

    def __init__(
        self, plan: PrivatePlan, Wn: np.ndarray, bn: np.ndarray, *, protect: bool = True
    ) -> None:
        """``protect=False`` leaves replies unprotected (no re-randomization, no flooding): only
        for the attack tests' positive controls; the server never passes it."""
        self.plan = plan
        self.protect = protect
        self.params = plan.params
        self.k, self.d = Wn.shape
        self.Wq = quantize(Wn, plan.log2_scale_w)  # (k, d), one digit
        self.bias = [round(math.ldexp(float(b), plan.log2_scale_w + plan.log2_scale_x)) for b in bn]
        self.keys = PublicKeyStore(self.params)
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def geometry(self, s: int) -> RowGeometry:
        try:
            return RowGeometry(self.params.n, self.d, self.k, 1, s)
        except ValueError as exc:
            raise InvalidCiphertext(str(exc)) from exc

    def computed_samples(self, layout: str, n: int, s: int) -> int:
        """Sample slots computed for a block (the quota unit, as ServerScorer.computed_samples):
        ceil(n / s) groups of N // m slots."""
        geo = self.geometry(s)
        return -(-n // s) * (self.params.n // geo.m)

    def _plain_polys(self, geo: RowGeometry) -> np.ndarray:
        """NTT-form weight polynomials per prime: (chunks, groups, L, N)."""
        with self._lock:
            hit = self._cache.get(geo.s)
        if hit is not None:
            return hit
        n, m, s = self.params.n, geo.m, geo.s
        polys = np.zeros((geo.chunks, geo.groups, n), dtype=np.int64)
        for c in range(geo.chunks):
            for g in range(geo.groups):
                _t, first, count = geo.group_rows(g)
                rows = self.Wq[first : first + count, c * m : (c + 1) * m]
                m_c = rows.shape[1]
                for rp in range(count):
                    start = rp * s * m + m - m_c
                    polys[c, g, start : start + m_c] = rows[rp, ::-1]
        out = np.stack(
            [
                kernels.for_params(pp).ntt(modmath.reduce_signed(polys, pp.q))
                for pp in self.params.prime_params
            ],
            axis=2,
        )
        with self._lock:
            self._cache[geo.s] = out
        return out

    def evaluate(self, ciphertexts: list[bytes], n: int, s: int, key_id: str) -> list[bytes]:
        encryptor = self.keys.encryptor(key_id)
        if encryptor is None:
            raise KeyError(key_id)
        geo = self.geometry(s)
        blocks = -(-n // s)
        if len(ciphertexts) != blocks * geo.chunks:
            raise InvalidCiphertext(
                f"{n} samples at {s} per ciphertext need {blocks * geo.chunks} ciphertexts, "
                f"got {len(ciphertexts)}"
            )
        p = self.params
        L = len(p.primes)
        c0_all, seeds = unpack_rns_ciphertexts(ciphertexts, p)
        polys = self._plain_polys(geo)
        kers = [kernels.for_params(pp) for pp in p.prime_params]
        bits = self.plan.reply_bits
        out = []
        for b in range(blocks):
            cts = [
                (c0_all[b * geo.chunks + c], _expand_rns(seeds[b * geo.chunks + c], p))
                for c in range(geo.chunks)
            ]
            for g in range(geo.groups):
                acc = np.zeros((2, L, p.n), dtype=np.uint64)
                for c, (c0, a) in enumerate(cts):
                    for i, q in enumerate(p.primes):
                        prod = kers[i].mul(np.stack([c0[i], a[i]]), polys[c, g, i])
                        acc[:, i] = modmath.add_mod(acc[:, i], prod, q)
                if self.protect:
                    rr = _encrypt_zero(encryptor, p)  # (2, L, N) NTT form, fresh per reply
                    for i, q in enumerate(p.primes):
                        acc[:, i] = modmath.add_mod(acc[:, i], rr[:, i], q)
                coeff = np.stack([kers[i].intt(acc[:, i]) for i in range(L)], axis=1)
                _t, first, count = geo.group_rows(g)
                pos = geo.output_positions(g).reshape(-1)
                c0_pos = coeff[0][:, pos]
                if self.protect:
                    flood = _gaussian_residues(pos.size, self.plan.log2_flood, p.primes)
                else:
                    flood = np.zeros((L, pos.size), dtype=np.uint64)
                bias = np.repeat(np.array(self.bias[first : first + count], dtype=object), geo.s)
                for i, q in enumerate(p.primes):
                    b_res = np.array([int(v) % q for v in bias], dtype=np.uint64)
                    c0_pos[i] = modmath.add_mod(modmath.add_mod(c0_pos[i], b_res, q), flood[i], q)
                out.append(
                    pack_reply(crt_switch(c0_pos, p, bits), crt_switch(coeff[1], p, bits), bits)
                )
        return out


def _encrypt_zero(encryptor: seal.Encryptor, params: RNSParams) -> np.ndarray:
    ct = seal.Ciphertext()
    encryptor.encrypt_zero(params.key_parms_id, ct)
    if seal_bridge.zero_copy_enabled():
        words = seal_bridge.ciphertext_view(ct).copy()
    else:
        words = seal_bridge.ciphertext_words_serialized(ct)
    return words.reshape(2, len(params.primes), params.n)
