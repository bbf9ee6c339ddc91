/**
 * Latency of one encrypted prediction at d = 30 (breast cancer, logistic regression): the Node
 * client beside the Python SDK, against the same `heml serve` on loopback, in the same run.
 *
 *     npm run bench            (HEML_PYTHON picks the interpreter; default ../../.venv/bin/python)
 *
 * Prints the median of 20 calls after one warm-up call, for each client.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

import { Client } from "../src/client.js";
import { Serve, runFixture } from "../test/harness.js";

const CALLS = 20;

async function main(): Promise<void> {
  const dir = mkdtempSync(path.join(tmpdir(), "heml-js-bench-"));
  await runFixture(["prepare", dir]);
  const server = await Serve.start(["--models", path.join(dir, "models")], dir);
  try {
    await runFixture(["score", String(server.port), dir]);
    const python = JSON.parse(readFileSync(path.join(dir, "python.json"), "utf8"));
    const cases = JSON.parse(readFileSync(path.join(dir, "cases.json"), "utf8"));
    const client = new Client(`127.0.0.1:${server.port}`);
    const model = await client.model("cancer");
    const x = [cases.cancer.x[0]];
    await model.scores(x);
    const times: number[] = [];
    for (let i = 0; i < CALLS; i++) {
      const t = performance.now();
      await model.scores(x);
      times.push(performance.now() - t);
    }
    times.sort((a, b) => a - b);
    client.close();
    const node = times[Math.floor(CALLS / 2)];
    console.log(`one prediction, d = ${model.info.nFeatures} (median of ${CALLS}, loopback, same server):`);
    console.log(`  Node client (clients/js): ${node.toFixed(1)} ms`);
    console.log(`  Python SDK (heml.Client): ${python.cancer.latency_ms.toFixed(1)} ms`);
  } finally {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
