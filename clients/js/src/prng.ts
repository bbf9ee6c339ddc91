/**
 * Randomness for encryption (docs/protocol.md, "Seed expansion" and "Noise").
 *
 * Both streams are AES-256 in counter mode from Node's crypto (OpenSSL): key = 32 bytes, initial
 * counter block = 16 zero bytes, keystream = the encryption of zero bytes.
 */
import { createCipheriv, randomBytes } from "node:crypto";

export const SEED_BYTES = 32;
export const ERROR_COINS = 21;
const SPARE_WORDS = 64;
const ZERO_IV = Buffer.alloc(16);

/** The first nbytes of AES-256-CTR(key, counter block 0). */
export function keystream(key: Uint8Array, nbytes: number): Buffer {
  if (key.length !== 32) throw new Error(`keys and seeds are 32 bytes, got ${key.length}`);
  const cipher = createCipheriv("aes-256-ctr", key, ZERO_IV);
  return Buffer.concat([cipher.update(Buffer.alloc(nbytes)), cipher.final()]);
}

function bitLength(x: bigint): number {
  return x.toString(2).length;
}

/**
 * The public polynomial a for a seed, modulo each prime (row j modulo primes[j]): word t of
 * row j is stream word j·n + t masked to bit_length(q) bits, accepted below q; a rejected word
 * is replaced by the next accepted stream word after the first L·n, in order.
 */
export function expand(seed: Uint8Array, n: number, primes: bigint[]): bigint[][] {
  const count = n * primes.length;
  let words = wordsOf(keystream(seed, 8 * (count + SPARE_WORDS)));
  let pos = count;
  return primes.map((q, j) => {
    const mask = (1n << BigInt(bitLength(q))) - 1n;
    const row: bigint[] = new Array(n);
    for (let t = 0; t < n; t++) {
      let w = words[j * n + t] & mask;
      while (w >= q) {
        if (pos >= words.length) words = wordsOf(keystream(seed, 16 * words.length));
        w = words[pos++] & mask;
      }
      row[t] = w;
    }
    return row;
  });
}

function wordsOf(buf: Buffer): BigUint64Array {
  const out = new BigUint64Array(buf.length / 8);
  for (let i = 0; i < out.length; i++) out[i] = buf.readBigUInt64LE(8 * i);
  return out;
}

function popcount32(x: number): number {
  x = x - ((x >>> 1) & 0x55555555);
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  x = (x + (x >>> 4)) & 0x0f0f0f0f;
  return Math.imul(x, 0x01010101) >>> 24;
}

/**
 * Centered binomial noise, values in [-21, 21]: for each uniform 64-bit word u,
 * popcount(u & (2^21 - 1)) - popcount((u >> 21) & (2^21 - 1)). The key is fresh from the
 * CSPRNG unless given (only known-answer tests give one).
 */
export function sampleError(count: number, key?: Uint8Array): Int32Array {
  const buf = keystream(key ?? randomBytes(32), 8 * count);
  const out = new Int32Array(count);
  const half = (1 << ERROR_COINS) - 1;
  for (let i = 0; i < count; i++) {
    const lo = buf.readUInt32LE(8 * i);
    const hi = buf.readUInt32LE(8 * i + 4);
    const plus = popcount32(lo & half);
    const minus = popcount32(((lo >>> ERROR_COINS) | ((hi & 0x3ff) << 11)) & half);
    out[i] = plus - minus;
  }
  return out;
}

/** count independent seeds from the operating system's CSPRNG. */
export function freshSeeds(count: number): Buffer[] {
  const raw = randomBytes(SEED_BYTES * count);
  return Array.from({ length: count }, (_, i) => raw.subarray(i * SEED_BYTES, (i + 1) * SEED_BYTES));
}
