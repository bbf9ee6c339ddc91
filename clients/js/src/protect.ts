/**
 * The client against a malicious server (docs/protocol.md, "Client rules"; docs/security.md,
 * "The SDK against a malicious server"): what decryption does before any score is returned.
 *
 * - Range check: an honest reply decrypts to row values |v| < 0.45 q (the plan's capacity,
 *   noise included). A value above 0.475 q is something no honest server produces (e.g. a
 *   crafted c1 that makes decryption return coefficients of s), so the whole reply is refused.
 * - Flooding: the part of the decryption error that depends on s (the modulus switch's
 *   rounding of c1, multiplied by s) is hidden under fresh uniform noise on [-F, F] from the
 *   CSPRNG, F = 2^2 times its 6σ bound, computed from public plan fields only. Plans reserve F
 *   in their published error bound, so flooded scores stay within it.
 */
import { randomBytes } from "node:crypto";

import type { Plan } from "./layouts.js";

/** Decrypted row values above this fraction of q are refused (honest rows stay below 0.45 q). */
export const RANGE_FRACTION = 0.475;
/** F = 2^FLOOD_BITS times the bound on the key-dependent error (heml.he.plan.FLOOD_BITS). */
export const FLOOD_BITS = 2;
const NOISE_SIGMAS = 6;

/** A reply no honest server produces: refused as a whole, its scores are never returned. */
export class InvalidReply extends Error {
  constructor(message: string) {
    super(message);
    this.name = "InvalidReply";
  }
}

/** Refuse decrypted row values (units of the modulus q) outside ±0.475 q. */
export function checkRange(values: number[], q: bigint): void {
  const limit = RANGE_FRACTION * Number(q);
  let bad = 0;
  for (const v of values) if (!(Math.abs(v) <= limit)) bad++;
  if (bad) {
    throw new InvalidReply(
      `${bad} decrypted value(s) outside the range the model's plan allows (|v| ≤ ${RANGE_FRACTION} q): ` +
        "the reply was not computed by the published model",
    );
  }
}

/**
 * Bound (6σ, score units) on the key-dependent part of a reply's decryption error:
 * 6 · (1/2 + 2^(r−52)) · √((N+1)/3) · (q / 2^r) · Σ_t 2^(b·t) / 2^(log2_scale_x + log2_scale_w).
 * Same operations in the same order as heml.he.plan.key_noise_bound, so both sides agree.
 */
export function keyNoiseBound(plan: Plan): number {
  const perWord = 0.5 + 2 ** (plan.replyBits - 52);
  const units = NOISE_SIGMAS * perWord * Math.sqrt((plan.n + 1) / 3);
  let weights = 0;
  for (let t = 0; t < Math.max(1, plan.digits); t++) weights += 2 ** (plan.digitBits * t);
  return ((weights * units * Number(plan.q)) / 2 ** plan.replyBits) / (2 ** plan.log2ScaleX * 2 ** plan.log2ScaleW);
}

/** F: the half-width of the uniform noise added to every score (heml.he.plan.flood_bound). */
export function floodBound(plan: Plan): number {
  return keyNoiseBound(plan) * 2 ** FLOOD_BITS;
}

/** `count` fresh values uniform on [-bound, bound) from crypto.randomBytes (53-bit resolution). */
export function uniformNoise(count: number, bound: number): Float64Array {
  const raw = randomBytes(8 * count);
  const out = new Float64Array(count);
  for (let i = 0; i < count; i++) {
    const unit = Number(raw.readBigUInt64LE(8 * i) >> 11n) / 2 ** 53;
    out[i] = (2 * unit - 1) * bound;
  }
  return out;
}

/** Scores plus fresh uniform noise on [-bound, bound) (a new array; the input is unchanged). */
export function flood(scores: number[][], bound: number): number[][] {
  const count = scores.reduce((acc, row) => acc + row.length, 0);
  const noise = uniformNoise(count, bound);
  let i = 0;
  return scores.map((row) => row.map((v) => v + noise[i++]));
}
