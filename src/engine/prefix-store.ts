// The prefix cache on disk, so a restart does not cost Claude Code a full
// prefill of its ~20K-token system prompt and tools. In quiet moments and at
// shutdown the most used radix nodes are written to the data folder, one
// safetensors file each, under a disk budget; after a restart a prompt whose
// prefix is on disk loads it (lazily: MLX reads the file as it copies) instead
// of prefilling it.
//
// Layout: <dir>/<model key>/<node hash>.safetensors, where the model key
// hashes the model's files, the tokenizer and the KV layout, and a node's
// hash is that of its RoPE regime and every token from the root to its end.
// Each file holds the node's tokens (int32 "tokens"), its KV parts
// ("l<layer>.p<part>", token axis 2) and, as metadata, its parent's hash. A
// file that does not match its header, its size, its layout or its chain is
// removed, never trusted.
import { createHash } from "node:crypto";
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
} from "node:fs";
import { join } from "node:path";
import type { MxArray } from "../mlx";
import * as mx from "../mlx";
import type { KVState } from "./kv-cache";
import { LoadOrPrefill } from "./load-or-prefill";
import type { PrefixStoreStats } from "./protocol";
import type { RadixEntry } from "./radix-cache";

const FORMAT = "pensieve-prefix-1";
const SUFFIX = ".safetensors";
const TEMP = ".tmp";

export interface DiskNode {
  hash: string;
  parent: string;
  regime: number;
  tokens: number[];
  /** Tokens from the root to this node's start. */
  start: number;
  bytes: number;
  file: string;
}

export interface DiskMatch {
  /** Tokens covered. */
  length: number;
  /** Root-to-deepest chain of files covering them. */
  chain: DiskNode[];
}

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

function nodeHash(regime: number, path: readonly number[]): string {
  const h = createHash("sha256");
  h.update(`${regime}:`);
  h.update(new Uint8Array(Int32Array.from(path).buffer));
  return h.digest("hex").slice(0, 32);
}

interface Header {
  tensors: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  metadata: Record<string, string>;
  dataStart: number;
}

/** Reads a safetensors header and checks the file holds exactly the data it names. */
function readHeader(file: string): Header {
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

function readTokens(file: string, header: Header): number[] {
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

export class PrefixStore {
  readonly dir: string;
  readonly budgetBytes: number;
  /** The KV layout every file must have (also part of the model key). */
  readonly layout: string;
  readonly #numLayers: number;
  #nodes = new Map<string, DiskNode>();
  #written = 0;
  #loaded = 0;
  #loadedTokens = 0;
  #removed = 0;

  /** Whether reading a prefix back beats prefilling it again (load-or-prefill.ts). */
  readonly choice: LoadOrPrefill;

  constructor(
    root: string,
    key: string,
    budgetBytes: number,
    layout: string,
    numLayers: number,
    device: "cpu" | "gpu" = "cpu",
  ) {
    this.choice = new LoadOrPrefill(device);
    this.dir = join(root, key);
    this.budgetBytes = budgetBytes;
    this.layout = layout;
    this.#numLayers = numLayers;
    mkdirSync(this.dir, { recursive: true });
    this.scan();
  }

  /** Reads every file's header; removes what is unreadable, of another layout, or cut off from its chain. */
  scan(): void {
    const found = new Map<string, DiskNode & { path?: number[] }>();
    for (const name of readdirSync(this.dir)) {
      const file = join(this.dir, name);
      if (!name.endsWith(SUFFIX) || name.includes(TEMP)) {
        this.#remove(file);
        continue;
      }
      try {
        const header = readHeader(file);
        const m = header.metadata;
        if (m.format !== FORMAT || m.layout !== this.layout) throw new Error("other format");
        const tokens = readTokens(file, header);
        const hash = name.slice(0, -SUFFIX.length);
        const parts = Object.keys(header.tensors).filter((k) => k !== "tokens");
        if (tokens.length === 0 || parts.length % this.#numLayers !== 0) throw new Error("bad parts");
        for (const k of parts) if (header.tensors[k]?.shape[2] !== tokens.length) throw new Error("bad part shape");
        found.set(hash, {
          hash,
          parent: m.parent ?? "",
          regime: Number(m.regime),
          tokens,
          start: 0,
          bytes: statSync(file).size,
          file,
        });
      } catch {
        this.#remove(file);
      }
    }
    // Resolve chains: a node is kept only when its parents are, and its hash matches its path.
    const paths = new Map<string, number[] | null>();
    const resolve = (hash: string, depth: number): number[] | null => {
      if (paths.has(hash)) return paths.get(hash) ?? null;
      const n = found.get(hash);
      if (!n || depth > 10_000) return null;
      const prefix = n.parent === "root" ? [] : resolve(n.parent, depth + 1);
      const path = prefix === null ? null : prefix.concat(n.tokens);
      const ok = path !== null && nodeHash(n.regime, path) === hash;
      paths.set(hash, ok ? path : null);
      if (ok && prefix) n.start = prefix.length;
      return ok ? path : null;
    };
    this.#nodes = new Map();
    for (const [hash, n] of found) {
      if (resolve(hash, 0)) this.#nodes.set(hash, n);
      else this.#remove(n.file);
    }
  }

  #remove(file: string): void {
    try {
      rmSync(file, { force: true });
      this.#removed++;
    } catch {
      // gone already
    }
  }

  get bytes(): number {
    let n = 0;
    for (const d of this.#nodes.values()) n += d.bytes;
    return n;
  }

  /**
   * The longest prefix of `prompt[0, limit)` on disk, in whole blocks: a
   * root-to-node chain of files, the last one perhaps used in part.
   */
  match(prompt: readonly number[], regime: number, limit: number, blockTokens: number): DiskMatch {
    const chain: DiskNode[] = [];
    let parent = "root";
    let at = 0;
    for (;;) {
      let best: DiskNode | null = null;
      let bestLength = 0;
      for (const n of this.#nodes.values()) {
        if (n.parent !== parent || n.regime !== regime) continue;
        const max = Math.min(n.tokens.length, limit - at);
        let i = 0;
        while (i < max && n.tokens[i] === prompt[at + i]) i++;
        if (i > bestLength) {
          best = n;
          bestLength = i;
        }
      }
      if (!best) break;
      if (bestLength < best.tokens.length) {
        const part = bestLength - (bestLength % blockTokens);
        if (part > 0) {
          chain.push(best);
          at += part;
        }
        break;
      }
      chain.push(best);
      at += bestLength;
      parent = best.hash;
    }
    return { length: at, chain };
  }

  /** The chain's KV, one state per file (lazy arrays: read as they are used); null if a file fails. */
  load(chain: readonly DiskNode[]): KVState[] | null {
    const started = performance.now();
    const states: KVState[] = [];
    try {
      for (const n of chain) {
        const loaded = mx.loadSafetensors(n.file);
        const arrays = loaded.arrays;
        const perLayer = (arrays.size - 1) / this.#numLayers;
        const parts: MxArray[][] = [];
        for (let l = 0; l < this.#numLayers; l++) {
          const layer: MxArray[] = [];
          for (let p = 0; p < perLayer; p++) {
            const a = arrays.get(`l${l}.p${p}`);
            if (!a || a.dim(2) !== n.tokens.length) throw new Error(`${n.file}: bad part l${l}.p${p}`);
            layer.push(a);
          }
          parts.push(layer);
        }
        arrays.get("tokens")?.dispose();
        states.push({ parts, length: n.tokens.length });
      }
      // Read now: a bad file fails here, not inside a forward pass.
      mx.evaluate(...states.flatMap((s) => s.parts.flat()));
    } catch {
      for (const s of states) for (const layer of s.parts) for (const a of layer) a.dispose();
      for (const n of chain) this.#forget(n);
      return null;
    }
    this.#loaded += chain.length;
    this.#loadedTokens += chain.reduce((t, n) => t + n.tokens.length, 0);
    this.choice.recordLoad(
      chain.reduce((b, n) => b + n.bytes, 0),
      performance.now() - started,
    );
    return states;
  }

  #forget(n: DiskNode): void {
    this.#nodes.delete(n.hash);
    this.#remove(n.file);
  }

  /**
   * Which nodes the disk should hold: cached ones, most used first, then
   * files already on disk, each only with its whole chain and within the
   * budget. Files left out are removed. Returns the cached nodes to write.
   */
  plan(entries: readonly RadixEntry<KVState>[], bytesOf: (state: KVState) => number): PendingWrite[] {
    // Where reading back would not be chosen (a fast GPU prefills quicker), writing is work that blocks the engine.
    const sample = entries.find((e) => e.tokens.length > 0);
    if (sample && !this.choice.wouldLoad(bytesOf(sample.payload), sample.tokens.length)) return [];
    const keep = new Set<string>();
    const out: PendingWrite[] = [];
    let total = 0;
    type Candidate = { hash: string; parent: string; size: number; write: PendingWrite | null };
    const candidates: Candidate[] = entries.map((e) => {
      const hash = nodeHash(e.regime, e.prefix.concat(e.tokens));
      const parent = e.prefix.length === 0 ? "root" : nodeHash(e.regime, e.prefix);
      const onDisk = this.#nodes.get(hash);
      return {
        hash,
        parent,
        size: onDisk?.bytes ?? bytesOf(e.payload) + 4 * e.tokens.length + 4096,
        write: onDisk
          ? null
          : { hash, parent, regime: e.regime, tokens: e.tokens, start: e.prefix.length, state: e.payload },
      };
    });
    const cached = new Set(candidates.map((c) => c.hash));
    const diskOnly = [...this.#nodes.values()]
      .filter((n) => !cached.has(n.hash))
      .sort((a, b) => a.start - b.start)
      .map((n) => ({ hash: n.hash, parent: n.parent, size: n.bytes, write: null }));
    // A child can come before its parent in use order: take what fits, again, until nothing changes.
    let left = [...candidates, ...diskOnly];
    for (let progress = true; progress; ) {
      progress = false;
      const rest: Candidate[] = [];
      for (const c of left) {
        if (c.parent !== "root" && !keep.has(c.parent)) {
          rest.push(c);
          continue;
        }
        if (total + c.size > this.budgetBytes) continue;
        total += c.size;
        keep.add(c.hash);
        if (c.write) out.push(c.write);
        progress = true;
      }
      left = rest;
    }
    for (const n of [...this.#nodes.values()]) if (!keep.has(n.hash)) this.#forget(n);
    return out;
  }

  /** Writes one node (atomically: a temporary file, then a rename). */
  write(w: PendingWrite): void {
    const tensors = new Map<string, MxArray>();
    const tokens = mx.fromData(Int32Array.from(w.tokens), [w.tokens.length], mx.Dtype.int32);
    tensors.set("tokens", tokens);
    w.state.parts.forEach((layer, l) => {
      layer.forEach((a, p) => {
        tensors.set(`l${l}.p${p}`, a);
      });
    });
    const file = join(this.dir, `${w.hash}${SUFFIX}`);
    const temp = join(this.dir, `${w.hash}${TEMP}${SUFFIX}`);
    try {
      mx.saveSafetensors(temp, tensors, {
        format: FORMAT,
        layout: this.layout,
        parent: w.parent,
        regime: String(w.regime),
      });
      renameSync(temp, file);
    } finally {
      tokens.dispose();
      rmSync(temp, { force: true });
    }
    this.#nodes.set(w.hash, {
      hash: w.hash,
      parent: w.parent,
      regime: w.regime,
      tokens: [...w.tokens],
      start: w.start,
      bytes: statSync(file).size,
      file,
    });
    this.#written++;
  }

  stats(): PrefixStoreStats {
    return {
      files: this.#nodes.size,
      bytes: this.bytes,
      budgetBytes: this.budgetBytes,
      written: this.#written,
      loaded: this.#loaded,
      loadedTokens: this.#loadedTokens,
      removed: this.#removed,
      skippedLoads: this.choice.skipped,
      ...this.choice.rates,
    };
  }
}

export interface PendingWrite {
  hash: string;
  parent: string;
  regime: number;
  tokens: number[];
  start: number;
  state: KVState;
}
