// The prefix cache's files on disk (src/engine/prefix-store.ts): names,
// hashes and the checks a file must pass before it is trusted. A file is a
// safetensors file holding a piece of a radix node: its tokens (int32
// "tokens"), their KV parts ("l<layer>.p<part>", token axis 2) and, as
// metadata, the format, the KV layout, the RoPE regime and its parent's hash.
// Plain data and node:fs, no MLX.
import { createHash, type Hash } from "node:crypto";
import { closeSync, existsSync, openSync, readdirSync, readSync, statSync } from "node:fs";
import { join } from "node:path";

/** Bumped when files change meaning; files of another format are removed. 2: nodes written in pieces. */
export const FORMAT = "pensieve-prefix-2";
export const SUFFIX = ".safetensors";
export const TEMP = ".tmp";

/** What identifies the model and its KV layout; any change gives another folder. */
export function modelKey(parts: Record<string, string | number>): string {
  const text = Object.keys(parts)
    .sort()
    .map((k) => `${k}=${parts[k]}`)
    .join("\n");
  return createHash("sha256").update(text).digest("hex").slice(0, 24);
}

/** A file's identity for the model key: path, size and modification time. */
export function fileIdentity(path: string): string {
  if (!existsSync(path)) return `${path}:missing`;
  const s = statSync(path);
  if (!s.isDirectory()) return `${path}:${s.size}:${s.mtimeMs}`;
  return readdirSync(path)
    .filter((f) => f.endsWith(".safetensors") || f.endsWith(".json") || f.endsWith(".gguf"))
    .sort()
    .map((f) => fileIdentity(join(path, f)))
    .join(";");
}

/**
 * The hash of a path from the root (its RoPE regime and every token), fed a
 * segment at a time: a node's pieces are hashed in one pass over its tokens.
 */
export class PathHash {
  readonly #hash: Hash;

  constructor(regime: number) {
    this.#hash = createHash("sha256");
    this.#hash.update(`${regime}:`);
  }

  add(tokens: readonly number[]): this {
    if (tokens.length > 0) this.#hash.update(new Uint8Array(Int32Array.from(tokens).buffer));
    return this;
  }

  /** The hash of the path so far (the running hash goes on). */
  digest(): string {
    return this.#hash.copy().digest("hex").slice(0, 32);
  }
}

export function nodeHash(regime: number, path: readonly number[]): string {
  return new PathHash(regime).add(path).digest();
}

export interface Header {
  tensors: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  metadata: Record<string, string>;
  dataStart: number;
}

/** Reads a safetensors header and checks the file holds exactly the data it names. */
export function readHeader(file: string): Header {
  const fd = openSync(file, "r");
  try {
    const size = statSync(file).size;
    const lenBuf = Buffer.alloc(8);
    if (readSync(fd, lenBuf, 0, 8, 0) !== 8) throw new Error("truncated");
    const len = Number(lenBuf.readBigUInt64LE(0));
    if (len <= 0 || len > 64 * 1024 * 1024 || 8 + len > size) throw new Error("bad header length");
    const json = Buffer.alloc(len);
    if (readSync(fd, json, 0, len, 8) !== len) throw new Error("truncated header");
    const raw = JSON.parse(json.toString("utf8")) as Record<string, unknown>;
    const metadata = (raw.__metadata__ ?? {}) as Record<string, string>;
    delete raw.__metadata__;
    const tensors = raw as Header["tensors"];
    let end = 0;
    for (const t of Object.values(tensors)) end = Math.max(end, t.data_offsets[1]);
    if (8 + len + end !== size) throw new Error("size does not match the header");
    return { tensors, metadata, dataStart: 8 + len };
  } finally {
    closeSync(fd);
  }
}

export function readTokens(file: string, header: Header): number[] {
  const t = header.tensors.tokens;
  if (t?.dtype !== "I32" || t.shape.length !== 1) throw new Error("no tokens");
  const [a, b] = t.data_offsets;
  const buf = Buffer.alloc(b - a);
  const fd = openSync(file, "r");
  try {
    readSync(fd, buf, 0, b - a, header.dataStart + a);
  } finally {
    closeSync(fd);
  }
  return Array.from(new Int32Array(buf.buffer, buf.byteOffset, (b - a) / 4));
}
