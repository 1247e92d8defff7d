// The prefix cache on disk, so a restart does not cost Claude Code a full
// prefill of its ~20K-token system prompt and tools. After a short quiet
// spell and at shutdown the most used radix nodes are written to the data
// folder under a disk budget; after a restart a prompt whose prefix is on
// disk loads it instead of prefilling it.
//
// A node is written in pieces of about `pieceBytes` of KV (64 MiB: ~170
// tokens of Phi-3's fp16 KV), one file each, so that each write is short
// (the engine takes new work between pieces) and a shutdown or kill keeps
// every piece already written. Pieces are cut at multiples of a fixed token
// count from the root, so the same tokens give the same files whatever the
// radix nodes' boundaries. Files form chains: each names its parent (the
// piece before it), and a chain is used from the root as far as its files
// are whole. Layout: <dir>/<model key>/<path hash>.safetensors (formats and
// checks in prefix-store-format.ts); a file that does not match its header,
// its size, its layout or its chain is removed, never trusted.
import { mkdirSync, readdirSync, renameSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import type { MxArray } from "../mlx";
import * as mx from "../mlx";
import type { KVState } from "./kv-cache";
import { LoadOrPrefill } from "./load-or-prefill";
import { FORMAT, nodeHash, readHeader, readTokens, SUFFIX, TEMP } from "./prefix-store-format";
import { fitBudget, type PendingWrite, pieceCandidates } from "./prefix-store-plan";
import type { PrefixStoreStats } from "./protocol";
import type { RadixEntry } from "./radix-cache";

export { fileIdentity, modelKey } from "./prefix-store-format";
export { type PendingWrite, pieceTokens } from "./prefix-store-plan";

/** KV bytes a piece holds at most (one write, one file). */
export const PIECE_BYTES = 64 * 1024 * 1024;

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

export class PrefixStore {
  readonly dir: string;
  readonly budgetBytes: number;
  /** The KV layout every file must have (also part of the model key). */
  readonly layout: string;
  /** KV bytes a piece holds at most. */
  readonly pieceBytes: number;
  readonly #numLayers: number;
  #nodes = new Map<string, DiskNode>();
  /** Nodes by parent hash, for match(); rebuilt after any change. */
  #children: Map<string, DiskNode[]> | null = null;
  #written = 0;
  #loaded = 0;
  #loadedTokens = 0;
  #removed = 0;
  #pendingBytes = 0;
  #skippedWrites = 0;

  /** Whether reading a prefix back beats prefilling it again (load-or-prefill.ts). */
  readonly choice: LoadOrPrefill;

  constructor(
    root: string,
    key: string,
    budgetBytes: number,
    layout: string,
    numLayers: number,
    device: "cpu" | "gpu" = "cpu",
    pieceBytes = PIECE_BYTES,
  ) {
    this.pieceBytes = pieceBytes;
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
    this.#children = null;
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
    const children = this.#childIndex();
    for (;;) {
      let best: DiskNode | null = null;
      let bestLength = 0;
      for (const n of children.get(parent) ?? []) {
        if (n.regime !== regime) continue;
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

  #childIndex(): Map<string, DiskNode[]> {
    if (this.#children) return this.#children;
    const index = new Map<string, DiskNode[]>();
    for (const n of this.#nodes.values()) {
      const list = index.get(n.parent);
      if (list) list.push(n);
      else index.set(n.parent, [n]);
    }
    this.#children = index;
    return index;
  }

  /**
   * The chain's KV, one state per file (a radix node each: no copy to join
   * them here, admission joins what a row uses); null if a file fails, whose
   * chain is then removed.
   */
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
    this.#children = null;
    this.#remove(n.file);
  }

  /**
   * Which pieces the disk should hold: those of cached nodes, most used
   * first, then files already on disk, each only with its whole chain and
   * within the budget. Files left out are removed. Returns the pieces to
   * write, each after its parent.
   */
  plan(
    entries: readonly RadixEntry<KVState>[],
    bytesOf: (state: KVState) => number,
    blockTokens: number,
  ): PendingWrite[] {
    // Where reading back would not be chosen (a fast GPU prefills quicker), writing is work that blocks the engine.
    const sample = entries.find((e) => e.tokens.length > 0);
    if (sample && !this.choice.wouldLoad(bytesOf(sample.payload), sample.tokens.length)) {
      this.#skippedWrites++;
      this.#pendingBytes = 0;
      return [];
    }
    const pieces = pieceCandidates(entries, bytesOf, blockTokens, this.pieceBytes, (h) => this.#nodes.get(h)?.bytes);
    const cached = new Set(pieces.map((c) => c.hash));
    const diskOnly = [...this.#nodes.values()]
      .filter((n) => !cached.has(n.hash))
      .sort((a, b) => a.start - b.start)
      .map((n) => ({ hash: n.hash, parent: n.parent, size: n.bytes, write: null }));
    const { keep, writes, pendingBytes } = fitBudget([...pieces, ...diskOnly], this.budgetBytes);
    for (const n of [...this.#nodes.values()]) if (!keep.has(n.hash)) this.#forget(n);
    this.#pendingBytes = pendingBytes;
    return writes;
  }

  /** Writes one piece (atomically: a temporary file, then a rename; a kill leaves no trusted file). */
  write(w: PendingWrite): void {
    const file = join(this.dir, `${w.hash}${SUFFIX}`);
    const temp = join(this.dir, `${w.hash}${TEMP}${SUFFIX}`);
    try {
      mx.tidy(() => {
        const tensors = new Map<string, MxArray>();
        tensors.set("tokens", mx.fromData(Int32Array.from(w.tokens), [w.tokens.length], mx.Dtype.int32));
        const whole = w.offset === 0 && w.tokens.length === w.state.length;
        w.state.parts.forEach((layer, l) => {
          layer.forEach((a, p) => {
            const part = whole ? a : mx.contiguous(mx.sliceAxis(a, 2, w.offset, w.offset + w.tokens.length));
            tensors.set(`l${l}.p${p}`, part);
          });
        });
        mx.saveSafetensors(temp, tensors, {
          format: FORMAT,
          layout: this.layout,
          parent: w.parent,
          regime: String(w.regime),
        });
      });
      renameSync(temp, file);
    } finally {
      rmSync(temp, { force: true });
    }
    const bytes = statSync(file).size;
    this.#nodes.set(w.hash, {
      hash: w.hash,
      parent: w.parent,
      regime: w.regime,
      tokens: [...w.tokens],
      start: w.start,
      bytes,
      file,
    });
    this.#children = null;
    this.#written++;
    this.#pendingBytes = Math.max(0, this.#pendingBytes - w.size);
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
      pendingBytes: this.#pendingBytes,
      skippedWrites: this.#skippedWrites,
      ...this.choice.rates,
    };
  }
}
