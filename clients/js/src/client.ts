/**
 * The heml Node client: ListModels, GetModel and Predict over gRPC (@grpc/grpc-js with the
 * repository's proto/heml/v1/heml.proto loaded by @grpc/proto-loader).
 *
 *     const client = new Client("localhost:50051", { apiKey, rootCertificates });
 *     const model = await client.model("cancer");
 *     const proba = await model.predictProba(rows);
 *
 * Secret keys live in this process and never leave it; only ciphertexts go out. Each (server,
 * model) pair gets its own key, derived from the client's master seed (src/keys.ts); a reply
 * that fails the checks of src/protect.ts retires that key and ends the handle. Every call has
 * a deadline; calls failing with UNAVAILABLE are retried with backoff (all of heml's calls are
 * idempotent).
 */
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

import { SecretKey, checkParams } from "./crypto.js";
import { KeyChain, KeyState } from "./keys.js";
import { DecodeOptions, LayoutName, Plan, RowGeometry, decodeBlock, encryptBlock, maxSamplesPerCiphertext } from "./layouts.js";
import { Link, classIndices, probabilities, regressionOutput } from "./links.js";
import { Bounds, Preprocessing, Raw } from "./preprocess.js";
import { InvalidReply } from "./protect.js";
import { isLoopback, withDefaultPort } from "./target.js";

export const PROTOCOL_MAJOR = "2";
export const SEED_PRNG = "aes256ctr";
const MiB = 1 << 20;
const MAX_MESSAGE_BYTES = 4 * MiB;
const MAX_ROW_GROUPS = 256;
const REPLY_BITS_MIN = 24;
const REPLY_BITS_MAX = 56;

const here = path.dirname(fileURLToPath(import.meta.url));

/** The .proto: HEML_PROTO, else proto/ shipped beside the package, else the repository's. */
function defaultProtoPath(): string {
  const candidates = [
    process.env.HEML_PROTO,
    path.resolve(here, "../../proto/heml/v1/heml.proto"),
    path.resolve(here, "../../../../proto/heml/v1/heml.proto"),
  ].filter((p): p is string => Boolean(p));
  const found = candidates.find((p) => existsSync(p));
  if (!found) throw new Error(`heml.proto not found (tried ${candidates.join(", ")}); set HEML_PROTO`);
  return found;
}

export interface ClientOptions {
  /** sent as `authorization: Bearer <apiKey>` on every call */
  apiKey?: string;
  /** PEM of the CA that signed the server's certificate: TLS when set */
  rootCertificates?: Buffer;
  /** mTLS client certificate chain and private key (PEM) */
  clientCert?: Buffer;
  clientKey?: Buffer;
  /** deadline of each call in milliseconds (default 60 000) */
  timeoutMs?: number;
  /** extra attempts on UNAVAILABLE (default 4) */
  retries?: number;
  /** the master seed and retired keys to derive from (client.keys.toJSON() of an earlier
   * client, or the Python key file's master_seed and retired); default: a fresh seed */
  keyState?: KeyState;
  /** allow a plaintext connection to a target not on this machine (refused by default: the
   * server could be anyone on the path) */
  insecure?: boolean;
  protoPath?: string;
}

export interface ServerInfo {
  protocolVersion: string;
  serverVersion: string;
  tensealVersion: string;
}

export interface ModelInfo {
  name: string;
  version: number;
  task: "regression" | "binary" | "multiclass";
  link: Link;
  nFeatures: number;
  nOutputs: number;
  outputNdim: number;
  classes: unknown[] | null;
  featureNames: string[];
  preprocessing: Preprocessing;
  bounds: Bounds;
  plans: Partial<Record<LayoutName, Plan>>;
  tolerance: number;
  dp: Record<string, unknown>;
  fingerprint: string;
  modelPrivacy: boolean;
}

/** A gRPC failure with its status code name (e.g. "UNAUTHENTICATED") and the server's message. */
export class HemlError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly details: string,
  ) {
    super(message);
    this.name = "HemlError";
  }
}

/** A reply no honest server produces (client-side check, code DATA_LOSS): its scores were not
 * returned, the key it was made for is retired and the handle refuses further calls. */
export class ReplyRejected extends HemlError {
  constructor(message: string, details: string) {
    super(message, "DATA_LOSS", details);
    this.name = "ReplyRejected";
  }
}

const LAYOUT_FROM_PB: Record<string, LayoutName | "private"> = { ROW: "row", COLUMN: "column", PRIVATE: "private" };
const LINK_FROM_PB: Record<string, Link> = {
  IDENTITY: "identity",
  LOGISTIC: "logistic",
  SOFTMAX: "softmax",
  OVR_LOGISTIC: "ovr_logistic",
  MODIFIED_HUBER: "modified_huber",
  NO_PROBABILITY: "none",
  EXP: "exp",
};
const TASK_FROM_PB: Record<string, ModelInfo["task"]> = { REGRESSION: "regression", BINARY: "binary", MULTICLASS: "multiclass" };

/** A LayoutPlan message -> Plan, refusing parameters heml does not use. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export function planFromMessage(msg: any): Plan | null {
  const layout = LAYOUT_FROM_PB[msg.layout];
  if (layout === undefined || layout === "private") return null;
  const p = msg.params ?? {};
  if (p.scheme !== "CKKS" || (p.coeff_modulus ?? []).length !== 1 || p.seed_prng !== SEED_PRNG) {
    throw new Error(`server offers unsupported parameters (scheme ${p.scheme}, seed PRNG ${p.seed_prng})`);
  }
  const n = Number(p.poly_modulus_degree);
  const q = BigInt(p.coeff_modulus[0]);
  checkParams(n, q);
  if (!(msg.digits >= 1 && msg.digits <= 8 && msg.digit_bits >= 2 && msg.digit_bits <= 36)) {
    throw new Error("server offers an invalid weight-digit split");
  }
  if (!(msg.reply_bits >= REPLY_BITS_MIN && msg.reply_bits <= REPLY_BITS_MAX)) {
    throw new Error(`server offers an invalid reply width ${msg.reply_bits}`);
  }
  if (!(msg.log2_scale_x >= 1 && msg.log2_scale_x <= 60 && msg.log2_scale_w >= 0 && msg.log2_scale_w <= 62)) {
    throw new Error("server offers invalid scales");
  }
  return {
    layout,
    n,
    q,
    log2ScaleX: msg.log2_scale_x,
    log2ScaleW: msg.log2_scale_w,
    digitBits: msg.digit_bits,
    digits: msg.digits,
    replyBits: msg.reply_bits,
    errorBound: msg.error_bound,
  };
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export function modelInfoFromMessage(msg: any): ModelInfo {
  const plans: Partial<Record<LayoutName, Plan>> = {};
  let modelPrivacy = false;
  for (const lp of msg.layouts ?? []) {
    if (LAYOUT_FROM_PB[lp.layout] === "private") modelPrivacy = true;
    const plan = planFromMessage(lp);
    if (plan) plans[plan.layout] = plan;
  }
  const b = msg.bounds ?? {};
  const nFeatures = Number(msg.n_features);
  return {
    name: msg.name,
    version: Number(msg.version),
    task: TASK_FROM_PB[msg.task] ?? "regression",
    link: LINK_FROM_PB[msg.link] ?? "identity",
    nFeatures,
    nOutputs: Number(msg.n_outputs),
    outputNdim: Number(msg.output_ndim) || 1,
    classes: msg.classes_json ? JSON.parse(msg.classes_json) : null,
    featureNames: msg.feature_names ?? [],
    preprocessing: new Preprocessing(JSON.parse(msg.preprocessing_json || "{}"), nFeatures),
    bounds: new Bounds(b.lower ?? [], b.upper ?? [], b.out_of_bounds || "error", b.encode_lower, b.encode_upper),
    plans,
    tolerance: msg.tolerance,
    dp: msg.dp?.details_json ? JSON.parse(msg.dp.details_json) : {},
    fingerprint: msg.fingerprint,
    modelPrivacy: modelPrivacy || Boolean(msg.privacy?.enabled),
  };
}

/** ServerInfo message -> ServerInfo; refuses a server speaking another major protocol version. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export function checkProtocol(target: string, msg: any): ServerInfo {
  const info = {
    protocolVersion: msg?.protocol_version ?? "",
    serverVersion: msg?.server_version ?? "",
    tensealVersion: msg?.tenseal_version ?? "",
  };
  if ((info.protocolVersion || "0").split(".")[0] !== PROTOCOL_MAJOR) {
    throw new HemlError(
      `${target} speaks heml protocol ${info.protocolVersion || "unknown"}; this client speaks ${PROTOCOL_MAJOR}.x`,
      "FAILED_PRECONDITION",
      "",
    );
  }
  return info;
}

export class Client {
  readonly target: string;
  readonly timeoutMs: number;
  readonly retries: number;
  /** the master seed and retired (server, model) keys (keys.toJSON() to keep them) */
  readonly keys: KeyChain;
  private readonly stub: grpc.Client & Record<string, Function>;
  private readonly metadata: grpc.Metadata;
  server: ServerInfo | null = null;

  constructor(target: string, opts: ClientOptions = {}) {
    target = withDefaultPort(target); // host -> host:50051, as the Python SDK
    this.target = target;
    this.timeoutMs = opts.timeoutMs ?? 60_000;
    this.retries = opts.retries ?? 4;
    if (!(this.timeoutMs > 0)) throw new Error("timeoutMs must be positive");
    this.keys = new KeyChain(opts.keyState);
    const def = protoLoader.loadSync(opts.protoPath ?? defaultProtoPath(), {
      keepCase: true,
      longs: String,
      enums: String,
      defaults: true,
    });
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const pkg = grpc.loadPackageDefinition(def) as any;
    if ((opts.clientCert === undefined) !== (opts.clientKey === undefined)) {
      throw new Error("clientCert and clientKey go together (mTLS)");
    }
    const apiKey = opts.apiKey?.trim();
    let creds: grpc.ChannelCredentials;
    if (opts.rootCertificates || opts.clientCert) {
      creds = grpc.credentials.createSsl(opts.rootCertificates ?? null, opts.clientKey ?? null, opts.clientCert ?? null);
    } else {
      if (!opts.insecure && !isLoopback(target)) {
        throw new Error(
          `refusing a plaintext connection to ${target}: pass rootCertificates (the server's CA) for TLS, ` +
            "or insecure: true to accept that the network can read model metadata and API keys and impersonate the server",
        );
      }
      if (apiKey && !isLoopback(target)) {
        process.emitWarning(`sending an API key to ${target} without TLS: pass rootCertificates (the server's CA)`);
      }
      creds = grpc.credentials.createInsecure();
    }
    this.stub = new pkg.heml.v1.Inference(target, creds, {
      "grpc.max_send_message_length": MAX_MESSAGE_BYTES + MiB,
      "grpc.max_receive_message_length": 64 * MiB,
      "grpc.use_local_subchannel_pool": 1,
      "grpc.enable_retries": 0, // retries are ours: deadline-aware, UNAVAILABLE only
    });
    this.metadata = new grpc.Metadata();
    if (apiKey) this.metadata.set("authorization", `Bearer ${apiKey}`);
  }

  close(): void {
    this.stub.close();
  }

  /** One unary call with a deadline, retried with backoff on UNAVAILABLE. */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  async call(method: string, request: object): Promise<any> {
    const deadline = Date.now() + this.timeoutMs;
    let delay = 100;
    for (let attempt = 0; ; attempt++) {
      try {
        return await new Promise((resolve, reject) => {
          this.stub[method](request, this.metadata, { deadline }, (err: grpc.ServiceError | null, reply: unknown) =>
            err ? reject(err) : resolve(reply),
          );
        });
      } catch (e) {
        const err = e as grpc.ServiceError;
        const code = grpc.status[err.code] ?? "UNKNOWN";
        if (err.code !== grpc.status.UNAVAILABLE || attempt >= this.retries || Date.now() + delay >= deadline) {
          throw new HemlError(`${this.target}: ${err.details || err.message} (${code})`, String(code), err.details ?? "");
        }
      }
      await new Promise((r) => setTimeout(r, delay * (1 + Math.random())));
      delay = Math.min(delay * 2, 2000);
    }
  }

  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  private checkServer(msg: any): ServerInfo {
    this.server = checkProtocol(this.target, msg);
    return this.server;
  }

  /** Metadata of every served model (latest versions). */
  async models(): Promise<ModelInfo[]> {
    const reply = await this.call("ListModels", {});
    this.checkServer(reply.server);
    return reply.models.map(modelInfoFromMessage);
  }

  /** A handle to one served model (fetches its metadata). */
  async model(name: string, version = 0): Promise<RemoteModel> {
    const reply = await this.call("GetModel", { name, version });
    this.checkServer(reply.server);
    return new RemoteModel(this, modelInfoFromMessage(reply));
  }
}

interface Block {
  start: number;
  stop: number;
  layout: LayoutName;
  s: number;
}

/** A served model, scored under encryption. */
export class RemoteModel {
  /** the key epoch of (server, model) when this handle was made */
  private readonly epoch: number;
  private readonly keys = new Map<string, SecretKey>();
  private rejected = "";

  constructor(
    readonly client: Client,
    readonly info: ModelInfo,
    /** tests only: turn off the reply checks (see DecodeOptions) */
    private readonly decodeOptions: DecodeOptions = {},
  ) {
    if (info.modelPrivacy) {
      throw new HemlError(`model ${info.name} is served in model-privacy mode, which this client does not speak yet`, "FAILED_PRECONDITION", "");
    }
    this.epoch = client.keys.epoch(client.target, info.name);
  }

  /** This handle's secret key for a plan's parameters, derived on first use. */
  keyFor(plan: Plan): SecretKey {
    const id = `${plan.n}:${plan.q}`;
    let key = this.keys.get(id);
    if (!key) {
      key = this.client.keys.derive(this.client.target, this.info.name, this.epoch, plan.n, plan.q);
      this.keys.set(id, key);
    }
    return key;
  }

  /** Refuse to score with a key that was retired (by this handle or another one). */
  private checkKey(): void {
    if (!this.rejected && this.client.keys.epoch(this.client.target, this.info.name) !== this.epoch) {
      this.rejected = "another handle of this model rejected a reply";
    }
    if (this.rejected) {
      throw new ReplyRejected(
        `${this.client.target}: model ${this.info.name} sent a reply that failed the client's checks ` +
          `(${this.rejected}); its key is retired: get a new handle with client.model()`,
        this.rejected,
      );
    }
  }

  /**
   * Decode one block's replies. Whether a reply was accepted is itself a bit a malicious
   * server can learn from (a reaction attack), so after one rejection the key is retired and
   * this handle refuses further calls: at most one such bit per key.
   */
  private decode(key: SecretKey, replies: Uint8Array[], plan: Plan, n: number, s: number): number[][] {
    const { nFeatures: d, nOutputs: k } = this.info;
    try {
      return decodeBlock(key, replies, plan, n, d, k, s, this.decodeOptions);
    } catch (e) {
      if (!(e instanceof InvalidReply)) throw e;
      this.rejected = e.message;
      this.client.keys.retire(this.client.target, this.info.name);
      throw new ReplyRejected(
        `${this.client.target}: model ${this.info.name}: ${e.message}; this key is retired ` +
          "(a new client.model() handle derives a fresh one)",
        e.message,
      );
    }
  }

  /** Raw rows (values in the model's input order) -> normalized features z in [-1, 1]. */
  normalize(rows: Raw[][]): number[][] {
    const { preprocessing, bounds } = this.info;
    const X = preprocessing.clipRows(bounds.apply(preprocessing.transform(rows), preprocessing.featureNames));
    return bounds.normalize(X);
  }

  /** Blocks for n samples: COLUMN for large batches when offered, else ROW groups. */
  blocks(n: number, layout?: LayoutName): Block[] {
    const { plans, nFeatures: d } = this.info;
    const column = plans.column;
    const useColumn =
      column && (layout === "column" || (layout === undefined && (!plans.row || n >= column.n / 4))) &&
      d * (7 * column.n + 40) < MAX_MESSAGE_BYTES;
    if (useColumn) {
      const out: Block[] = [];
      for (let i = 0; i < n; i += column.n) out.push({ start: i, stop: Math.min(n, i + column.n), layout: "column", s: 0 });
      return out;
    }
    const row = plans.row;
    if (!row) throw new Error(`model ${this.info.name} offers no layout this client can use`);
    const s = Math.min(n, maxSamplesPerCiphertext(row, d));
    const geo = new RowGeometry(row.n, d, this.info.nOutputs, row.digits, s);
    const ctBytes = geo.chunks * (7 * row.n + 40);
    if (ctBytes > MAX_MESSAGE_BYTES) throw new Error("this model's ROW block exceeds one message (d too large for unary Predict)");
    const groups = Math.max(1, Math.min(MAX_ROW_GROUPS, Math.floor(MAX_MESSAGE_BYTES / ctBytes)));
    const out: Block[] = [];
    for (let i = 0; i < n; i += s * groups) out.push({ start: i, stop: Math.min(n, i + s * groups), layout: "row", s });
    return out;
  }

  /**
   * W·x + b under encryption: n × k scores (the server never sees x or the result). Each score
   * carries fresh noise within the plan's published error bound (src/protect.ts: it hides the
   * part of the decryption error that depends on the secret key). A reply that fails the
   * checks throws ReplyRejected, and so does every later call on this handle.
   */
  async scores(rows: Raw[][], layout?: LayoutName): Promise<number[][]> {
    this.checkKey();
    const z = this.normalize(rows);
    if (z.length === 0) return [];
    const { nFeatures: d, nOutputs: k } = this.info;
    const out: number[][] = new Array(z.length);
    for (const block of this.blocks(z.length, layout)) {
      const plan = this.info.plans[block.layout]!;
      this.checkKey(); // a concurrent call on this handle may have rejected a reply meanwhile
      const key = this.keyFor(plan);
      const part = z.slice(block.start, block.stop);
      const cts = encryptBlock(key, part, plan, d, k, block.s);
      const reply = await this.client.call("Predict", {
        model: this.info.name,
        version: this.info.version,
        layout: block.layout.toUpperCase(),
        n: part.length,
        samples_per_ciphertext: block.s,
        ciphertexts: cts,
        total_ciphertexts: cts.length,
      });
      const scores = this.decode(key, reply.replies, plan, part.length, block.s);
      scores.forEach((row, i) => (out[block.start + i] = row));
    }
    return out;
  }

  /** Class probabilities (classifiers): n × classes. */
  async predictProba(rows: Raw[][], layout?: LayoutName): Promise<number[][]> {
    if (this.info.task === "regression") throw new Error("predictProba is for classifiers");
    return probabilities(this.info.link, await this.scores(rows, layout));
  }

  /** Predicted labels (classifiers) or values (regression; n × k when output_ndim is 2). */
  async predict(rows: Raw[][], layout?: LayoutName): Promise<unknown[]> {
    const scores = await this.scores(rows, layout);
    if (this.info.task === "regression") {
      const y = regressionOutput(this.info.link, scores);
      return this.info.outputNdim === 1 ? y.map((r) => r[0]) : y;
    }
    const classes = this.info.classes ?? [];
    return classIndices(scores).map((i) => classes[i]);
  }
}
