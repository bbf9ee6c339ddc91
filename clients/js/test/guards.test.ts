/**
 * The client's checks, each with its positive control: what it must accept, then what it must
 * refuse. And encryption with a fresh key round-trips (not only under the vectors' fixed one).
 */
import { test } from "node:test";
import assert from "node:assert/strict";

import { Client, RemoteModel, checkProtocol, modelInfoFromMessage, planFromMessage } from "../src/client.js";
import { SecretKey, checkParams, decryptReply, encryptCoefficients, replySize } from "../src/crypto.js";
import { roundHalfEven } from "../src/layouts.js";
import { nttFor } from "../src/modular.js";
import { expand } from "../src/prng.js";
import { Bounds, Preprocessing } from "../src/preprocess.js";
import { isLoopback, withDefaultPort } from "../src/target.js";

const Q2048 = 18014398509404161n;
const Q4096 = 18014398509309953n;

test("parameter check: heml's sets pass, others are refused", () => {
  checkParams(2048, Q2048);
  checkParams(4096, Q4096);
  assert.throws(() => checkParams(1024, Q2048), /not supported/);
  assert.throws(() => checkParams(2048, (1n << 54n) + 1n), /bits/);
  assert.throws(() => checkParams(2048, Q2048 + 2n), /1 mod 2N/);
  assert.throws(() => checkParams(2048, 4097n * 4097n), /not prime/); // 1 mod 4096, composite
});

function planMsg(changes: Record<string, unknown> = {}, params: Record<string, unknown> = {}) {
  return {
    layout: "ROW",
    params: { scheme: "CKKS", poly_modulus_degree: 2048, coeff_modulus: [Q2048.toString()], seed_prng: "aes256ctr", ...params },
    log2_scale_x: 28,
    log2_scale_w: 21,
    digit_bits: 26,
    digits: 1,
    reply_bits: 25,
    error_bound: 1e-4,
    ...changes,
  };
}

test("layout plans: a valid one is read, unsupported or invalid ones are refused", () => {
  const plan = planFromMessage(planMsg());
  assert.equal(plan?.q, Q2048);
  assert.equal(planFromMessage(planMsg({ layout: "PRIVATE" })), null);
  assert.throws(() => planFromMessage(planMsg({}, { seed_prng: "blake2xb" })), /unsupported/);
  assert.throws(() => planFromMessage(planMsg({}, { coeff_modulus: [Q2048.toString(), Q2048.toString()] })), /unsupported/);
  assert.throws(() => planFromMessage(planMsg({}, { poly_modulus_degree: 8192 })), /not supported/);
  assert.throws(() => planFromMessage(planMsg({ reply_bits: 60 })), /reply width/);
  assert.throws(() => planFromMessage(planMsg({ digits: 0 })), /digit/);
  assert.throws(() => planFromMessage(planMsg({ log2_scale_x: 0 })), /scales/);
});

test("a server with another major protocol version is refused", () => {
  assert.equal(checkProtocol("t", { protocol_version: "2.3" }).protocolVersion, "2.3");
  assert.throws(() => checkProtocol("t", { protocol_version: "9.0" }), /speaks heml protocol 9.0/);
  assert.throws(() => checkProtocol("t", {}), /unknown/);
});

test("model-privacy models are refused rather than scored in the default mode", () => {
  const base = { name: "m", version: 1, task: "BINARY", link: "LOGISTIC", n_features: 2, n_outputs: 1, bounds: { lower: [0, 0], upper: [1, 1] } };
  const client = new Client("127.0.0.1:1");
  try {
    const ok = new RemoteModel(client, modelInfoFromMessage({ ...base, layouts: [planMsg()] }));
    assert.ok(ok.info.plans.row);
    const priv = modelInfoFromMessage({ ...base, layouts: [planMsg({ layout: "PRIVATE" })], privacy: { enabled: true } });
    assert.throws(() => new RemoteModel(client, priv), /model-privacy/);
  } finally {
    client.close();
  }
});

test("key generation: uniform ternary from the CSPRNG, fresh each time; JSON round-trips", () => {
  const a = SecretKey.generate(4096, Q4096);
  const b = SecretKey.generate(4096, Q4096);
  for (const v of [-1, 0, 1]) {
    const count = a.s.filter((x) => x === v).length;
    assert.ok(Math.abs(count - 4096 / 3) < 5 * Math.sqrt((4096 * 2) / 9), `${v}: ${count}`);
  }
  assert.notDeepEqual(a.s, b.s);
  assert.deepEqual(SecretKey.fromJSON(a.toJSON()).s, a.s);
  assert.throws(() => new SecretKey(2048, Q2048, new Int8Array(2048).fill(2)), /\{-1, 0, 1\}/);
});

test("encryption under a fresh key decrypts to m + e; fresh seeds make equal messages differ", () => {
  const key = SecretKey.generate(2048, Q2048);
  const m = Float64Array.from({ length: 2048 }, (_, i) => (i % 7) * 1_000_003 - 3_000_000);
  const [c1, c2] = encryptCoefficients(key, [m, m]);
  assert.notDeepEqual(c1, c2);
  const ntt = nttFor(2048, Q2048);
  for (const blob of [c1, c2]) {
    const seed = blob.subarray(7 * 2048);
    const [a] = expand(seed, 2048, [Q2048]);
    const vals = Array.from({ length: 2048 }, (_, i) => {
      const c0 = BigInt(blob.readUIntLE(7 * i, 4)) + (BigInt(blob.readUIntLE(7 * i + 4, 3)) << 32n);
      return (c0 + a[i] * key.sNtt[i]) % Q2048;
    });
    ntt.inverse(vals).forEach((v, i) => {
      const signed = v > Q2048 / 2n ? v - Q2048 : v;
      assert.ok(Math.abs(Number(signed) - m[i]) <= 21, `coefficient ${i}`);
    });
  }
});

test("encryption refuses messages too large or not integers, and a wrong number of seeds", () => {
  const key = SecretKey.generate(2048, Q2048);
  const m = new Float64Array(2048);
  encryptCoefficients(key, [m]);
  m[5] = Number(Q2048 / 4n) + 16;
  assert.throws(() => encryptCoefficients(key, [m]), /below q\/4/);
  m[5] = 0.5;
  assert.throws(() => encryptCoefficients(key, [m]), /integers/);
  m[5] = 0;
  assert.throws(() => encryptCoefficients(key, [m], { seeds: [] }), /seeds/);
});

test("a reply of the wrong size is refused", () => {
  const key = SecretKey.generate(2048, Q2048);
  const good = Buffer.alloc(replySize(1, 2048, 25));
  assert.equal(decryptReply(key, good, [0], 25).length, 1);
  assert.throws(() => decryptReply(key, good.subarray(1), [0], 25), /expected/);
});

test("rounding is half to even, as the Python SDK's", () => {
  assert.deepEqual([2.5, 3.5, -2.5, 0.5, -0.5, 1.4999, 7].map(roundHalfEven), [2, 4, -2, 0, -0, 1, 7]);
});

test("bounds: inside passes, outside is refused (error) or clipped (clip)", () => {
  const strict = new Bounds([0, -1], [10, 1]);
  assert.deepEqual(strict.apply([[5, 0]]), [[5, 0]]);
  assert.throws(() => strict.apply([[11, 0]], ["age", "x"]), /age = 11/);
  assert.deepEqual(new Bounds([0, -1], [10, 1], "clip").apply([[11, -2]]), [[10, -1]]);
  assert.deepEqual(strict.normalize([[10, 0], [0, 1]]), [[1, 0], [-1, 1]]);
});

test("preprocessing: imputation and one-hot categories; unknown categories refused unless ignored", () => {
  const spec = {
    inputs: ["age", "colour"],
    columns: [
      { name: "age", kind: "numeric" as const, impute: 40 },
      { name: "colour", kind: "categorical" as const, categories: ["blue", "red"], feature_names: ["colour_blue", "colour_red"] },
    ],
  };
  const p = new Preprocessing(spec, 3);
  assert.deepEqual(p.transform([[30, "red"], [null, "blue"]]), [[30, 0, 1], [40, 1, 0]]);
  assert.throws(() => p.transform([[30, "green"]]), /unknown category/);
  const lenient = new Preprocessing({ ...spec, columns: [spec.columns[0], { ...spec.columns[1], handle_unknown: "ignore" as const }] }, 3);
  assert.deepEqual(lenient.transform([[30, "green"]]), [[30, 0, 0]]);
  assert.throws(() => p.transform([[30]]), /expects 2/);
});

test("an API key without TLS to a remote host warns; on loopback it does not; mTLS needs both parts", async () => {
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(w.message);
  process.on("warning", onWarning);
  try {
    new Client("127.0.0.1:1", { apiKey: "k" }).close();
    await new Promise((r) => setImmediate(r));
    assert.equal(warnings.length, 0);
    new Client("heml.example.invalid:443", { apiKey: "k", insecure: true }).close();
    await new Promise((r) => setImmediate(r));
    assert.equal(warnings.length, 1);
    assert.match(warnings[0], /without TLS/);
  } finally {
    process.off("warning", onWarning);
  }
  assert.throws(() => new Client("127.0.0.1:1", { clientCert: Buffer.from("x") }), /go together/);
});

test("plaintext to a target off this machine is refused unless insecure; loopback is allowed", () => {
  for (const t of ["127.0.0.1:1", "localhost:1", "[::1]:1", "127.3.4.5:1", "unix:/tmp/heml.sock", "ipv4:127.0.0.1:1,127.0.0.2:1", "dns:///localhost:1"]) {
    assert.ok(isLoopback(t), t);
    new Client(t).close();
  }
  for (const t of ["10.0.0.1:1", "heml.example.invalid:443", "[2001:db8::1]:1", "dns://8.8.8.8/localhost:1", "ipv4:127.0.0.1:1,10.0.0.1:1", "localhost.example.com:1"]) {
    assert.ok(!isLoopback(t), t);
    assert.throws(() => new Client(t), /refusing a plaintext connection/);
    new Client(t, { insecure: true }).close();
  }
  new Client("10.0.0.1:1", { rootCertificates: Buffer.from("") }).close();
});

test("a bare host gets heml's default port, as in the Python SDK (the key derivation reads it)", () => {
  assert.equal(withDefaultPort("localhost"), "localhost:50051");
  assert.equal(withDefaultPort("localhost:7"), "localhost:7");
  assert.equal(withDefaultPort("::1"), "[::1]:50051");
  assert.equal(withDefaultPort("[::1]"), "[::1]:50051");
  assert.equal(withDefaultPort("[::1]:7"), "[::1]:7");
  assert.equal(withDefaultPort("unix:/tmp/s"), "unix:/tmp/s");
  assert.equal(withDefaultPort("dns:///h"), "dns:///h");
  const client = new Client("localhost");
  assert.equal(client.target, "localhost:50051");
  client.close();
});
