/**
 * A real `heml serve` on loopback for the Node client's tests and benchmark.
 *
 * The Python interpreter is HEML_PYTHON (default: the repository's .venv, ../../.venv/bin/python
 * relative to clients/js); the repository root goes first on PYTHONPATH so its heml is used.
 */
import { spawn, ChildProcess } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url)); // clients/js/dist/test
export const PACKAGE_ROOT = path.resolve(here, "../..");
export const REPO_ROOT = path.resolve(PACKAGE_ROOT, "../..");
export const PYTHON = process.env.HEML_PYTHON
  ? path.resolve(PACKAGE_ROOT, process.env.HEML_PYTHON)
  : path.resolve(PACKAGE_ROOT, "../../.venv/bin/python");
export const FIXTURE = path.join(PACKAGE_ROOT, "test", "fixture.py");

export function pythonEnv(): NodeJS.ProcessEnv {
  const prior = process.env.PYTHONPATH;
  return { ...process.env, PYTHONPATH: prior ? `${REPO_ROOT}${path.delimiter}${prior}` : REPO_ROOT };
}

/** Run the Python fixture (asynchronously: the event loop keeps running); throws with its
 * stderr on failure or after timeoutMs. */
export async function runFixture(args: string[], timeoutMs = 180_000): Promise<void> {
  const proc = spawn(PYTHON, [FIXTURE, ...args], { env: pythonEnv(), cwd: REPO_ROOT, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  proc.stderr!.on("data", (chunk) => (stderr += chunk.toString()));
  const timer = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
  const code = await new Promise<number | null>((resolve, reject) => {
    proc.once("error", reject);
    proc.once("close", resolve);
  }).finally(() => clearTimeout(timer));
  if (code !== 0) throw new Error(`fixture ${args[0]} failed (${PYTHON}, exit ${code}):\n${stderr}`);
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      srv.close(() => resolve(typeof addr === "object" && addr ? addr.port : 0));
    });
  });
}

export class Serve {
  readonly proc: ChildProcess;
  readonly logPath: string;

  private constructor(
    readonly port: number,
    args: string[],
    logDir: string,
  ) {
    // the log goes to a file, not a pipe: a pipe nobody drains (the event loop blocked in a
    // synchronous call) would fill up and stall the server
    this.logPath = path.join(logDir, `serve-${port}.log`);
    const log = openSync(this.logPath, "w");
    this.proc = spawn(PYTHON, ["-m", "heml", "serve", "--port", String(port), "--reload-seconds", "0", ...args], {
      env: pythonEnv(),
      cwd: REPO_ROOT,
      stdio: ["ignore", log, log],
    });
    closeSync(log);
  }

  get log(): string {
    return existsSync(this.logPath) ? readFileSync(this.logPath, "utf8") : "";
  }

  /** Start `heml serve` with extra arguments (log in logDir) and wait until it is serving. */
  static async start(args: string[], logDir: string, timeoutMs = 120_000): Promise<Serve> {
    const srv = new Serve(await freePort(), args, logDir);
    const deadline = Date.now() + timeoutMs;
    while (!srv.log.includes("heml serving")) {
      if (srv.proc.exitCode !== null || Date.now() > deadline) {
        await srv.stop();
        throw new Error(`heml serve did not start:\n${srv.log}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    return srv;
  }

  /** SIGTERM and wait for the process to exit (SIGKILL after 20 s). */
  async stop(): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const exited = new Promise((r) => this.proc.once("exit", r));
    this.proc.kill("SIGTERM");
    const timer = setTimeout(() => this.proc.kill("SIGKILL"), 20_000);
    await exited;
    clearTimeout(timer);
  }
}

/** Start several servers; if one fails, stop the others before rethrowing. */
export async function startAll(specs: string[][], logDir: string): Promise<Serve[]> {
  const results = await Promise.allSettled(specs.map((args) => Serve.start(args, logDir)));
  const failed = results.find((r) => r.status === "rejected") as PromiseRejectedResult | undefined;
  if (failed) {
    await Promise.all(results.map((r) => (r.status === "fulfilled" ? r.value.stop() : undefined)));
    throw failed.reason;
  }
  return results.map((r) => (r as PromiseFulfilledResult<Serve>).value);
}
