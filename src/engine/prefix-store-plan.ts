// Which pieces of the prefix cache go to disk (src/engine/prefix-store.ts):
// each cached radix node cut into pieces at fixed token counts from the root
// (so the same tokens always give the same files, whatever the nodes'
// boundaries), then as many as the disk budget holds, each only with the
// chain of pieces before it. Plain data, no MLX.
import type { KVState } from "./kv-cache";
import { PathHash } from "./prefix-store-format";
import type { RadixEntry } from "./radix-cache";

export interface PendingWrite {
  hash: string;
  parent: string;
  regime: number;
  /** The piece's tokens. */
  tokens: number[];
  /** Tokens from the root to the piece's start. */
  start: number;
  /** The node's KV, of which the piece holds [offset, offset + tokens.length). */
  state: KVState;
  offset: number;
  /** Expected file size (budget and pending bytes count it). */
  size: number;
}

/** A piece the disk could hold: on disk already (write null) or to write. */
export interface Candidate {
  hash: string;
  parent: string;
  size: number;
  write: PendingWrite | null;
}

/** Tokens a piece holds: whole blocks, about `pieceBytes` of KV. */
export function pieceTokens(bytesPerToken: number, blockTokens: number, pieceBytes: number): number {
  const blocks = Math.floor(pieceBytes / Math.max(1, bytesPerToken) / blockTokens);
  return Math.max(1, blocks) * blockTokens;
}

/** Every cached node's pieces in the entries' order, root to end within a node; `onDisk`: a file's size. */
export function pieceCandidates(
  entries: readonly RadixEntry<KVState>[],
  bytesOf: (state: KVState) => number,
  blockTokens: number,
  pieceBytes: number,
  onDisk: (hash: string) => number | undefined,
): Candidate[] {
  const out: Candidate[] = [];
  for (const e of entries) {
    if (e.tokens.length === 0) continue;
    const perToken = bytesOf(e.payload) / e.tokens.length;
    const tensors = e.payload.parts.reduce((n, layer) => n + layer.length, 0);
    const piece = pieceTokens(perToken, blockTokens, pieceBytes);
    const path = new PathHash(e.regime).add(e.prefix);
    const nodeStart = e.prefix.length;
    let parent = nodeStart === 0 ? "root" : path.digest();
    for (let at = 0; at < e.tokens.length; ) {
      const end = Math.min(e.tokens.length, (Math.floor((nodeStart + at) / piece) + 1) * piece - nodeStart);
      const tokens = e.tokens.slice(at, end);
      const hash = path.add(tokens).digest();
      const bytes = onDisk(hash);
      const size = bytes ?? Math.ceil(perToken * tokens.length) + 4 * tokens.length + 4096 + 128 * tensors;
      const write = {
        hash,
        parent,
        regime: e.regime,
        tokens,
        start: nodeStart + at,
        state: e.payload,
        offset: at,
        size,
      };
      out.push({ hash, parent, size, write: bytes === undefined ? write : null });
      parent = hash;
      at = end;
    }
  }
  return out;
}

/**
 * Takes candidates in order while they fit the budget, each only after its
 * parent: what to keep, and the pieces to write (parents first).
 */
export function fitBudget(
  candidates: readonly Candidate[],
  budgetBytes: number,
): { keep: Set<string>; writes: PendingWrite[]; pendingBytes: number } {
  const keep = new Set<string>();
  const writes: PendingWrite[] = [];
  let total = 0;
  let pendingBytes = 0;
  // A child can come before its parent in use order: take what fits, again, until nothing changes.
  let left = [...candidates];
  for (let progress = true; progress; ) {
    progress = false;
    const rest: Candidate[] = [];
    for (const c of left) {
      if (c.parent !== "root" && !keep.has(c.parent)) {
        rest.push(c);
        continue;
      }
      if (total + c.size > budgetBytes) continue;
      total += c.size;
      keep.add(c.hash);
      if (c.write) {
        writes.push(c.write);
        pendingBytes += c.size;
      }
      progress = true;
    }
    left = rest;
  }
  return { keep, writes, pendingBytes };
}
