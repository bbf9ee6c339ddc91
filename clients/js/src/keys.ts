/**
 * Per-(server, model) secret keys derived from one 32-byte master seed, as the Python SDK's
 * heml.he.keys (KeySet.for_peer): a server that learns the key it is scored with learns
 * nothing about the keys used with other servers or models, and a key retired after a
 * rejected reply is never derived again (the epoch in its label moves on).
 *
 *   label = JSON [server.trim().toLowerCase(), model, epoch]   (Python's json.dumps: ", "
 *           separators, non-ASCII escaped as \uXXXX)
 *   info  = label | "|" | JSON [N, [q]]
 *   key32 = HKDF-SHA256(ikm = master seed, salt = "heml/v1 secret key derivation", info)
 *   s     = SHAKE-256(key32) bytes below 255, first N of them, each b mod 3 − 1 (uniform ternary)
 */
import { createHash, hkdfSync, randomBytes } from "node:crypto";

import { SecretKey } from "./crypto.js";

export const MASTER_SEED_BYTES = 32;
const HKDF_SALT = Buffer.from("heml/v1 secret key derivation");
const HKDF_INFO_MAX = 1024; // Node's hkdfSync limit

/** JSON as Python's json.dumps writes it (", " between items, ensure_ascii). */
function pyJson(items: (string | number | bigint | (number | bigint)[])[]): string {
  const one = (v: string | number | bigint | (number | bigint)[]): string => {
    if (Array.isArray(v)) return `[${v.map(one).join(", ")}]`;
    if (typeof v === "string") {
      return JSON.stringify(v).replace(/[^\x20-\x7e]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
    }
    return v.toString();
  };
  return `[${items.map(one).join(", ")}]`;
}

/** What a derived key is bound to: the server as the client addresses it, the model, the epoch. */
export function peerLabel(server: string, model: string, epoch = 0): Buffer {
  return Buffer.from(pyJson([server.trim().toLowerCase(), model, epoch]));
}

/** The uniform ternary s for (seed, label, N, q). */
export function deriveTernary(seed: Uint8Array, label: Uint8Array, n: number, q: bigint): Int8Array {
  if (seed.length !== MASTER_SEED_BYTES) throw new Error(`a master seed is ${MASTER_SEED_BYTES} bytes`);
  const info = Buffer.concat([label, Buffer.from("|"), Buffer.from(pyJson([n, [q]]))]);
  if (info.length > HKDF_INFO_MAX) throw new Error("server address and model name are too long to derive a key for");
  const key = Buffer.from(hkdfSync("sha256", seed, HKDF_SALT, info, 32));
  for (let need = n + Math.floor(n / 8) + 64; ; need *= 2) {
    const stream = createHash("shake256", { outputLength: need }).update(key).digest();
    const s = new Int8Array(n);
    let filled = 0;
    for (const b of stream) {
      if (b === 255) continue;
      s[filled++] = (b % 3) - 1;
      if (filled === n) return s;
    }
  }
}

/** The secret key derived for (seed, label) at parameters (N, q). */
export function deriveKey(seed: Uint8Array, label: Uint8Array, n: number, q: bigint): SecretKey {
  return new SecretKey(n, q, deriveTernary(seed, label, n, q));
}

/** sha256(label at epoch 0), first 32 hex digits: the key of the retired-epochs map. */
export function labelId(server: string, model: string): string {
  return createHash("sha256").update(peerLabel(server, model)).digest("hex").slice(0, 32);
}

/** What to keep to derive the same keys in a later process (keep it private, as a key). */
export interface KeyState {
  /** base64 of the 32-byte master seed (the Python key file's "master_seed") */
  master_seed: string;
  /** labelId -> number of retired keys (the Python key file's "retired") */
  retired: Record<string, number>;
}

/** A master seed and the retired (server, model) keys; derives the current key of each pair. */
export class KeyChain {
  private readonly seed: Buffer;
  private readonly retired: Map<string, number>;

  constructor(state?: KeyState) {
    this.seed = state ? Buffer.from(state.master_seed, "base64") : randomBytes(MASTER_SEED_BYTES);
    if (this.seed.length !== MASTER_SEED_BYTES) throw new Error(`the master seed must be ${MASTER_SEED_BYTES} bytes`);
    if (state && this.seed.toString("base64") !== state.master_seed) throw new Error("the master seed is not canonical base64");
    this.retired = new Map();
    for (const [id, count] of Object.entries(state?.retired ?? {})) {
      if (!(Number.isSafeInteger(count) && count >= 0)) throw new Error(`retired count for ${id} is not a count`);
      this.retired.set(id, count);
    }
  }

  /** The current epoch of (server, model): how many of its keys were retired. */
  epoch(server: string, model: string): number {
    return this.retired.get(labelId(server, model)) ?? 0;
  }

  /** Never derive the current key of (server, model) again. */
  retire(server: string, model: string): void {
    const id = labelId(server, model);
    this.retired.set(id, (this.retired.get(id) ?? 0) + 1);
  }

  /** The key for (server, model) at `epoch`, parameters (N, q). */
  derive(server: string, model: string, epoch: number, n: number, q: bigint): SecretKey {
    return deriveKey(this.seed, peerLabel(server, model, epoch), n, q);
  }

  toJSON(): KeyState {
    return { master_seed: this.seed.toString("base64"), retired: Object.fromEntries(this.retired) };
  }
}
