/**
 * ROW and COLUMN layouts (docs/protocol.md, "Encoding" and "Replies"): where normalized
 * features go in the message polynomials and where scores come back in the replies.
 */
import { SecretKey, decryptReply, encryptCoefficients, EncryptOptions, toValues } from "./crypto.js";
import { InvalidReply, checkRange, flood, floodBound } from "./protect.js";

export type LayoutName = "row" | "column";

/** One layout's parameters as published in GetModel's LayoutPlan. */
export interface Plan {
  layout: LayoutName;
  n: number;
  q: bigint;
  log2ScaleX: number;
  log2ScaleW: number;
  digitBits: number;
  digits: number;
  replyBits: number;
  errorBound: number;
}

const ENCODE_BITS = 52;

/** Python's round-half-to-even (numpy.rint), so encodings match the SDK bit for bit. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Where samples, features and outputs sit in ROW polynomials (heml.he.plan.RowGeometry). */
export class RowGeometry {
  readonly m: number;
  readonly chunks: number;
  readonly classesPerGroup: number;
  readonly groupsPerDigit: number;
  readonly groups: number;

  constructor(
    readonly n: number,
    readonly d: number,
    readonly k: number,
    readonly digits: number,
    readonly s: number,
  ) {
    const smax = Math.floor(n / Math.min(d, n));
    if (!(s >= 1 && s <= smax)) throw new Error(`samples per ciphertext must be in [1, ${smax}] for d=${d}`);
    this.m = Math.min(d, Math.floor(n / s));
    this.chunks = Math.ceil(d / this.m);
    this.classesPerGroup = Math.max(1, Math.min(k, Math.floor(n / (s * this.m))));
    this.groupsPerDigit = Math.ceil(k / this.classesPerGroup);
    this.groups = digits * this.groupsPerDigit;
  }

  /** [digit t, first class, number of classes] of output group g */
  groupRows(g: number): [number, number, number] {
    const t = Math.floor(g / this.groupsPerDigit);
    const first = (g % this.groupsPerDigit) * this.classesPerGroup;
    return [t, first, Math.min(this.classesPerGroup, this.k - first)];
  }

  /** positions of (class r' of the group, sample a), row-major over r' then a < s */
  outputPositions(g: number): number[] {
    const [, , count] = this.groupRows(g);
    const out: number[] = [];
    for (let r = 0; r < count; r++) {
      for (let a = 0; a < this.s; a++) out.push(r * this.s * this.m + a * this.m + this.m - 1);
    }
    return out;
  }
}

export function maxSamplesPerCiphertext(plan: Plan, d: number): number {
  return plan.layout === "column" ? plan.n : Math.max(1, Math.floor(plan.n / Math.min(d, plan.n)));
}

/** Normalized features of one sample group (z.length ≤ s) -> message rows, one per chunk. */
export function rowEncode(z: number[][], plan: Plan, geo: RowGeometry): Float64Array[] {
  if (z.length > geo.s) throw new Error(`a ROW group holds at most ${geo.s} samples`);
  const scale = 2 ** Math.min(plan.log2ScaleX, ENCODE_BITS);
  const out = Array.from({ length: geo.chunks }, () => new Float64Array(plan.n));
  z.forEach((sample, a) => {
    sample.forEach((v, j) => {
      const c = Math.floor(j / geo.m);
      const i = j - c * geo.m;
      out[c][a * geo.m + i] = roundHalfEven(v * scale);
    });
  });
  return out;
}

/** Normalized features of one COLUMN block (n ≤ N samples, d features) -> d message rows. */
export function columnEncode(z: number[][], plan: Plan, d: number): Float64Array[] {
  if (z.length > plan.n) throw new Error(`a COLUMN block holds at most ${plan.n} samples`);
  const scale = 2 ** plan.log2ScaleX;
  const out = Array.from({ length: d }, () => new Float64Array(plan.n));
  z.forEach((sample, a) => sample.forEach((v, j) => (out[j][a] = roundHalfEven(v * scale))));
  return out;
}

/** Σ_t 2^(b·t) v_t / 2^(log2_scale_x + log2_scale_w): digit values (units of q) -> score */
function recombine(values: number[], plan: Plan): number {
  let acc = 0;
  values.forEach((v, t) => (acc += 2 ** (plan.digitBits * t) * v));
  return acc / (2 ** plan.log2ScaleX * 2 ** plan.log2ScaleW);
}

/** The ciphertexts of one block in upload order (ROW: group-major, then chunk). */
export function encryptBlock(
  key: SecretKey,
  z: number[][],
  plan: Plan,
  d: number,
  k: number,
  s: number,
  opts: EncryptOptions = {},
): Buffer[] {
  if (plan.layout === "column") return encryptCoefficients(key, columnEncode(z, plan, d), opts);
  const geo = new RowGeometry(plan.n, d, k, plan.digits, s);
  const rows: Float64Array[] = [];
  for (let i = 0; i < z.length; i += s) rows.push(...rowEncode(z.slice(i, i + s), plan, geo));
  const shift = Math.max(0, plan.log2ScaleX - ENCODE_BITS);
  return encryptCoefficients(key, rows, { ...opts, shift: shift || opts.shift });
}

/**
 * What decodeBlock does beyond decryption (both on by default; turning either off is for tests
 * and known-answer checks only: a client that returns unchecked or unflooded scores lets a
 * malicious server learn its secret key).
 */
export interface DecodeOptions {
  /** refuse a reply with any decrypted |v| > 0.475 q (InvalidReply) */
  checkRange?: boolean;
  /** add fresh uniform noise on [-F, F] to every score (F = floodBound(plan)) */
  flood?: boolean;
}

/**
 * Replies of one block -> scores (n × k): every decrypted value range-checked (the whole reply
 * refused with InvalidReply otherwise), then each score flooded (src/protect.ts).
 */
export function decodeBlock(
  key: SecretKey,
  replies: Uint8Array[],
  plan: Plan,
  n: number,
  d: number,
  k: number,
  s: number,
  opts: DecodeOptions = {},
): number[][] {
  const check = (values: number[]): number[] => {
    if (opts.checkRange !== false) checkRange(values, plan.q);
    return values;
  };
  const T = plan.digits;
  const bits = plan.replyBits;
  // V[a][c][t]: digit values in units of q
  const V = Array.from({ length: n }, () => Array.from({ length: k }, () => new Array<number>(T).fill(0)));
  if (plan.layout === "column") {
    if (replies.length !== k * T) throw new InvalidReply(`expected ${k * T} replies, got ${replies.length}`);
    const positions = Array.from({ length: n }, (_, a) => a);
    replies.forEach((reply, r) => {
      const c = Math.floor(r / T);
      const t = r % T;
      check(toValues(decryptReply(key, reply, positions, bits), plan.q, bits)).forEach((v, a) => (V[a][c][t] = v));
    });
  } else {
    const geo = new RowGeometry(plan.n, d, k, T, s);
    const groups = Math.ceil(n / s);
    if (replies.length !== groups * geo.groups) {
      throw new InvalidReply(`expected ${groups * geo.groups} replies, got ${replies.length}`);
    }
    for (let b = 0; b < groups; b++) {
      for (let g = 0; g < geo.groups; g++) {
        const [t, first] = geo.groupRows(g);
        const positions = geo.outputPositions(g);
        const vals = check(toValues(decryptReply(key, replies[b * geo.groups + g], positions, bits), plan.q, bits));
        vals.forEach((v, idx) => {
          const r = Math.floor(idx / s);
          const a = b * s + (idx % s);
          if (a < n) V[a][first + r][t] = v;
        });
      }
    }
  }
  const scores = V.map((sample) => sample.map((digits) => recombine(digits, plan)));
  return opts.flood === false ? scores : flood(scores, floodBound(plan));
}
