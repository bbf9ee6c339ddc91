/**
 * Exact arithmetic modulo heml's primes (q < 2^54) and SEAL's negacyclic NTT.
 *
 * Residues are BigInt. JavaScript numbers hold integers exactly only up to 2^53, so a product
 * of two 54-bit residues (108 bits) needs either BigInt or a limb representation; BigInt is
 * exact by construction, needs no reduction tricks that could be subtly wrong, and costs about
 * 80 ns per modular product on Node 20, so a 2048-point NTT takes a few milliseconds. The NTT
 * matches SEAL's `ntt_negacyclic_harvey` word for word (the vectors in docs/vectors prove it):
 * ψ is the smallest primitive 2N-th root of unity modulo q and values come out in bit-reversed
 * order.
 */

/** base^exp mod m for non-negative BigInts. */
export function powmod(base: bigint, exp: bigint, m: bigint): bigint {
  let result = 1n;
  let b = base % m;
  let e = exp;
  while (e > 0n) {
    if (e & 1n) result = (result * b) % m;
    b = (b * b) % m;
    e >>= 1n;
  }
  return result;
}

/** x mod q in [0, q) for any BigInt x. */
export function reduce(x: bigint, q: bigint): bigint {
  const r = x % q;
  return r < 0n ? r + q : r;
}

/** Deterministic Miller-Rabin for q < 3.3e24 (heml's primes are below 2^54). */
export function isPrime(q: bigint): boolean {
  if (q < 2n) return false;
  for (const p of [2n, 3n, 5n, 7n, 11n, 13n]) {
    if (q === p) return true;
    if (q % p === 0n) return false;
  }
  let d = q - 1n;
  let r = 0;
  while ((d & 1n) === 0n) {
    d >>= 1n;
    r += 1;
  }
  outer: for (const a of [2n, 3n, 5n, 7n, 11n, 13n, 17n, 19n, 23n, 29n, 31n, 37n, 41n]) {
    let x = powmod(a, d, q);
    if (x === 1n || x === q - 1n) continue;
    for (let i = 0; i < r - 1; i++) {
      x = (x * x) % q;
      if (x === q - 1n) continue outer;
    }
    return false;
  }
  return true;
}

function bitLength(x: bigint): number {
  return x.toString(2).length;
}

/** SEAL's ψ: the smallest primitive 2n-th root of unity modulo q. */
export function minimalPrimitiveRoot(n: number, q: bigint): bigint {
  const order = BigInt(2 * n);
  if ((q - 1n) % order !== 0n) throw new Error("q is not 1 mod 2N");
  let psi = 0n;
  for (let g = 2n; g < 1n << 16n; g++) {
    const cand = powmod(g, (q - 1n) / order, q);
    if (powmod(cand, BigInt(n), q) === q - 1n) {
      psi = cand;
      break;
    }
  }
  if (psi === 0n) throw new Error("no primitive root found");
  // every odd power of a primitive 2n-th root is one; take the smallest
  let best = psi;
  let cur = psi;
  const sq = (psi * psi) % q;
  for (let i = 0; i < n - 1; i++) {
    cur = (cur * sq) % q;
    if (cur < best) best = cur;
  }
  return best;
}

function bitReverse(i: number, bits: number): number {
  let out = 0;
  for (let b = 0; b < bits; b++) out |= ((i >> b) & 1) << (bits - 1 - b);
  return out;
}

/** Forward and inverse negacyclic NTT modulo q of length n (a power of two). */
export class NTT {
  readonly n: number;
  readonly q: bigint;
  readonly psi: bigint;
  private readonly psiRev: bigint[];
  private readonly ipsiRev: bigint[];
  private readonly nInv: bigint;

  constructor(n: number, q: bigint) {
    if (bitLength(q) > 60) throw new Error("modulus too large");
    this.n = n;
    this.q = q;
    this.psi = minimalPrimitiveRoot(n, q);
    const bits = Math.log2(n);
    const pows: bigint[] = new Array(n);
    const ipows: bigint[] = new Array(n);
    const ipsi = powmod(this.psi, q - 2n, q);
    pows[0] = 1n;
    ipows[0] = 1n;
    for (let i = 1; i < n; i++) {
      pows[i] = (pows[i - 1] * this.psi) % q;
      ipows[i] = (ipows[i - 1] * ipsi) % q;
    }
    this.psiRev = new Array(n);
    this.ipsiRev = new Array(n);
    for (let i = 0; i < n; i++) {
      const r = bitReverse(i, bits);
      this.psiRev[i] = pows[r];
      this.ipsiRev[i] = ipows[r];
    }
    this.nInv = powmod(BigInt(n), q - 2n, q);
  }

  /** Coefficients (residues < q) -> NTT values in SEAL's order, in place. */
  forward(a: bigint[]): bigint[] {
    const { n, q } = this;
    let t = n;
    for (let m = 1; m < n; m *= 2) {
      t >>= 1;
      for (let i = 0; i < m; i++) {
        const w = this.psiRev[m + i];
        const j1 = 2 * i * t;
        for (let j = j1; j < j1 + t; j++) {
          const u = a[j];
          const v = (a[j + t] * w) % q;
          const s = u + v;
          a[j] = s >= q ? s - q : s;
          const d = u - v;
          a[j + t] = d < 0n ? d + q : d;
        }
      }
    }
    return a;
  }

  /** NTT values in SEAL's order -> coefficients, in place. */
  inverse(a: bigint[]): bigint[] {
    const { n, q } = this;
    let t = 1;
    for (let m = n; m > 1; m >>= 1) {
      const h = m >> 1;
      for (let i = 0; i < h; i++) {
        const w = this.ipsiRev[h + i];
        const j1 = 2 * i * t;
        for (let j = j1; j < j1 + t; j++) {
          const u = a[j];
          const x = a[j + t];
          const s = u + x;
          a[j] = s >= q ? s - q : s;
          const d = u - x;
          a[j + t] = ((d < 0n ? d + q : d) * w) % q;
        }
      }
      t <<= 1;
    }
    for (let i = 0; i < n; i++) a[i] = (a[i] * this.nInv) % q;
    return a;
  }
}

const nttCache = new Map<string, NTT>();

/** A cached NTT for (n, q): building one costs n modular products. */
export function nttFor(n: number, q: bigint): NTT {
  const key = `${n}:${q}`;
  let t = nttCache.get(key);
  if (!t) {
    t = new NTT(n, q);
    nttCache.set(key, t);
  }
  return t;
}
