/**
 * End to end: the Node client against real `heml serve` processes on loopback (one plain, one
 * with TLS and API keys), compared with the plaintext models and with the Python SDK's
 * encrypted scores for the same inputs (binary, multiclass and regression models).
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

import { Client, HemlError } from "../src/client.js";
import { LayoutName } from "../src/layouts.js";
import { Serve, runFixture, startAll } from "./harness.js";

let dir = "";
let plain: Serve | undefined;
let secure: Serve | undefined;
// eslint-disable-next-line @typescript-eslint/no-explicit-any
let cases: any;
// eslint-disable-next-line @typescript-eslint/no-explicit-any
let python: any;

before(
  async () => {
    dir = mkdtempSync(path.join(tmpdir(), "heml-js-"));
    await runFixture(["prepare", dir]);
    const models = ["--models", path.join(dir, "models")];
    const tls = ["--tls-cert", path.join(dir, "server.pem"), "--tls-key", path.join(dir, "server.key")];
    [plain, secure] = await startAll([models, [...models, ...tls, "--api-keys", path.join(dir, "api-keys.json")]], dir);
    await runFixture(["score", String(plain.port), dir]);
    cases = JSON.parse(readFileSync(path.join(dir, "cases.json"), "utf8"));
    python = JSON.parse(readFileSync(path.join(dir, "python.json"), "utf8"));
  },
  { timeout: 300_000 },
);

after(async () => {
  await Promise.all([plain?.stop(), secure?.stop()]);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test("ListModels and GetModel describe the served models", async () => {
  const client = new Client(`127.0.0.1:${plain!.port}`);
  try {
    const models = await client.models();
    assert.deepEqual(models.map((m) => m.name).sort(), ["cancer", "diabetes", "dp-cancer", "wine"]);
    const dp = models.find((m) => m.name === "dp-cancer")!;
    assert.equal(dp.bounds.outOfBounds, "clip");
    assert.ok(dp.preprocessing.rowNorm, "the DP model clips row norms");
    assert.match(client.server!.protocolVersion, /^2\./);
    const wine = await client.model("wine");
    assert.equal(wine.info.task, "multiclass");
    assert.equal(wine.info.link, "softmax");
    assert.deepEqual(wine.info.classes, ["barbera", "barolo", "grignolino"]);
    assert.ok(wine.info.plans.row && wine.info.plans.column);
    await assert.rejects(client.model("no-such-model"), (e: HemlError) => e.code === "NOT_FOUND");
  } finally {
    client.close();
  }
});

for (const name of ["cancer", "wine", "diabetes", "dp-cancer"]) {
  for (const layout of ["row", "column"] as LayoutName[]) {
    test(`${name} (${layout}): encrypted scores match the plaintext model and the Python SDK`, async () => {
      const client = new Client(`127.0.0.1:${plain!.port}`);
      try {
        const model = await client.model(name);
        const bound = model.info.plans[layout]!.errorBound;
        const got = await model.scores(cases[name].x, layout);
        const want = cases[name].plaintext_scores;
        const py = python[name][layout];
        assert.equal(got.length, want.length);
        let worst = 0;
        got.forEach((row, a) =>
          row.forEach((v, c) => {
            worst = Math.max(worst, Math.abs(v - want[a][c]));
            assert.ok(Math.abs(v - want[a][c]) <= bound, `${name} row ${a}: ${v} vs plaintext ${want[a][c]} (bound ${bound})`);
            assert.ok(Math.abs(v - py[a][c]) <= 2 * bound, `${name} row ${a}: ${v} vs Python SDK ${py[a][c]}`);
          }),
        );
        assert.ok(worst > 0, "scores carry encryption noise: they are not copied from the plaintext");
        const predicted = await model.predict(cases[name].x, layout);
        if (name === "diabetes") {
          predicted.forEach((y, a) => assert.ok(Math.abs((y as number) - python[name].predict[a]) <= 2 * bound));
        } else {
          assert.deepEqual(predicted, python[name].predict);
        }
        if (name !== "diabetes") {
          const proba = await model.predictProba(cases[name].x.slice(0, 3), layout);
          proba.forEach((p) => assert.ok(Math.abs(p.reduce((x, y) => x + y, 0) - 1) < 1e-12));
        }
      } finally {
        client.close();
      }
    });
  }
}

test("TLS and API keys: the right key over TLS scores, a missing or wrong key is refused", async () => {
  const ca = readFileSync(path.join(dir, "ca.pem"));
  const apiKey = readFileSync(path.join(dir, "api_key.txt"), "utf8");
  const target = `localhost:${secure!.port}`;
  const good = new Client(target, { rootCertificates: ca, apiKey });
  const none = new Client(target, { rootCertificates: ca, retries: 0 });
  const wrong = new Client(target, { rootCertificates: ca, apiKey: "heml_" + "x".repeat(40), retries: 0 });
  const plaintext = new Client(target, { apiKey, retries: 0, timeoutMs: 3000 });
  try {
    const model = await good.model("cancer");
    const got = await model.scores(cases.cancer.x.slice(0, 2));
    got.forEach((row, a) => assert.ok(Math.abs(row[0] - cases.cancer.plaintext_scores[a][0]) <= model.info.plans.row!.errorBound));
    await assert.rejects(none.models(), (e: HemlError) => e.code === "UNAUTHENTICATED");
    await assert.rejects(wrong.models(), (e: HemlError) => e.code === "UNAUTHENTICATED");
    await assert.rejects(plaintext.models(), (e: HemlError) => e.code === "UNAVAILABLE");
  } finally {
    for (const c of [good, none, wrong, plaintext]) c.close();
  }
});

test("bad input is refused before anything is encrypted", async () => {
  const client = new Client(`127.0.0.1:${plain!.port}`);
  try {
    const model = await client.model("cancer");
    assert.deepEqual(await model.scores([]), []);
    await assert.rejects(model.scores([[1, 2, 3]]), /expects 30/);
    const far = cases.cancer.x[0].map((v: number) => v * 1e6 + 1e6);
    await assert.rejects(model.scores([far]), RangeError);
    await assert.rejects(model.scores([[...cases.cancer.x[0].slice(0, 29), null]]), /missing value/);
  } finally {
    client.close();
  }
});
