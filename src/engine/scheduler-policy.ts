// The scheduler's policy: every decision of an iteration, as plain data in and
// plain data out. It imports nothing that reaches MLX (kv-pool.ts and
// protocol.ts are plain too), so test/engine/scheduler-policy.test.ts runs it
// without a model. The device side (src/engine/scheduler.ts with
// batch-step.ts and scheduler-prefix.ts) asks it, in this order, each
// iteration:
//   1. dropCancelled: which sequences leave the queue and the prefill line;
//   2. compaction: which finished rows leave the batch now;
//   3. planAdmissions: how many waiting requests join the prefill line, and
//      how far the prefix cache must shrink for each (the KV pool);
//   4. regimeCrossings: which rows recompute their cache (Phi-3 LongRoPE);
//      planPreemption: which rows give way when the pool runs short (only
//      with SchedulerOptions.growthAllowance);
//   5. planPrefillGroup: which prompts prefill together, at what width;
//   6. prefillChunkEnd: how many columns the group's next forward pass takes;
//   7. acceptToken / nextMask (token-policy.ts): what a sampled token does to
//      its sequence.
// Decisions come one at a time rather than as one plan up front because each
// depends on what the device just did (a decode step finishes rows, a
// compaction shrinks the batch's columns), and the order must stay exactly
// that of the scheduler before the split.

import type { KvBits } from "./attention-plan";
import {
  admit,
  type BatchFootprint,
  type KvDemand,
  type KvPoolShape,
  loneBytes,
  maxLoneTokens,
  projectedBytes,
} from "./kv-pool";
import type { EngineRequest, FinishReason } from "./protocol";
import type { LookupTuning } from "./speculation";

/** One sequence's constrained decoding state (src/text/json-constraint.ts). */
export interface TokenConstraint {
  /** Advances by a generated token; false if the token was not allowed. */
  accept(token: number): boolean;
  /** Marks the allowed next tokens with 1 in `out` (zeroed); returns how many. */
  allowed(out: Uint8Array): number;
  /** Complete, and nothing but the end may follow. */
  readonly done: boolean;
  /** Complete (it may still go on, e.g. a top-level number). */
  readonly complete: boolean;
}

export interface SchedulerOptions {
  /** Rows decoded together. */
  maxConcurrent: number;
  /** Requests allowed to wait; beyond it new requests are rejected with 429. */
  queueSize: number;
  /** The KV pool: bytes for running and prefilling sequences and cached prefixes together. */
  kvBudgetBytes: number;
  /** Longest sequence (prompt + output) a request may reach. */
  contextLength: number;
  /** Prefill tokens per forward pass when nothing else runs. */
  prefillChunk: number;
  /** Prefill tokens per iteration while sequences are decoding (keeps their streams moving). */
  interleavedPrefillChunk: number;
  /** Prompts prefilled together in one forward pass (at most). */
  maxPrefillBatch?: number;
  /** Cap on the prefix cache inside the KV pool: null, only the pool bounds it; 0 disables it. */
  prefixCacheBytes: number | null;
  /** Prefix-cache node boundaries fall on multiples of this many tokens (default 16). */
  prefixBlockTokens?: number;
  /**
   * Prompts are left-padded to a multiple of this many tokens (default 1: none).
   * On CUDA every new prefill shape builds a cuDNN attention graph and matmul
   * plans (50-500 ms); a few widths keep those cached.
   */
  prefillWidthMultiple?: number;
  /** KV cache storage: 0 (default) float, 8 or 4 group-quantized bits. */
  kvBits?: KvBits;
  /** Prompt-lookup speculation for a lone decoding row (default true; requests may opt out). */
  speculative?: boolean;
  /** With a draft model attached: false drafts with it alone, no prompt lookup (benchmarks, tests; default true). */
  promptLookup?: boolean;
  /** Prompt lookup's adaptation (default DEFAULT_LOOKUP; benchmarks compare others). */
  lookupTuning?: LookupTuning;
  /**
   * Admission by current need: the KV pool reserves a sequence's tokens plus
   * at most this many more (not its whole max_tokens), and when the batch
   * then runs short, the newest rows are preempted (their KV kept in the
   * prefix cache) and resume later. Undefined (default): whole max_tokens
   * reserved at admission, never preempted.
   */
  growthAllowance?: number;
  /**
   * The device's free memory in bytes, asked before each prefill chunk (null: nothing to ask, as on the CPU).
   * Default: the CUDA card's (src/engine/device-headroom.ts); tests stand in a smaller card.
   */
  deviceFreeBytes?: () => number | null;
}

/** The limits the policy applies. */
export type PolicyLimits = Pick<
  SchedulerOptions,
  | "maxConcurrent"
  | "queueSize"
  | "contextLength"
  | "prefillChunk"
  | "interleavedPrefillChunk"
  | "maxPrefillBatch"
  | "prefillWidthMultiple"
  | "growthAllowance"
>;

/** What the policy knows of a sequence (the scheduler's Sequence adds its device state). */
export interface SequenceState {
  /** The request, its maxTokens already bounded by the context. */
  request: EngineRequest;
  /** Prompt plus every token read so far (a final stop token included). */
  tokens: number[];
  generated: number;
  /** Its RoPE regime (a model's ropeRegime(length)); crossing one recomputes the cache. */
  regime: number;
  cancelled: boolean;
  finished: FinishReason | null;
  constraint: TokenConstraint | null;
  /** The constraint's mask for the next token (vocabulary long), reused every step. */
  mask: Uint8Array | null;
}

/** A sequence in the prefill line; `recompute`: it crossed into another RoPE regime. */
export interface PrefillJob<S extends SequenceState = SequenceState> {
  seq: S;
  recompute: boolean;
}

/**
 * A sequence's KV demand: tokens in its cache once prefilled, and tokens it
 * may still add (at most `allowance` of them when admission goes by current
 * need: see SchedulerOptions.growthAllowance).
 */
export function demand(s: SequenceState, allowance?: number): KvDemand {
  const prompt = s.request.prompt.length;
  const remaining = Math.max(0, prompt + s.request.maxTokens - s.tokens.length);
  return { tokens: s.tokens.length, remaining: allowance === undefined ? remaining : Math.min(remaining, allowance) };
}

/**
 * The decode batch as the KV pool sees it: `columns` is the batch cache's
 * write position, null without one. Rows waiting for compaction count: they
 * hold memory.
 */
export function batchFootprint(
  rows: readonly SequenceState[],
  columns: number | null,
  allowance?: number,
): BatchFootprint | null {
  if (columns === null || rows.length === 0) return null;
  let remaining = 0;
  for (const s of rows) if (s.finished === null) remaining = Math.max(remaining, demand(s, allowance).remaining);
  return { rows: rows.length, columns, remaining };
}

export type SubmitVerdict =
  | { accept: true /** max_tokens bounded by the context. */; maxTokens: number }
  | { accept: false; status: number; message: string; retryAfterSeconds?: number };

/** Whether a request may queue (before its constraint is built): length, vocabulary, queue room, KV budget. */
export function checkSubmission(
  request: EngineRequest,
  limits: PolicyLimits,
  pool: KvPoolShape,
  vocabSize: number,
  waiting: number,
): SubmitVerdict {
  const reject = (status: number, message: string, retryAfterSeconds?: number): SubmitVerdict => ({
    accept: false,
    status,
    message,
    retryAfterSeconds,
  });
  const prompt = request.prompt;
  if (prompt.length === 0) return reject(400, "the prompt is empty");
  if (prompt.length >= limits.contextLength) {
    return reject(400, `prompt is too long: ${prompt.length} tokens > ${limits.contextLength - 1} maximum`);
  }
  if (prompt.some((t) => !Number.isInteger(t) || t < 0 || t >= vocabSize)) {
    return reject(400, `the prompt has token ids outside the vocabulary (0..${vocabSize - 1})`);
  }
  if (waiting >= limits.queueSize) return reject(429, `the server is busy: ${waiting} requests are waiting`, 1);
  const maxTokens = Math.max(0, Math.min(request.maxTokens, limits.contextLength - prompt.length));
  if (loneBytes(pool, { tokens: prompt.length, remaining: maxTokens }) > pool.budgetBytes) {
    return reject(
      400,
      `the request needs ${prompt.length + maxTokens} tokens of KV cache, more than the memory budget allows (${maxLoneTokens(pool)}); lower max_tokens or shorten the prompt`,
    );
  }
  return { accept: true, maxTokens };
}

/**
 * Removes cancelled sequences from the queue and the prefill line (in place)
 * and returns every cancelled sequence to finish, in the order their
 * "finished" events go out: queue, line, prefill group, batch. Group and
 * batch rows stay where they are: they leave when the group joins or the
 * batch is compacted.
 */
export function dropCancelled<S extends SequenceState>(
  waiting: S[],
  line: PrefillJob<S>[],
  group: readonly S[],
  rows: readonly S[],
): S[] {
  const out: S[] = [];
  const keepWaiting = waiting.filter((s) => !s.cancelled);
  for (const s of waiting) if (s.cancelled) out.push(s);
  const keepLine = line.filter((j) => !j.seq.cancelled);
  for (const j of line) if (j.seq.cancelled) out.push(j.seq);
  waiting.splice(0, waiting.length, ...keepWaiting);
  line.splice(0, line.length, ...keepLine);
  for (const s of group) if (s.cancelled) out.push(s);
  for (const s of rows) if (s.cancelled) out.push(s);
  return out;
}

/**
 * Finished rows to take out of the batch now, or none. Each compaction
 * copies the whole KV cache, so it waits until a quarter of the rows are
 * idle (or `force`: the batch is being copied anyway).
 */
export function compaction<S extends SequenceState>(rows: readonly S[], force: boolean): S[] {
  const dead = rows.filter((r) => r.finished !== null);
  if (dead.length === 0) return [];
  if (!force && dead.length * 4 < rows.length) return [];
  return dead;
}

/**
 * Admission from the head of the queue: how many waiting requests join the
 * prefill line now, each with the size the prefix cache must shrink to first
 * (cached prefixes count as free memory). Stops at the first that does not
 * fit (FIFO: no overtaking), or at maxConcurrent sequences.
 */
export function planAdmissions(
  limits: PolicyLimits,
  pool: KvPoolShape,
  batch: BatchFootprint | null,
  rows: number,
  prefilling: readonly SequenceState[],
  waiting: readonly SequenceState[],
): number[] {
  const cacheLimits: number[] = [];
  const allowance = limits.growthAllowance;
  const pending = prefilling.map((s) => demand(s, allowance));
  for (const next of waiting) {
    if (rows + pending.length >= limits.maxConcurrent) break;
    const d = demand(next, allowance);
    const verdict = admit(pool, batch, pending, d);
    if (!verdict.admit) break;
    cacheLimits.push(verdict.cacheLimit);
    pending.push(d);
  }
  return cacheLimits;
}

/**
 * Rows to preempt before the next decode step, newest (last in the batch)
 * first, so that the batch's next column beside the prefilling sequences fits
 * the pool. Finished rows are not counted (they leave in the same copy), and
 * the last live row is never preempted: alone, a sequence always fits (the
 * submit-time check). Only with a growth allowance: reserving whole
 * max_tokens never runs short.
 */
export function planPreemption<S extends SequenceState>(
  limits: PolicyLimits,
  pool: KvPoolShape,
  rows: readonly S[],
  columns: number,
  prefilling: readonly SequenceState[],
): S[] {
  const allowance = limits.growthAllowance;
  if (allowance === undefined) return [];
  const pending = prefilling.map((s) => demand(s, allowance));
  const live = rows.filter((s) => s.finished === null);
  const out: S[] = [];
  for (let kept = live.length; kept > 1; kept--) {
    if (projectedBytes(pool, { rows: kept, columns, remaining: 1 }, pending) <= pool.budgetBytes) break;
    out.push(live[kept - 1] as S);
  }
  return out;
}

/** Rows whose next token moves them into another RoPE regime (they leave the batch to recompute). */
export function regimeCrossings<S extends SequenceState>(
  rows: readonly S[],
  ropeRegime: (length: number) => number,
): S[] {
  return rows.filter((s) => ropeRegime(s.tokens.length + 1) !== s.regime);
}

/** A prompt that might join a prefill group: its length, regime, and cached prefix (peek, 0 if none). */
export interface GroupCandidate {
  tokens: number;
  regime: number;
  recompute: boolean;
  cachedPrefix: number;
}

export type GroupPlan =
  /** The line's head alone and unpadded, from `done` cached tokens (a hit, a recompute, a long prompt). */
  | { alone: true; width: number; done: number }
  /** The first `take` of the line, left-padded to `width` (padding[i] zeros before row i). */
  | { alone: false; take: number; width: number; padding: number[] };

/**
 * The next prefill group from the head of the line: a prefix-cache hit
 * (`hit`, its cached tokens) or a recompute goes alone (its cache starts
 * elsewhere), and so does a prompt longer than a chunk (a causal mask keeps
 * attention fused); otherwise following prompts without a hit join while
 * padding stays under half of the real tokens.
 */
export function planPrefillGroup(
  limits: PolicyLimits,
  first: GroupCandidate,
  hit: number | null,
  following: readonly GroupCandidate[],
): GroupPlan {
  if (hit !== null || first.recompute || first.tokens > limits.prefillChunk) {
    return { alone: true, width: first.tokens, done: hit ?? 0 };
  }
  const lengths = [first.tokens];
  const max = limits.maxPrefillBatch ?? 1;
  let width = first.tokens;
  let real = first.tokens;
  for (const next of following) {
    if (lengths.length >= max) break;
    if (next.recompute || next.regime !== first.regime) break;
    if (next.cachedPrefix > 0) break;
    if (next.tokens > limits.prefillChunk) break;
    const w = Math.max(width, next.tokens);
    if (w * (lengths.length + 1) > 1.5 * (real + next.tokens)) break;
    lengths.push(next.tokens);
    width = w;
    real += next.tokens;
  }
  const multiple = limits.prefillWidthMultiple ?? 1;
  width = Math.ceil(width / multiple) * multiple;
  return { alone: false, take: lengths.length, width, padding: lengths.map((n) => width - n) };
}

/**
 * Where a prefill group's next forward pass ends (a column): a full chunk
 * when nothing decodes, a small one while rows decode (their streams keep
 * moving) or while memory is short (`small`: its working memory grows with
 * the chunk; src/engine/memory-pressure.ts), split over the group's rows.
 */
export function prefillChunkEnd(
  limits: PolicyLimits,
  decodingRows: number,
  groupRows: number,
  width: number,
  done: number,
  small = false,
): number {
  const budget = decodingRows > 0 || small ? limits.interleavedPrefillChunk : limits.prefillChunk;
  const columns = Math.max(1, Math.floor(budget / groupRows));
  return Math.min(width, done + columns);
}
