/**
 * The client against a malicious server: crafted replies are refused whole (positive control:
 * with the range check off, the crafted value would come back as a score), the handle's key is
 * retired after a rejection, and every score carries fresh uniform noise on [-F, F].
 *
 * The malicious server is a real gRPC server on loopback (grpc-js) that serves a model's
 * metadata and answers Predict with replies it chose, c1 = 0 and c0 = a value of its choice at
 * every output position (what the client decrypts, whatever its key).
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { fileURLToPath } from "node:url";
import path from "node:path";

import { Client, HemlError, RemoteModel, ReplyRejected, planFromMessage } from "../src/client.js";
import { SecretKey, replySize } from "../src/crypto.js";
import { Plan, RowGeometry, decodeBlock } from "../src/layouts.js";
import { InvalidReply, RANGE_FRACTION, checkRange, floodBound, uniformNoise } from "../src/protect.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(here, "../../../..");
const Q2048 = 18014398509404161n;

/** words of `bits` bits -> a little-endian bit stream (the reply format) */
function packBits(words: bigint[], bits: number): Buffer {
  const out = Buffer.alloc(Math.ceil((words.length * bits) / 8));
  let acc = 0n;
  let have = 0;
  let pos = 0;
  for (const w of words) {
    acc |= (w & ((1n << BigInt(bits)) - 1n)) << BigInt(have);
    have += bits;
    while (have >= 8) {
      out[pos++] = Number(acc & 0xffn);
      acc >>= 8n;
      have -= 8;
    }
  }
  if (have > 0) out[pos] = Number(acc);
  return out;
}

/** A reply with c1 = 0 and c0 = the given signed values (units of 2^-bits of the modulus). */
function craftedReply(values: number[], n: number, bits: number): Buffer {
  const mod = 1n << BigInt(bits);
  const c0 = values.map((v) => ((BigInt(Math.round(v)) % mod) + mod) % mod);
  const reply = packBits([...c0, ...new Array<bigint>(n).fill(0n)], bits);
  assert.equal(reply.length, replySize(values.length, n, bits));
  return reply;
}

const PLAN_MSG = {
  layout: "ROW",
  params: { scheme: "CKKS", poly_modulus_degree: 2048, coeff_modulus: [Q2048.toString()], seed_prng: "aes256ctr" },
  log2_scale_x: 28,
  log2_scale_w: 21,
  digit_bits: 26,
  digits: 1,
  reply_bits: 27,
  error_bound: 1e-4,
};
const PLAN: Plan = planFromMessage(PLAN_MSG)!;
/** one score in reply words (units of q / 2^bits), as the plan's decoding reads them */
const wordsFor = (score: number) => (score * 2 ** (PLAN.log2ScaleX + PLAN.log2ScaleW) * 2 ** PLAN.replyBits) / Number(PLAN.q);
/** a value of `fraction` q in reply words */
const fractionOfQ = (fraction: number) => fraction * 2 ** PLAN.replyBits;
const scoreOf = (words: number) => (words * (Number(PLAN.q) / 2 ** PLAN.replyBits)) / 2 ** (PLAN.log2ScaleX + PLAN.log2ScaleW);

test("range check: honest values up to 0.45 q pass; beyond 0.475 q, either sign, the reply is refused", () => {
  const q = Number(Q2048);
  checkRange([0, 0.45 * q, -0.45 * q, 0.475 * q], Q2048);
  assert.throws(() => checkRange([0, 0.48 * q], Q2048), InvalidReply);
  assert.throws(() => checkRange([-0.48 * q, 0], Q2048), /outside the range the model's plan allows/);
  assert.throws(() => checkRange([NaN], Q2048), InvalidReply);
});

test("a crafted reply above 0.475 q is refused whole; with the check off its value would be returned", () => {
  const key = SecretKey.generate(PLAN.n, PLAN.q);
  const geo = new RowGeometry(PLAN.n, 2, 1, 1, 2);
  const P = geo.outputPositions(0).length; // two samples in one ciphertext
  const honest = craftedReply([wordsFor(0.5), fractionOfQ(0.449)], PLAN.n, PLAN.replyBits);
  const crafted = craftedReply([wordsFor(0.5), fractionOfQ(0.48)], PLAN.n, PLAN.replyBits);
  assert.equal(P, 2);
  // positive control: the same replies with the check and the flood off decode to what the server chose
  const raw = decodeBlock(key, [crafted], PLAN, 2, 2, 1, 2, { checkRange: false, flood: false });
  assert.ok(Math.abs(raw[0][0] - 0.5) < 1e-6); // one reply word is 2^-22 score units
  assert.ok(Math.abs(raw[1][0] - scoreOf(fractionOfQ(0.48))) < 1e-6, `${raw[1][0]}`);
  // an in-range reply is accepted (flooded), the crafted one refused
  const ok = decodeBlock(key, [honest], PLAN, 2, 2, 1, 2);
  assert.ok(Math.abs(ok[0][0] - 0.5) <= floodBound(PLAN));
  assert.throws(() => decodeBlock(key, [crafted], PLAN, 2, 2, 1, 2), InvalidReply);
  assert.throws(() => decodeBlock(key, [crafted], PLAN, 2, 2, 1, 2, { flood: false }), InvalidReply);
  // the COLUMN path checks too (one reply per class and digit; positions = samples)
  const column: Plan = { ...PLAN, layout: "column" };
  const colCrafted = craftedReply([wordsFor(0.25), -fractionOfQ(0.49), 0], PLAN.n, PLAN.replyBits);
  assert.ok(decodeBlock(key, [colCrafted], column, 3, 2, 1, 0, { checkRange: false })[1][0] < -10);
  assert.throws(() => decodeBlock(key, [colCrafted], column, 3, 2, 1, 0), InvalidReply);
});

test("a reply of the wrong count or size is refused as a whole (InvalidReply: the key is retired)", () => {
  const key = SecretKey.generate(PLAN.n, PLAN.q);
  const reply = craftedReply([wordsFor(0.5), wordsFor(0.25)], PLAN.n, PLAN.replyBits);
  assert.equal(decodeBlock(key, [reply], PLAN, 2, 2, 1, 2).length, 2); // positive control
  assert.throws(() => decodeBlock(key, [reply, reply], PLAN, 2, 2, 1, 2), InvalidReply);
  assert.throws(() => decodeBlock(key, [], PLAN, 2, 2, 1, 2), InvalidReply);
  assert.throws(() => decodeBlock(key, [reply.subarray(1)], PLAN, 2, 2, 1, 2), InvalidReply);
  const column: Plan = { ...PLAN, layout: "column" };
  assert.throws(() => decodeBlock(key, [reply, reply], column, 2, 2, 1, 0), InvalidReply);
});

test("flooding noise is uniform on [-F, F) and fresh", () => {
  const count = 20_000;
  const x = uniformNoise(count, 2);
  const y = uniformNoise(count, 2);
  let sum = 0;
  let sq = 0;
  let min = Infinity;
  let max = -Infinity;
  for (const v of x) {
    sum += v;
    sq += v * v;
    min = Math.min(min, v);
    max = Math.max(max, v);
  }
  assert.ok(min >= -2 && max < 2);
  assert.ok(min < -1.98 && max > 1.98, `spread ${min}..${max}: the whole interval is used`);
  assert.ok(Math.abs(sum / count) < 0.05, `mean ${sum / count}`);
  assert.ok(Math.abs(sq / count - 4 / 3) < 0.05, `variance ${sq / count} vs 4/3`);
  assert.notDeepEqual(x, y);
});

// ---------------------------------------------------------------------- a malicious server
let server: grpc.Server;
let target = "";
let replyValue = 0; // what the server makes every output position decrypt to (reply words)
let predictCalls = 0;

const MODEL = {
  name: "m",
  version: 1,
  task: "REGRESSION",
  link: "IDENTITY",
  n_features: 2,
  n_outputs: 1,
  output_ndim: 1,
  bounds: { lower: [0, 0], upper: [1, 1], out_of_bounds: "error" },
  layouts: [PLAN_MSG],
  tolerance: 1e-4,
  server: { protocol_version: "2.0", server_version: "malicious" },
};

before(async () => {
  const def = protoLoader.loadSync(path.join(REPO, "proto/heml/v1/heml.proto"), { keepCase: true, longs: String, enums: String, defaults: true });
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const pkg = grpc.loadPackageDefinition(def) as any;
  server = new grpc.Server();
  server.addService(pkg.heml.v1.Inference.service, {
    GetModel: (_call: unknown, cb: grpc.sendUnaryData<unknown>) => cb(null, MODEL),
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    Predict: (call: any, cb: grpc.sendUnaryData<unknown>) => {
      predictCalls++;
      const { n, samples_per_ciphertext: s } = call.request;
      const geo = new RowGeometry(PLAN.n, 2, 1, 1, s);
      const replies = [];
      for (let b = 0; b < Math.ceil(n / s); b++) {
        for (let g = 0; g < geo.groups; g++) {
          replies.push(craftedReply(geo.outputPositions(g).map(() => replyValue), PLAN.n, PLAN.replyBits));
        }
      }
      cb(null, { model: "m", version: 1, layout: "ROW", n, reply_bits: PLAN.replyBits, replies });
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  target = `127.0.0.1:${port}`;
});

after(() => server.forceShutdown());

test("a malicious server's crafted reply: refused, the key retired, the handle ended", async () => {
  const client = new Client(target, { retries: 0 });
  try {
    const rows = [[0.5, 0.5]];
    const model = await client.model("m");
    const sibling = await client.model("m");
    const firstKey = model.keyFor(PLAN);
    // positive control: in-range replies are decoded (the server chose the score)
    replyValue = wordsFor(3);
    const [[score]] = await model.scores(rows);
    assert.ok(Math.abs(score - 3) <= floodBound(PLAN) && score !== 3, `${score}`);
    // the same server, a value above 0.475 q: refused, never returned
    replyValue = fractionOfQ(0.48);
    await assert.rejects(model.scores(rows), (e: HemlError) => e instanceof ReplyRejected && e.code === "DATA_LOSS" && /0\.475 q/.test(e.message));
    // positive control: a handle without the range check would have returned it
    const unchecked = new RemoteModel(client, model.info, { checkRange: false });
    const [[leaked]] = await unchecked.scores(rows);
    assert.ok(Math.abs(leaked - scoreOf(fractionOfQ(0.48))) < 1e-3, `${leaked}`);
    // the handle and every handle of the retired key refuse, without asking the server
    replyValue = wordsFor(3);
    const calls = predictCalls;
    await assert.rejects(model.scores(rows), /key is retired/);
    await assert.rejects(sibling.scores(rows), /another handle of this model rejected a reply/);
    assert.equal(predictCalls, calls);
    // a new handle derives the next key; the state to keep records the retirement
    const fresh = await client.model("m");
    assert.notDeepEqual(fresh.keyFor(PLAN).s, firstKey.s);
    assert.ok(Math.abs((await fresh.scores(rows))[0][0] - 3) <= floodBound(PLAN));
    const state = client.keys.toJSON();
    assert.deepEqual(Object.values(state.retired), [1]); // one rejection, one retired key
    const later = new Client(target, { keyState: state });
    try {
      assert.deepEqual((await later.model("m")).keyFor(PLAN).s, fresh.keyFor(PLAN).s);
    } finally {
      later.close();
    }
  } finally {
    client.close();
  }
});

test("keys differ per server and per model, and a fresh client's seed is fresh", () => {
  const a = new Client("127.0.0.1:1");
  const b = new Client("127.0.0.1:1");
  try {
    const s = (c: Client, server: string, model: string) => c.keys.derive(server, model, 0, PLAN.n, PLAN.q).s;
    assert.deepEqual(s(a, "127.0.0.1:1", "m"), s(a, "127.0.0.1:1", "m"));
    assert.notDeepEqual(s(a, "127.0.0.1:1", "m"), s(a, "127.0.0.1:2", "m"));
    assert.notDeepEqual(s(a, "127.0.0.1:1", "m"), s(a, "127.0.0.1:1", "n"));
    assert.notDeepEqual(s(a, "127.0.0.1:1", "m"), s(b, "127.0.0.1:1", "m"));
    assert.throws(() => new Client("127.0.0.1:1", { keyState: { master_seed: "AAAA", retired: {} } }), /32 bytes/);
    const good = a.keys.toJSON();
    const restored = new Client("127.0.0.1:1", { keyState: good });
    assert.deepEqual(restored.keys.toJSON(), good);
    restored.close();
    assert.throws(() => new Client("127.0.0.1:1", { keyState: { ...good, master_seed: "*" + good.master_seed } }), /base64/);
    assert.throws(() => new Client("127.0.0.1:1", { keyState: { ...good, retired: { x: -1 } } }), /not a count/);
  } finally {
    a.close();
    b.close();
  }
});

test("the flood bound is Python's formula (a hand computation for the plan above)", () => {
  const expected = 4 * 6 * (0.5 + 2 ** (27 - 52)) * Math.sqrt(2049 / 3) * (Number(Q2048) / 2 ** 27) / 2 ** 49;
  assert.ok(Math.abs(floodBound(PLAN) - expected) <= 1e-12 * expected);
  assert.ok(floodBound({ ...PLAN, digits: 2 }) > 2 ** 26 * floodBound(PLAN));
});

