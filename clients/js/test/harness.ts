/**
 * A real `heml serve` on loopback for the Node client's tests and benchmark.
 *
 * The Python interpreter is HEML_PYTHON (default: the repository's .venv, ../../.venv/bin/python
 * relative to clients/js); the repository root goes first on PYTHONPATH so its heml is used.
 */
import { spawn, spawnSync, ChildProcess } from "node:child_process";
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

/** Run the Python fixture synchronously; throws with its stderr on failure. */
export function runFixture(...args: string[]): void {
  const res = spawnSync(PYTHON, [FIXTURE, ...args], { env: pythonEnv(), encoding: "utf8", cwd: REPO_ROOT });
  if (res.status !== 0) throw new Error(`fixture ${args[0]} failed (${PYTHON}):\n${res.stderr}${res.error ?? ""}`);
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
  private log = "";

  private constructor(
    readonly port: number,
    args: string[],
  ) {
    this.proc = spawn(PYTHON, ["-m", "heml", "serve", "--port", String(port), "--reload-seconds", "0", ...args], {
      env: pythonEnv(),
      cwd: REPO_ROOT,
      stdio: ["ignore", "ignore", "pipe"],
    });
    this.proc.stderr!.on("data", (chunk) => (this.log += chunk.toString()));
  }

  /** Start `heml serve` with extra arguments and wait until it says it is serving. */
  static async start(args: string[], timeoutMs = 60_000): Promise<Serve> {
    const srv = new Serve(await freePort(), args);
    const deadline = Date.now() + timeoutMs;
    while (!srv.log.includes("heml serving")) {
      if (srv.proc.exitCode !== null || Date.now() > deadline) {
        srv.stop();
        throw new Error(`heml serve did not start:\n${srv.log}`);
      }
      await new Promise((r) => setTimeout(r, 50));
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
