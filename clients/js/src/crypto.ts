/**
 * Client-side CKKS-style encryption and decryption for heml's default mode
 * (docs/protocol.md, "Encryption and upload bytes" and "Replies").
 *
 * The secret key s is a ternary polynomial drawn from the operating system's CSPRNG; it never
 * leaves this process. Encryption is seeded symmetric RLWE in SEAL's NTT domain:
 * c1 = a (expanded from a fresh public seed), c0 = NTT(m + e) - a·NTT(s) (mod q). Replies come
 * back switched to 2^r and in coefficient form; decryption is c0_p + (c1·s)_p modulo 2^r.
 */
import { randomBytes } from "node:crypto";
import { isPrime, nttFor, reduce } from "./modular.js";
import { SEED_BYTES, expand, freshSeeds, sampleError } from "./prng.js";
import { InvalidReply } from "./protect.js";

export const C0_WORD_BYTES = 7;
export const SUPPORTED_DEGREES = [2048, 4096];
const MAX_MODULUS_BITS_128: Record<number, number> = { 2048: 54, 4096: 109 };

/** Refuse anything but heml's 128-bit-secure parameter sets (docs/protocol.md). */
export function checkParams(n: number, q: bigint): void {
  if (!SUPPORTED_DEGREES.includes(n)) throw new Error(`ring degree N=${n} is not supported`);
  const bits = q.toString(2).length;
  if (bits > Math.min(MAX_MODULUS_BITS_128[n], 54)) {
    throw new Error(`modulus of ${bits} bits is not accepted at N=${n}`);
  }
  if (q % BigInt(2 * n) !== 1n) throw new Error(`modulus ${q} is not 1 mod 2N`);
  if (!isPrime(q)) throw new Error(`modulus ${q} is not prime`);
}

/** A ternary secret key for one parameter set (n, q). */
export class SecretKey {
  readonly n: number;
  readonly q: bigint;
  /** coefficients in {-1, 0, 1} */
  readonly s: Int8Array;
  /** NTT(s) modulo q: what encryption multiplies the public polynomial a by */
  readonly sNtt: bigint[];
  /** s extended for negacyclic products: ext[t] = s[t - n] for t ≥ n, -s[t] for t < n */
  private readonly ext: Float64Array;

  constructor(n: number, q: bigint, s: Int8Array) {
    checkParams(n, q);
    if (s.length !== n || s.some((v) => v < -1 || v > 1)) {
      throw new Error("a secret key is n coefficients in {-1, 0, 1}");
    }
    this.n = n;
    this.q = q;
    this.s = s;
    const words = Array.from(s, (v) => (v < 0 ? q - 1n : BigInt(v)));
    this.sNtt = nttFor(n, q).forward(words);
    this.ext = new Float64Array(2 * n);
    for (let t = 0; t < n; t++) {
      this.ext[t] = -s[t];
      this.ext[t + n] = s[t];
    }
  }

  /** A fresh uniform ternary key from crypto.randomBytes (bytes ≥ 255 are rejected). */
  static generate(n: number, q: bigint): SecretKey {
    const s = new Int8Array(n);
    let filled = 0;
    while (filled < n) {
      for (const byte of randomBytes(n)) {
        if (byte === 255) continue;
        s[filled++] = (byte % 3) - 1;
        if (filled === n) break;
      }
    }
    return new SecretKey(n, q, s);
  }

  /** JSON for storage (keep it private: it decrypts every reply made for it). */
  toJSON(): { n: number; q: string; s: string } {
    return { n: this.n, q: this.q.toString(), s: Buffer.from(Uint8Array.from(this.s, (v) => v + 1)).toString("base64") };
  }

  static fromJSON(doc: { n: number; q: string; s: string }): SecretKey {
    const raw = Buffer.from(doc.s, "base64");
    return new SecretKey(doc.n, BigInt(doc.q), Int8Array.from(raw, (v) => v - 1));
  }

  /** (c1 · s) at position p as two exact partial sums over the low and high 28-bit limbs. */
  productAt(c1lo: Float64Array, c1hi: Float64Array, p: number): [number, number] {
    const { n, ext } = this;
    let lo = 0;
    let hi = 0;
    const base = p + n;
    for (let j = 0; j < n; j++) {
      const sign = ext[base - j];
      if (sign !== 0) {
        lo += sign * c1lo[j];
        hi += sign * c1hi[j];
      }
    }
    return [lo, hi];
  }
}

export interface EncryptOptions {
  /** one 32-byte seed per row (known-answer tests only; default: fresh from the CSPRNG) */
  seeds?: Uint8Array[];
  /** the noise stream's AES key (known-answer tests only; default: fresh) */
  noiseKey?: Uint8Array;
  /** multiply the message (not the noise) by 2^shift modulo q */
  shift?: number;
}

/**
 * Encrypt rows of integer message coefficients (each row n values with |m| < q/4, exact
 * JavaScript integers) under the secret key; one upload blob (7·n + 32 bytes) per row.
 * The noise of all rows comes from one stream, row after row.
 */
export function encryptCoefficients(key: SecretKey, rows: Float64Array[], opts: EncryptOptions = {}): Buffer[] {
  const { n, q } = key;
  const limit = Number(q / 4n);
  const seeds = opts.seeds ?? freshSeeds(rows.length);
  if (seeds.length !== rows.length) throw new Error(`${rows.length} rows need ${rows.length} seeds`);
  const noise = sampleError(rows.length * n, opts.noiseKey);
  const ntt = nttFor(n, q);
  const factor = opts.shift ? (1n << BigInt(opts.shift)) % q : 1n;
  return rows.map((m, r) => {
    if (m.length !== n) throw new Error(`message rows have ${n} coefficients`);
    const plain: bigint[] = new Array(n);
    for (let i = 0; i < n; i++) {
      const v = m[i];
      if (!Number.isSafeInteger(v) || Math.abs(v) >= limit) {
        throw new Error("message coefficients must be integers below q/4 in magnitude");
      }
      const e = noise[r * n + i];
      plain[i] = factor === 1n ? reduce(BigInt(v + e), q) : reduce(BigInt(v) * factor + BigInt(e), q);
    }
    ntt.forward(plain);
    const [a] = expand(seeds[r], n, [q]);
    const out = Buffer.alloc(C0_WORD_BYTES * n + SEED_BYTES);
    for (let i = 0; i < n; i++) {
      let c0 = plain[i] - ((a[i] * key.sNtt[i]) % q);
      if (c0 < 0n) c0 += q;
      writeWord(out, i * C0_WORD_BYTES, c0);
    }
    Buffer.from(seeds[r]).copy(out, C0_WORD_BYTES * n);
    return out;
  });
}

function writeWord(buf: Buffer, offset: number, w: bigint): void {
  const lo = Number(w & 0xffffffffn);
  const hi = Number(w >> 32n);
  buf.writeUInt32LE(lo, offset);
  buf.writeUIntLE(hi, offset + 4, 3);
}

/** count words of `bits` bits from a little-endian bit stream (word i at bits i·bits..). */
export function unpackBits(buf: Uint8Array, count: number, bits: number): BigUint64Array {
  if (bits < 16 || bits > 56) throw new Error("reply words are 16 to 56 bits");
  const padded = Buffer.alloc(buf.length + 8);
  Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength).copy(padded);
  const mask = (1n << BigInt(bits)) - 1n;
  const out = new BigUint64Array(count);
  for (let i = 0; i < count; i++) {
    const start = i * bits;
    out[i] = (padded.readBigUInt64LE(start >> 3) >> BigInt(start & 7)) & mask;
  }
  return out;
}

export function replySize(positions: number, n: number, bits: number): number {
  return Math.ceil(((positions + n) * bits) / 8);
}

/**
 * Decrypt one reply at its output positions: signed messages in units of q / 2^bits.
 * The reply holds c0 at the positions, then all n words of c1.
 */
export function decryptReply(key: SecretKey, reply: Uint8Array, positions: number[], bits: number): bigint[] {
  const { n } = key;
  const P = positions.length;
  if (reply.length !== replySize(P, n, bits)) {
    throw new InvalidReply(`reply has ${reply.length} bytes, expected ${replySize(P, n, bits)}`);
  }
  const words = unpackBits(reply, P + n, bits);
  const c1lo = new Float64Array(n);
  const c1hi = new Float64Array(n);
  for (let j = 0; j < n; j++) {
    const w = words[P + j];
    c1lo[j] = Number(w & 0xfffffffn);
    c1hi[j] = Number(w >> 28n);
  }
  const modulus = 1n << BigInt(bits);
  const half = modulus >> 1n;
  return positions.map((p, i) => {
    const [lo, hi] = key.productAt(c1lo, c1hi, p);
    let v = (words[i] + BigInt(lo) + (BigInt(hi) << 28n)) % modulus;
    if (v < 0n) v += modulus;
    return v >= half ? v - modulus : v;
  });
}

/** Signed messages (units of q / 2^bits) -> values in units of the modulus q, as float64. */
export function toValues(signed: bigint[], q: bigint, bits: number): number[] {
  const unit = Number(q) / 2 ** bits;
  return signed.map((v) => Number(v) * unit);
}
