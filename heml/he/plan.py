"""Precision planning: scales, weight digits and reply width that meet the model's tolerance.

The client encrypts z = (x - center) / half_width ∈ [-1, 1]^d (bounds from the model), so the
server evaluates W'·z + b' with W' = W·diag(half_width), b' = b + W·center. With one 54-bit
prime and no rescaling, every output coefficient must stay below q/2, and the error against
float64 must stay below the tolerance. Four error sources are bounded (worst case over the
input box, 6σ for random terms):

* weight quantization: W' is rounded to the grid 2^-log2_scale_w;
* feature quantization: z is rounded to the grid 2^-log2_scale_x;
* encryption noise e (σ = 3.2) multiplied by the weights;
* the reply's modulus switch to 2^reply_bits (rounding of c0 and of c1·s);
* the client's flooding of each returned score (uniform, 2^FLOOD_BITS times the switch term,
  the only term that depends on the secret key; ``flood_bound``).

When W' needs more bits than fit under q/2 next to a useful scale, the quantized weights are
split into T signed base-2^b digits; each digit row is a separate output whose value is small,
and the client recombines Σ_t 2^(b·t) · v_t. T = 1 for most standardized models.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ..errors import ModelError
from .params import ERROR_STDDEV, HEParams

ROW, COLUMN = "row", "column"
LAYOUTS = (ROW, COLUMN)
REPLY_BITS = tuple(range(24, 57))  # reply words are bit-packed at any width in this range
MAX_DIGITS = 8
MAX_DIGIT_BITS = 36  # keeps dot_mod's float64 partial sums exact with limbs of ≥ 9 bits
CAPACITY_FRACTION = 0.45  # |row value| < 0.45 q (q/2 minus room for noise and rounding)
NOISE_SIGMAS = 6.0
# The client floods every returned score with fresh uniform noise of 2^FLOOD_BITS times the
# bound on the key-dependent part of the decryption error (heml.he.decrypt); plans reserve it.
FLOOD_BITS = 2


class PlanScales:
    """Derived numbers every plan offers (LayoutPlan, heml.he.private.PrivatePlan); the plan
    has the fields ``layout``, ``params``, ``log2_scale_x`` and ``log2_scale_w``."""

    @property
    def scale_x(self) -> float:
        return math.ldexp(1.0, self.log2_scale_x)

    @property
    def scale_w(self) -> float:
        return math.ldexp(1.0, self.log2_scale_w)

    def max_samples_per_ciphertext(self, d: int) -> int:
        n = self.params.n
        return n if self.layout == COLUMN else max(1, n // min(d, n))


@dataclass(frozen=True)
class LayoutPlan(PlanScales):
    """What client and server agree on for one layout (published in GetModel)."""

    layout: str
    params: HEParams
    log2_scale_x: int
    log2_scale_w: int
    digit_bits: int
    digits: int
    reply_bits: int
    error_bound: float

    def to_dict(self) -> dict:
        return {
            "layout": self.layout,
            "n": self.params.n,
            "q": self.params.q,
            "log2_scale_x": self.log2_scale_x,
            "log2_scale_w": self.log2_scale_w,
            "digit_bits": self.digit_bits,
            "digits": self.digits,
            "reply_bits": self.reply_bits,
            "error_bound": self.error_bound,
        }


@dataclass(frozen=True)
class RowGeometry:
    """Where samples, features and outputs sit in ROW-layout polynomials.

    s samples per ciphertext, m = min(d, N // s) features per chunk (``chunks`` chunks).
    Outputs come in groups of up to G = min(k, N // (s·m)) classes of one weight digit (a group
    never mixes digits, so a digit row only picks up encryption noise times its own digits);
    there are ``groups`` = T · ceil(k / G) replies per sample group. Input (sample a, feature
    i of a chunk) sits at coefficient a·m + i; output (class r' of a group, sample a) at
    r'·s·m + a·m + m - 1, which needs G·s·m ≤ N.
    """

    n: int
    d: int
    k: int
    digits: int
    s: int

    def __post_init__(self) -> None:
        if not 1 <= self.s <= self.n // min(self.d, self.n):
            raise ValueError(
                f"samples per ciphertext must be in [1, {self.n // min(self.d, self.n)}] for "
                f"d={self.d}, got {self.s}"
            )

    @functools.cached_property
    def m(self) -> int:
        return min(self.d, self.n // self.s)

    @functools.cached_property
    def chunks(self) -> int:
        return -(-self.d // self.m)

    @functools.cached_property
    def classes_per_group(self) -> int:
        return max(1, min(self.k, self.n // (self.s * self.m)))

    @functools.cached_property
    def groups_per_digit(self) -> int:
        return -(-self.k // self.classes_per_group)

    @functools.cached_property
    def groups(self) -> int:
        return self.digits * self.groups_per_digit

    def group_rows(self, group: int) -> tuple[int, int, int]:
        """(digit t, first class, number of classes) of an output group."""
        t, g = divmod(group, self.groups_per_digit)
        first = g * self.classes_per_group
        return t, first, min(self.classes_per_group, self.k - first)

    def output_positions(self, group: int) -> np.ndarray:
        """Coefficient of (class r' in group, sample a): shape (classes_in_group, s)."""
        cache = self.__dict__.setdefault("_positions", {})
        pos = cache.get(group)
        if pos is None:
            _t, _first, count = self.group_rows(group)
            r = np.arange(count)[:, None]
            a = np.arange(self.s)[None, :]
            pos = cache[group] = r * self.s * self.m + a * self.m + self.m - 1
        return pos

    @functools.cached_property
    def _input_positions(self) -> np.ndarray:
        return np.arange(self.s)[:, None] * self.m + np.arange(self.m)[None, :]

    def input_positions(self) -> np.ndarray:
        """Coefficient of (sample a, feature i in chunk): shape (s, m)."""
        return self._input_positions


def normalized_weights(coef: np.ndarray, intercept: np.ndarray, center, half_width):
    """W' and b' over features normalized to [-1, 1]."""
    W = np.asarray(coef, dtype=np.float64)
    return W * np.asarray(half_width)[None, :], np.asarray(intercept) + W @ np.asarray(center)


def quantize(Wn: np.ndarray, log2_scale_w: int) -> np.ndarray:
    scaled = np.rint(np.ldexp(Wn, log2_scale_w))
    if np.any(np.abs(scaled) >= 2.0**62):
        raise ModelError("weights are too large to quantize; narrow the declared bounds")
    return scaled.astype(np.int64)


def split_digits(Wq: np.ndarray, digit_bits: int, digits: int) -> np.ndarray:
    """Balanced base-2^b digits, shape (T, ...): Wq = Σ_t 2^(b t) D[t], |D[t]| ≤ 2^(b-1)."""
    base = 1 << digit_bits
    half = base >> 1
    rest = Wq.astype(np.int64).copy()
    out = np.empty((digits, *Wq.shape), dtype=np.int64)
    for t in range(digits):
        if t == digits - 1:
            out[t] = rest
        else:
            dig = ((rest + half) % base) - half
            out[t] = dig
            rest = (rest - dig) // base
    return out


def split_bias(bias_int: int, digit_bits: int, digits: int) -> list[int]:
    """Integer bias -> T integers with Σ_t 2^(b t) β_t = bias; the top one takes the rest."""
    base = 1 << digit_bits
    half = base >> 1
    out, rest = [], int(bias_int)
    for _t in range(digits - 1):
        dig = ((rest + half) % base) - half
        out.append(dig)
        rest = (rest - dig) // base
    out.append(rest)
    return out


@dataclass(frozen=True)
class ServerWeights:
    """What the server multiplies: weight digits (T, k, d) and integer row biases (T, k)."""

    plan: LayoutPlan
    digits: np.ndarray  # (T, k, d) int64
    biases: np.ndarray  # (T, k) Python ints (object), may exceed 64 bits before reduction

    @property
    def rows(self) -> int:
        """k · T output rows, class-major (row = class · T + digit) as in COLUMN replies."""
        return self.digits.shape[0] * self.digits.shape[1]

    @property
    def digits_matrix(self) -> np.ndarray:
        """(k·T, d), row = class · T + digit."""
        T, k, d = self.digits.shape
        return np.transpose(self.digits, (1, 0, 2)).reshape(k * T, d)

    def bias_residues(self) -> np.ndarray:
        """(T, k) biases reduced mod q."""
        q = self.plan.params.q
        return np.array([[int(v) % q for v in row] for row in self.biases], dtype=np.uint64)


def server_weights(plan: LayoutPlan, Wn: np.ndarray, bn: np.ndarray) -> ServerWeights:
    Wq = quantize(Wn, plan.log2_scale_w)
    D = split_digits(Wq, plan.digit_bits, plan.digits)  # (T, k, d)
    biases = np.empty((plan.digits, Wn.shape[0]), dtype=object)
    for c in range(Wn.shape[0]):
        bias_int = round(math.ldexp(float(bn[c]), plan.log2_scale_w + plan.log2_scale_x))
        biases[:, c] = split_bias(bias_int, plan.digit_bits, plan.digits)
    return ServerWeights(plan, D, biases)


# ---------------------------------------------------------------------- planning
def _candidate(Wn, bn, Wq, ew: int, bb: int, T: int, layout: str, q: int):
    """For T digits of b bits: the largest feature scale that fits, and the error terms."""
    D = split_digits(Wq, bb, T).astype(np.float64)  # (T, k, d)
    k = Wn.shape[0]
    sw = math.ldexp(1.0, ew)
    base = float(1 << bb)
    if layout == COLUMN:
        noise_rows = NOISE_SIGMAS * ERROR_STDDEV * np.sqrt((D**2).sum(axis=2))  # (T, k)
    else:
        # a ROW output sees every coefficient of its plaintext: all classes of its own digit
        per_digit = np.sqrt((D**2).sum(axis=(1, 2)))  # (T,)
        noise_rows = NOISE_SIGMAS * ERROR_STDDEV * np.repeat(per_digit[:, None], k, axis=1)
    # row value bound = sx * slope + const (bias digits: |β_t| ≤ base/2 below the top row)
    slope = np.abs(D).sum(axis=2)
    slope[-1] += np.abs(bn) * sw / base ** (T - 1)
    const = noise_rows + base + 2.0
    room = CAPACITY_FRACTION * q - const
    if np.any(room <= 0):
        return None
    with np.errstate(divide="ignore"):
        limit = np.where(slope > 0, room / np.where(slope > 0, slope, 1.0), np.inf)
    ex = min(math.floor(math.log2(float(limit.min()))), 60) if np.isfinite(limit.min()) else 60
    if ex < 1:
        return None
    sx = math.ldexp(1.0, ex)
    weights_t = base ** np.arange(T)
    e_w = np.abs(Wq / sw - Wn).sum(axis=1)
    e_x = 0.5 * np.abs(Wq).sum(axis=1) / (sx * sw)
    e_noise = (weights_t[:, None] * noise_rows).sum(axis=0) / (sx * sw)
    return ex, float((e_w + e_x + e_noise).max()), weights_t


def _switch_error(bits: int, n: int, q: int, weights_t: np.ndarray, sx: float, sw: float) -> float:
    per_word = 0.5 + math.ldexp(1.0, bits - 52)  # rounding incl. float64 error, in 2^bits units
    units = NOISE_SIGMAS * per_word * math.sqrt((n + 1) / 3.0)
    return float(weights_t.sum()) * units * q / math.ldexp(1.0, bits) / (sx * sw)


def key_noise_bound(plan) -> float:
    """Bound (6σ, score units) on the key-dependent part of a reply's decryption error: the
    modulus switch's rounding of c1, multiplied by s. Computed from public plan fields only,
    so client and server agree on it (any plan with ``params``, scales, ``reply_bits``)."""
    primes = getattr(plan.params, "primes", None) or (plan.params.q,)
    modulus = math.prod(primes)
    digit_bits, digits = getattr(plan, "digit_bits", 0), max(1, getattr(plan, "digits", 1))
    weights_t = np.ldexp(1.0, digit_bits * np.arange(digits))
    return _switch_error(
        plan.reply_bits, plan.params.n, modulus, weights_t, plan.scale_x, plan.scale_w
    )


def flood_bound(plan) -> float:
    """Half-width of the uniform noise the client adds to every score (score units).

    Zero for model-privacy plans (heml.he.private): their error budget does not reserve the
    flood yet (its float64 CRT switch limits replies to ≈ 52 useful bits)."""
    if plan.layout not in LAYOUTS:
        return 0.0
    return math.ldexp(key_noise_bound(plan), FLOOD_BITS)


def make_plan(
    coef: np.ndarray,
    intercept: np.ndarray,
    center: np.ndarray,
    half_width: np.ndarray,
    *,
    layout: str,
    params: HEParams,
    tolerance: float,
) -> LayoutPlan:
    """The cheapest (fewest digits, then narrowest reply) parameters meeting ``tolerance``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    Wn, bn = normalized_weights(coef, intercept, center, half_width)
    n, q = params.n, params.q
    # weight grids to try: from the coarsest whose quantization error alone fits, 12 finer
    ew0 = 0
    while np.abs(quantize(Wn, ew0) / math.ldexp(1.0, ew0) - Wn).sum(axis=1).max() > tolerance:
        ew0 += 1
        if ew0 > 62:
            raise ModelError("cannot quantize the weights finely enough")
    grids = []
    for ew in range(ew0, min(ew0 + 13, 63)):
        Wq = quantize(Wn, ew)
        grids.append((ew, Wq, int(np.abs(Wq).max()).bit_length() + 1 if np.any(Wq) else 2))

    best = math.inf
    for T in range(1, MAX_DIGITS + 1):
        found: tuple | None = None
        for ew, Wq, wq_bits in grids:
            bb = max(2, -(-wq_bits // T) + 1)
            if bb > MAX_DIGIT_BITS:
                continue
            cand = _candidate(Wn, bn, Wq, ew, bb, T, layout, q)
            if cand is None:
                continue
            ex, fixed, weights_t = cand
            sx, sw = math.ldexp(1.0, ex), math.ldexp(1.0, ew)
            for bits in REPLY_BITS:
                switch = _switch_error(bits, n, q, weights_t, sx, sw)
                total = fixed + switch * (1.0 + math.ldexp(1.0, FLOOD_BITS))
                best = min(best, total)
                if total <= tolerance:
                    key = (bits, total)
                    if found is None or key < found[0]:
                        found = (key, LayoutPlan(layout, params, ex, ew, bb, T, bits, total))
                    break
        if found is not None:
            return found[1]
    raise ModelError(
        f"no 128-bit CKKS parameters reach the tolerance {tolerance:g} for this model "
        f"(best error bound {best:.3g}); narrow the declared bounds or raise the tolerance"
    )
