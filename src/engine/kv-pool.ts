// The KV pool: one memory budget for running sequences and cached prefixes.
// Plain data, no MLX. Running and prefilling sequences reserve what they will
// occupy at their longest; cached prefixes fill the rest and are evicted
// (least recently used leaves first) when a new sequence needs the room, so
// a cache entry never blocks admission and is never larger than a budget of
// its own.
//
// What a batch occupies: rows are left-padded to one write position
// (src/engine/kv-cache.ts), so a batch of R rows holds R × columns, where
// columns = the longest row's start + the most tokens any row may still add,
// rounded up to the cache's growth step. Joining a batch copies it (one layer
// at a time), so one layer's worth comes on top while that happens.

/** A sequence admitted or asking to be: tokens already in its KV, and tokens it may still add. */
export interface KvDemand {
  tokens: number;
  remaining: number;
}

export interface BatchFootprint {
  rows: number;
  /** Columns in use now (the shared write position). */
  columns: number;
  /** Most tokens any of its rows may still add. */
  remaining: number;
}

export interface KvPoolShape {
  budgetBytes: number;
  bytesPerToken: number;
  numLayers: number;
  /** Cache capacity grows in steps of this many columns. */
  growthStep: number;
}

function roundUp(n: number, step: number): number {
  return Math.ceil(n / step) * step;
}

/** Bytes the batch and the sequences waiting to join it will hold at their largest. */
export function projectedBytes(shape: KvPoolShape, batch: BatchFootprint | null, pending: readonly KvDemand[]): number {
  const rows = (batch?.rows ?? 0) + pending.length;
  if (rows === 0) return 0;
  let start = batch?.columns ?? 0;
  let remaining = batch?.remaining ?? 0;
  for (const d of pending) {
    start = Math.max(start, d.tokens);
    remaining = Math.max(remaining, d.remaining);
  }
  const columns = roundUp(start + remaining, shape.growthStep);
  const steady = rows * columns * shape.bytesPerToken;
  // A join builds the merged buffers layer by layer beside the old ones.
  return steady + Math.ceil(steady / shape.numLayers);
}

/** Bytes one sequence needs alone (the submit-time check: more than the budget is a 400). */
export function loneBytes(shape: KvPoolShape, demand: KvDemand): number {
  return projectedBytes(shape, null, [demand]);
}

export type Admission =
  | { admit: true /** Evict cached prefixes down to this many bytes first. */; cacheLimit: number }
  | { admit: false };

/**
 * Whether `next` may join now. Cached prefixes count as free: the answer
 * says how far to shrink them.
 */
export function admit(
  shape: KvPoolShape,
  batch: BatchFootprint | null,
  pending: readonly KvDemand[],
  next: KvDemand,
): Admission {
  const need = projectedBytes(shape, batch, [...pending, next]);
  const active = (batch?.rows ?? 0) + pending.length;
  // Alone, a sequence that passed the submit-time check always fits.
  if (active > 0 && need > shape.budgetBytes) return { admit: false };
  return { admit: true, cacheLimit: Math.max(0, shape.budgetBytes - need) };
}

/** The longest sequence (prompt + output) the pool can hold alone. */
export function maxLoneTokens(shape: KvPoolShape): number {
  const perColumn = shape.bytesPerToken * (1 + 1 / shape.numLayers);
  return Math.floor(shape.budgetBytes / perColumn / shape.growthStep) * shape.growthStep;
}

/** How many sequences of `tokens` each fit at once (memory plan and doctor). */
export function concurrentFit(shape: KvPoolShape, tokens: number): number {
  let n = 0;
  while (
    n < 4096 &&
    projectedBytes(shape, null, new Array(n + 1).fill({ tokens, remaining: 0 })) <= shape.budgetBytes
  ) {
    n++;
  }
  return n;
}

/** Tokens of one Claude Code session (its ~20K-token first request and room to answer). */
export const CLAUDE_CODE_SESSION_TOKENS = 24_576;

/** One line for the memory plan and doctor: the pool, and how many sessions of `sessionTokens` fit at once. */
export function describePool(shape: KvPoolShape, context: number, sessionTokens = CLAUDE_CODE_SESSION_TOKENS): string {
  const tokens = Math.min(sessionTokens, context);
  const sessions = concurrentFit(shape, tokens);
  const gib = (shape.budgetBytes / 1024 ** 3).toFixed(1);
  return (
    `KV pool ${gib} GiB (running sequences and cached prefixes): ${sessions} sequence${sessions === 1 ? "" : "s"} ` +
    `of ${tokens} tokens at once, one of ${maxLoneTokens(shape)} tokens`
  );
}

/** With fewer float sessions than this in the pool, automatic KV storage is 8-bit. */
export const AUTOMATIC_KV8_BELOW_SESSIONS = 2;

/**
 * Automatic KV storage (kvBits unset): float while the float pool holds at
 * least two Claude-Code-size sequences at once, else 8-bit, which holds about
 * 1.8x as many (Phi-3: 216 vs 384 KiB a token) at no measured quality cost
 * (perplexity within 0.1%). Float stays where memory allows because quantized
 * KV is dequantized a layer at a time for the fused kernels, which costs decode speed.
 */
export function automaticKvBits(floatPool: KvPoolShape, context: number): 0 | 8 {
  const sessions = concurrentFit(floatPool, Math.min(CLAUDE_CODE_SESSION_TOKENS, context));
  return sessions < AUTOMATIC_KV8_BELOW_SESSIONS ? 8 : 0;
}
