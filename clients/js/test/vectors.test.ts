/**
 * The JavaScript client against docs/vectors/*.json (the known-answer vectors the Python SDK
 * is tested against): every byte it produces and every value it decodes must match.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

import { keystream, expand, sampleError } from "../src/prng.js";
import { nttFor } from "../src/modular.js";
import { SecretKey, encryptCoefficients } from "../src/crypto.js";
import { deriveTernary, KeyChain, labelId, peerLabel } from "../src/keys.js";
import { floodBound } from "../src/protect.js";
import { Plan, decodeBlock, encryptBlock, columnEncode, rowEncode, RowGeometry } from "../src/layouts.js";
import { probabilities, Link } from "../src/links.js";
import { Bounds } from "../src/preprocess.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const VECTORS = process.env.HEML_VECTORS_DIR ?? path.resolve(here, "../../../../docs/vectors");

// eslint-disable-next-line @typescript-eslint/no-explicit-any
function load(name: string): any {
  return JSON.parse(readFileSync(path.join(VECTORS, `${name}.json`), "utf8"));
}

function u64(hex: string): bigint[] {
  const buf = Buffer.from(hex, "hex");
  return Array.from({ length: buf.length / 8 }, (_, i) => buf.readBigUInt64LE(8 * i));
}

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

test("seed expansion matches the vectors (including rejected words)", () => {
  for (const c of load("seed_expansion").cases) {
    const seed = Buffer.from(c.seed, "hex");
    assert.equal(keystream(seed, 64).toString("hex"), c.keystream_first_64);
    assert.deepEqual(expand(seed, c.n, [BigInt(c.q)])[0], u64(c.a_u64), c.name);
  }
});

test("noise from a fixed key matches the vectors", () => {
  const v = load("noise");
  assert.deepEqual(Array.from(sampleError(v.count, Buffer.from(v.key, "hex"))), v.e);
});

test("the NTT matches SEAL's (vectors)", () => {
  for (const c of load("ntt").cases) {
    const q = BigInt(c.q);
    const ntt = nttFor(c.n, q);
    assert.equal(ntt.psi, BigInt(c.psi));
    const x = Array.from({ length: c.n }, (_, i) => (12345n * BigInt(i)) % q);
    const y = ntt.forward(x.slice());
    assert.deepEqual(y, u64(c.output_u64));
    assert.deepEqual(ntt.inverse(y), x);
  }
});

test("encryption of a fixed message under a fixed key and seed matches byte for byte", () => {
  const v = load("encryption");
  const q = BigInt(v.q);
  const key = new SecretKey(v.n, q, Int8Array.from(v.s));
  assert.deepEqual(key.sNtt, u64(v.s_ntt_u64));
  const m = Float64Array.from({ length: v.n }, (_, i) => ((7919 * i) % 2001) - 1000);
  const [blob] = encryptCoefficients(key, [m], {
    seeds: [Buffer.from(v.seed, "hex")],
    noiseKey: Buffer.from(v.noise_key, "hex"),
  });
  assert.equal(blob.length, v.ciphertext_bytes);
  assert.equal(sha256(blob), v.ciphertext_sha256);
  const c0 = Array.from({ length: v.n }, (_, i) => BigInt(blob.readUIntLE(7 * i, 4)) + (BigInt(blob.readUIntLE(7 * i + 4, 3)) << 32n));
  assert.deepEqual(c0, u64(v.c0_u64));
});

function planOf(p: any): Plan {
  return {
    layout: p.layout,
    n: p.n,
    q: BigInt(p.q),
    log2ScaleX: p.log2_scale_x,
    log2ScaleW: p.log2_scale_w,
    digitBits: p.digit_bits,
    digits: p.digits,
    replyBits: p.reply_bits,
    errorBound: p.error_bound,
  };
}

for (const name of ["row", "row_wide", "column"]) {
  test(`${name.toUpperCase()} request, reply and decoding match the vectors`, () => {
    const v = load(name);
    const plan = planOf(v.plan);
    const k = v.model.intercept.length;
    const d = v.model.coef[0].length;
    const key = new SecretKey(plan.n, plan.q, Int8Array.from(v.s));
    // normalization
    const bounds = new Bounds(v.model.bounds.lower, v.model.bounds.upper);
    assert.deepEqual(bounds.normalize(v.x), v.z);
    // message placement
    const rows =
      plan.layout === "column"
        ? columnEncode(v.z, plan, d)
        : rowEncode(v.z, plan, new RowGeometry(plan.n, d, k, plan.digits, v.samples_per_ciphertext));
    rows.forEach((row, r) => {
      const nonzero: number[][] = [];
      row.forEach((x, i) => x !== 0 && nonzero.push([i, x]));
      assert.deepEqual(nonzero, v.message_nonzero[r]);
    });
    // the upload bytes
    const cts = encryptBlock(key, v.z, plan, d, k, v.samples_per_ciphertext, {
      seeds: v.seeds.map((s: string) => Buffer.from(s, "hex")),
      noiseKey: Buffer.from(v.noise_key, "hex"),
    });
    assert.deepEqual(cts.map(sha256), v.ciphertexts_sha256);
    assert.deepEqual(cts.map((c) => c.toString("hex")), v.ciphertexts);
    assert.ok(cts.every((c) => c.length === v.ciphertext_bytes));
    // the reply, decoded (range-checked; before flooding: exactly the vectors' scores)
    const replies = v.replies.map((r: string) => Buffer.from(r, "hex"));
    const scores = decodeBlock(key, replies, plan, v.n, d, k, v.samples_per_ciphertext, { flood: false });
    scores.forEach((row, a) =>
      row.forEach((sc, c) => {
        assert.ok(Math.abs(sc - v.scores[a][c]) <= 1e-12 * Math.max(1, Math.abs(sc)), `score ${a},${c}`);
        assert.ok(Math.abs(sc - v.plaintext_scores[a][c]) <= plan.errorBound);
      }),
    );
    // the flood bound F, then flooded scores: within F of the vector's, fresh noise each call
    const F = floodBound(plan);
    assert.ok(Math.abs(F - v.score_flood_bound) <= 1e-12 * v.score_flood_bound, `F = ${F} vs ${v.score_flood_bound}`);
    assert.ok(F > 0 && F < plan.errorBound, "the plan reserves F in its error bound");
    const first = decodeBlock(key, replies, plan, v.n, d, k, v.samples_per_ciphertext);
    const second = decodeBlock(key, replies, plan, v.n, d, k, v.samples_per_ciphertext);
    first.forEach((row, a) =>
      row.forEach((sc, c) => {
        assert.ok(Math.abs(sc - v.scores[a][c]) <= F, `flooded score ${a},${c} is within F`);
        assert.ok(Math.abs(sc - v.plaintext_scores[a][c]) <= plan.errorBound);
        assert.notEqual(sc, v.scores[a][c], "scores are flooded");
        assert.notEqual(sc, second[a][c], "the flooding noise is fresh");
      }),
    );
    if (v.probabilities) {
      const p = probabilities(v.model.link as Link, scores);
      p.forEach((row, a) => row.forEach((x, c) => assert.ok(Math.abs(x - v.probabilities[a][c]) < 1e-12)));
    }
  });
}

test("a corrupted reply word changes the decoded score (the decoding test can fail)", () => {
  const v = load("row");
  const plan = planOf(v.plan);
  const key = new SecretKey(plan.n, plan.q, Int8Array.from(v.s));
  const reply = Buffer.from(v.replies[0], "hex");
  reply[2] ^= 0x80; // bit 23 of the first output position's c0 word
  const scores = decodeBlock(key, [reply], plan, v.n, 5, 3, v.samples_per_ciphertext);
  assert.ok(Math.abs(scores[0][0] - v.scores[0][0]) > plan.errorBound);
});

test("links match the vectors", () => {
  const v = load("links");
  for (const link of ["logistic", "softmax"] as Link[]) {
    const got = probabilities(link, v[link].scores);
    got.forEach((row, a) => row.forEach((x, c) => assert.ok(Math.abs(x - v[link].probabilities[a][c]) < 1e-15)));
  }
});

test("per-(server, model) keys derived from a master seed match the vectors", () => {
  const v = load("keys");
  const seed = Buffer.from(v.master_seed, "hex");
  for (const c of v.cases) {
    assert.equal(peerLabel(c.server, c.model, c.epoch).toString(), c.label);
    assert.equal(labelId(c.server, c.model), c.retired_id);
    const s = deriveTernary(seed, peerLabel(c.server, c.model, c.epoch), c.n, BigInt(c.q));
    assert.deepEqual(Array.from(s.subarray(0, 32)), c.s_first_32);
    assert.equal(sha256(new Uint8Array(s.buffer, s.byteOffset, s.length)), c.s_sha256);
    // the same key through a KeyChain holding the seed and the retired count
    const chain = new KeyChain({ master_seed: seed.toString("base64"), retired: c.epoch ? { [c.retired_id]: c.epoch } : {} });
    const epoch = chain.epoch(c.server, c.model);
    assert.equal(epoch, c.epoch);
    assert.deepEqual(chain.derive(c.server, c.model, epoch, c.n, BigInt(c.q)).s, s);
  }
  // retiring moves to the next epoch's key; other models and servers keep theirs
  const chain = new KeyChain({ master_seed: seed.toString("base64"), retired: {} });
  const [c0, c1] = v.cases;
  chain.retire(c0.server, c0.model);
  assert.equal(chain.epoch(c0.server, c0.model), 1);
  assert.equal(chain.epoch(c0.server, "wine"), 0);
  assert.equal(chain.epoch("localhost:50052", c0.model), 0);
  assert.equal(sha256(Buffer.from(chain.derive(c0.server, c0.model, 1, c1.n, BigInt(c1.q)).s)), c1.s_sha256);
});
