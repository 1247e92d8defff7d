// Continuous batching. Every active sequence shares one batched forward pass
// per decode step, each with its own sampler and stop conditions. New requests
// are prefilled in bounded chunks between decode steps and then join the batch;
// finished or cancelled rows leave it at the next step. Admission is bounded by
// a maximum of concurrent sequences and a KV-memory budget; waiting requests
// sit in a bounded FIFO queue.
//
// One iteration (step):
//   1. drop cancelled sequences;
//   2. admit waiting requests to the prefill line;
//   3. decode: queue step n+1 for the whole batch (async_eval), then read step
//      n's tokens and emit them as one event; rows that finished leave;
//   4. run one prefill chunk; a finished prefill joins the batch.
//
// Constrained decoding (response_format): a constrained row's next mask
// depends on the token just sampled, so while any such row runs, step n's
// tokens are read before step n+1 is built (no pipelining for that batch);
// without one, the path is unchanged.

import type { MxArray } from "../mlx";
import * as mx from "../mlx";
import type { LanguageModel } from "../models/types";
import type { ConstraintSpec } from "../text/json-constraint";
import type { KvBits } from "./attention-plan";
import { KV_STEP, KVCache, sliceState } from "./kv-cache";
import {
  admit,
  type BatchFootprint,
  type KvDemand,
  type KvPoolShape,
  loneBytes,
  maxLoneTokens,
  projectedBytes,
} from "./kv-pool";
import { cacheShape } from "./one-sequence";
import { disposeState, type KVState, PrefixCache } from "./prefix-cache";
import type { PrefixStore } from "./prefix-store";
import type { EngineEvent, EngineRequest, FinishReason, SchedulerStats, StepValues, TokenOut } from "./protocol";
import { type SampledStep, SequenceSampler } from "./sampling";
import { DraftSession } from "./draft-model";
import { emptySpeculationStats, type LookupTuning, PromptLookup, type SpeculationStats } from "./speculation";
import { verifyDraft } from "./speculative-verify";

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

/** Builds a request's constraint; `endIds` are its stop tokens. Throws a SchemaError (→ 400) for a bad spec. */
export type ConstraintFactory = (spec: ConstraintSpec, endIds: readonly number[]) => TokenConstraint;

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
}

interface Sequence {
  request: EngineRequest;
  sampler: SequenceSampler;
  constraint: TokenConstraint | null;
  /** The constraint's mask for the next token (model vocabulary long), reused every step. */
  mask: Uint8Array | null;
  /** Prompt plus every token read so far (a final stop token included). */
  tokens: number[];
  generated: number;
  /** The last sampled step: its token is the next input; `unread` until emitted. */
  step: RowStep | null;
  unread: boolean;
  regime: number;
  cachedTokens: number;
  enqueuedAt: number;
  cancelled: boolean;
  finished: FinishReason | null;
  /** In the decode batch. A finished row stays there, idle, until the batch is compacted. */
  inBatch: boolean;
  /** Its prompt-lookup proposer (null: it does not speculate). */
  lookup: PromptLookup | null;
  /** Its draft-model state (draft-model.ts), made at its first draft-model proposal. */
  draft: DraftSession | null;
  /** When (ms, scheduler step) its last plain, not speculated, lone decode step began: the draft model's yardstick. */
  plainSince: { at: number; step: number } | null;
}

interface PrefillJob {
  seq: Sequence;
  /** A sequence that crossed into another RoPE regime, recomputing its cache. */
  recompute: boolean;
}

/**
 * Prompts prefilled together: left-padded to one width so they share each
 * forward pass (one larger matrix product instead of several small ones),
 * and join the decode batch together when done.
 */
interface PrefillGroup {
  jobs: PrefillJob[];
  cache: KVCache;
  /** Row-major [jobs, width] token ids, each row left-padded with zeros. */
  tokens: Int32Array;
  width: number;
  /** Columns already in the cache (for a prefix-cache hit: the cached tokens). */
  done: number;
}

/**
 * One decode step's results for a whole batch, as lazy arrays: token ids
 * (int32 [n]) and, when any row asked, their log-probabilities. Read from the
 * device once for all rows.
 */
class BatchStep {
  readonly tokens: MxArray;
  readonly logprobs: MxArray | null;
  #hostTokens: Int32Array | null = null;
  #hostLogprobs: Float32Array | null = null;
  #refs = 0;

  constructor(tokens: MxArray, logprobs: MxArray | null) {
    this.tokens = mx.keep(tokens);
    this.logprobs = logprobs ? mx.keep(logprobs) : null;
  }

  get size(): number {
    return this.tokens.dim(0);
  }

  arrays(): MxArray[] {
    return this.logprobs ? [this.tokens, this.logprobs] : [this.tokens];
  }

  value(i: number): { token: number; logprob: number | null } {
    if (!this.#hostTokens) {
      this.#hostTokens = this.tokens.read() as Int32Array;
      this.#hostLogprobs = this.logprobs ? (this.logprobs.read() as Float32Array) : null;
    }
    return {
      token: this.#hostTokens[i] as number,
      logprob: this.#hostLogprobs ? (this.#hostLogprobs[i] as number) : null,
    };
  }

  retain(): this {
    this.#refs++;
    return this;
  }

  release(): void {
    if (--this.#refs > 0) return;
    for (const a of this.arrays()) a.dispose();
  }
}

/**
 * The next forward's input [B, 1]: the previous step's tokens as they are when
 * the rows are exactly that step's rows, else gathered row by row.
 */
function nextInput(previous: RowStep[]): MxArray {
  const first = previous[0]?.batch;
  const same = first && first.size === previous.length && previous.every((p, i) => p.batch === first && p.index === i);
  const tokens = same
    ? first.tokens
    : mx.concatenate(
        previous.map((p) => mx.sliceAxis(p.batch.tokens, 0, p.index, p.index + 1)),
        0,
      );
  return mx.reshape(tokens, [previous.length, 1]);
}

/** A row's part of a batch step, plus its top alternatives when it asked for them. */
interface RowStep {
  batch: BatchStep;
  index: number;
  topIds: MxArray | null;
  topLogprobs: MxArray | null;
}

/** A constraint's host mask as a device bool array (within a tidy scope). */
function maskArray(mask: Uint8Array | null): MxArray | null {
  return mask ? mx.fromData(mask, [mask.length], mx.Dtype.bool) : null;
}

function rowStepFromSampled(step: SampledStep): RowStep {
  const batch = new BatchStep(step.token, step.logprob).retain();
  return {
    batch,
    index: 0,
    topIds: step.topIds ? mx.keep(step.topIds) : null,
    topLogprobs: step.topLogprobs ? mx.keep(step.topLogprobs) : null,
  };
}

function releaseRowStep(step: RowStep | null): void {
  if (!step) return;
  step.batch.release();
  step.topIds?.dispose();
  step.topLogprobs?.dispose();
}

function rowStepArrays(step: RowStep): MxArray[] {
  const out = step.batch.arrays();
  if (step.topIds) out.push(step.topIds);
  if (step.topLogprobs) out.push(step.topLogprobs);
  return out;
}

export class Scheduler {
  readonly model: LanguageModel;
  readonly options: SchedulerOptions;
  readonly prefixCache: PrefixCache;
  readonly #emit: (event: EngineEvent) => void;
  #waiting: Sequence[] = [];
  #prefills: PrefillJob[] = [];
  #group: PrefillGroup | null = null;
  #rows: Sequence[] = [];
  #batch: KVCache | null = null;
  #steps = 0;
  #tokensOut: TokenOut[] = [];
  #finishedOut: EngineEvent[] = [];
  /** Prompt-lookup verify passes so far (benchmarks). */
  readonly speculation: SpeculationStats = emptySpeculationStats();
  readonly #bytesPerToken: number;
  readonly #pool: KvPoolShape;
  readonly #constrain: ConstraintFactory | null;
  #disk: PrefixStore | null = null;
  #draftModel: LanguageModel | null = null;

  constructor(
    model: LanguageModel,
    options: SchedulerOptions,
    emit: (event: EngineEvent) => void,
    constrain: ConstraintFactory | null = null,
  ) {
    this.model = model;
    this.options = options;
    this.#emit = emit;
    this.#constrain = constrain;
    this.prefixCache = new PrefixCache({
      enabled: options.prefixCacheBytes !== 0,
      capBytes: options.prefixCacheBytes,
      blockTokens: options.prefixBlockTokens,
    });
    const c = model.config;
    this.#bytesPerToken = KVCache.bytesPerToken(cacheShape(model, options.kvBits));
    this.#pool = {
      budgetBytes: options.kvBudgetBytes,
      bytesPerToken: this.#bytesPerToken,
      numLayers: c.numLayers,
      growthStep: KV_STEP,
    };
  }

  /** Keeps cached prefixes on disk too (src/engine/prefix-store.ts). */
  attachPrefixStore(store: PrefixStore | null): void {
    this.#disk = store;
  }

  /**
   * Writes one cached prefix node that the disk lacks (quiet moments and
   * shutdown). Returns whether more remain.
   */
  persistStep(): boolean {
    if (!this.#disk || !this.prefixCache.enabled) return false;
    const pending = this.#disk.plan(this.prefixCache.entries(), (st) =>
      st.parts.reduce((n, layer) => n + layer.reduce((m, a) => m + a.nbytes, 0), 0),
    );
    const next = pending[0];
    if (next) this.#disk.write(next);
    return pending.length > 1;
  }

  /** Drafts with a second model where prompt lookup finds nothing (src/engine/draft-model.ts). */
  attachDraftModel(model: LanguageModel | null): void {
    this.#draftModel = model;
  }

  /** KV bytes one token occupies (all layers, keys and values). */
  get bytesPerToken(): number {
    return this.#bytesPerToken;
  }

  /** Queues a request (true), or rejects it at once with a "rejected" event (too long, queue full). */
  submit(request: EngineRequest): boolean {
    const o = this.options;
    const reject = (status: number, message: string, retryAfterSeconds?: number) => {
      this.#emit({ type: "rejected", id: request.id, status, message, retryAfterSeconds });
      return false;
    };
    if (request.prompt.length === 0) return reject(400, "the prompt is empty");
    if (request.prompt.length >= o.contextLength) {
      return reject(400, `prompt is too long: ${request.prompt.length} tokens > ${o.contextLength - 1} maximum`);
    }
    const vocab = this.model.config.vocabSize;
    if (request.prompt.some((t) => !Number.isInteger(t) || t < 0 || t >= vocab)) {
      return reject(400, `the prompt has token ids outside the vocabulary (0..${vocab - 1})`);
    }
    if (this.#waiting.length >= o.queueSize) {
      return reject(429, `the server is busy: ${this.#waiting.length} requests are waiting`, 1);
    }
    const maxTokens = Math.max(0, Math.min(request.maxTokens, o.contextLength - request.prompt.length));
    if (loneBytes(this.#pool, { tokens: request.prompt.length, remaining: maxTokens }) > o.kvBudgetBytes) {
      return reject(
        400,
        `the request needs ${request.prompt.length + maxTokens} tokens of KV cache, more than the memory budget allows (${maxLoneTokens(this.#pool)}); lower max_tokens or shorten the prompt`,
      );
    }
    let constraint: TokenConstraint | null = null;
    if (request.constraint) {
      if (!this.#constrain) return reject(400, "constrained decoding (response_format) is not available");
      try {
        const endIds = request.stopTokenIds.filter((t) => Number.isInteger(t) && t >= 0 && t < vocab);
        constraint = this.#constrain(request.constraint, endIds);
      } catch (e) {
        // A bad schema is the client's; anything else (the tokenizer failed to load) is ours.
        const bad = (e as Error).name === "SchemaError";
        return reject(bad ? 400 : 500, `response_format: ${(e as Error).message}`);
      }
    }
    const sampler = new SequenceSampler(request.sampling, vocab, request.prompt);
    this.#waiting.push({
      request: { ...request, maxTokens },
      sampler,
      constraint,
      mask: constraint ? new Uint8Array(vocab) : null,
      tokens: [...request.prompt],
      generated: 0,
      step: null,
      unread: false,
      regime: this.model.ropeRegime(request.prompt.length),
      cachedTokens: 0,
      enqueuedAt: performance.now(),
      cancelled: false,
      finished: null,
      inBatch: false,
      lookup: this.#speculates(request, sampler, constraint) ? new PromptLookup(this.options.lookupTuning) : null,
      draft: null,
      plainSince: null,
    });
    return true;
  }

  cancel(id: string): void {
    for (const s of this.#all()) if (s.request.id === id) s.cancelled = true;
  }

  /** Cancels everything (shutdown). */
  cancelAll(): void {
    for (const s of this.#all()) s.cancelled = true;
  }

  hasWork(): boolean {
    return this.#waiting.length > 0 || this.#prefills.length > 0 || this.#group !== null || this.#rows.length > 0;
  }

  *#all(): Iterable<Sequence> {
    yield* this.#waiting;
    for (const j of this.#prefills) yield j.seq;
    for (const j of this.#group?.jobs ?? []) yield j.seq;
    yield* this.#rows;
  }

  stats(): SchedulerStats {
    const prefilling = this.#prefilling();
    const reserved = projectedBytes(this.#pool, this.#footprint(), prefilling.map(demand));
    const prefillBytes = this.#group?.cache.nbytes ?? 0;
    return {
      running: this.#rows.filter((r) => r.finished === null).length,
      prefilling: prefilling.length,
      waiting: this.#waiting.length,
      kvCacheBytes: (this.#batch?.nbytes ?? 0) + prefillBytes,
      kvReservedBytes: reserved,
      kvBudgetBytes: this.options.kvBudgetBytes,
      prefixCache: this.prefixCache.stats(),
      prefixDisk: this.#disk?.stats() ?? null,
      steps: this.#steps,
      speculation: { ...this.speculation },
      maxConcurrent: this.options.maxConcurrent,
      queueSize: this.options.queueSize,
      contextLength: this.options.contextLength,
    };
  }

  /** One scheduling iteration. Returns whether work remains. */
  step(): boolean {
    this.#steps++;
    this.#dropCancelled();
    this.#admit();
    if (this.#rows.length > 0) this.#guard(() => this.#decode(), [...this.#rows], true);
    if (!this.#group) this.#group = this.#formGroup();
    const group = this.#group;
    if (group) {
      this.#guard(
        () => this.#prefillStep(group),
        group.jobs.map((j) => j.seq),
        false,
      );
    }
    // Per sequence, events go out in order: started, tokens, finished.
    if (this.#tokensOut.length) this.#emit({ type: "tokens", items: this.#tokensOut });
    this.#tokensOut = [];
    const finished = this.#finishedOut;
    this.#finishedOut = [];
    for (const e of finished) this.#emit(e);
    if (!this.hasWork()) this.#idle();
    return this.hasWork();
  }

  /**
   * An MLX failure fails the sequences involved and leaves the engine serving.
   * A failed decode step leaves the batch cache in an unknown state: it goes.
   */
  #guard(work: () => void, involved: readonly Sequence[], dropBatch: boolean): void {
    try {
      work();
    } catch (e) {
      const message = `engine error: ${(e as Error).message}`;
      const failed = new Set(involved);
      for (const s of failed) this.#finish(s, "error", message);
      this.#prefills = this.#prefills.filter((j) => !failed.has(j.seq));
      if (this.#group?.jobs.some((j) => failed.has(j.seq))) {
        this.#group.cache.dispose();
        this.#group = null;
      }
      if (dropBatch) {
        for (const r of this.#rows) {
          r.inBatch = false;
          releaseRowStep(r.step);
          r.step = null;
        }
        this.#batch?.dispose();
        this.#batch = null;
        this.#rows = [];
      }
    }
  }

  /** Nothing left to run. MLX's buffer cache stays: the engine frees it after a quiet spell. */
  #idle(): void {
    this.#batch?.dispose();
    this.#batch = null;
  }

  #finish(s: Sequence, reason: FinishReason, message?: string): void {
    if (s.finished) return;
    s.finished = reason;
    this.#finishedOut.push({ type: "finished", id: s.request.id, reason, completionTokens: s.generated, message });
    s.sampler.dispose();
    s.draft?.dispose();
    s.draft = null;
    const row = s.inBatch ? this.#rows.indexOf(s) : -1;
    if (row >= 0 && this.#batch && (reason === "stop" || reason === "length") && this.#caches(s)) {
      // Its KV stays in the batch until compaction: copy what the prefix cache lacks now.
      const length = Math.min(s.tokens.length, this.#batch.rowLengths()[row] ?? 0);
      this.#store(s, this.#batch, row, length);
    }
    // A batch row keeps its last step: its token still fills the row's input until compaction.
    if (row < 0) {
      releaseRowStep(s.step);
      s.step = null;
    }
    s.unread = false;
  }

  /**
   * Takes finished rows out of the batch. Each compaction copies the whole KV
   * cache, so it waits until a quarter of the rows are idle (or `force`).
   */
  #compact(force = false): void {
    const dead = this.#rows.filter((r) => r.finished !== null);
    if (dead.length === 0) return;
    if (!force && dead.length * 4 < this.#rows.length) return;
    this.#removeRows(new Set(dead));
  }

  #dropCancelled(): void {
    this.#waiting = this.#waiting.filter((s) => {
      if (s.cancelled) this.#finish(s, "cancelled");
      return !s.cancelled;
    });
    this.#prefills = this.#prefills.filter((j) => {
      if (j.seq.cancelled) this.#finish(j.seq, "cancelled");
      return !j.seq.cancelled;
    });
    // A cancelled row of a prefill group finishes now and leaves when the group joins.
    for (const j of this.#group?.jobs ?? []) if (j.seq.cancelled) this.#finish(j.seq, "cancelled");
    for (const s of this.#rows) if (s.cancelled) this.#finish(s, "cancelled");
    this.#compact();
  }

  #admit(): void {
    const o = this.options;
    while (this.#waiting.length > 0) {
      const next = this.#waiting[0] as Sequence;
      const prefilling = this.#prefilling();
      if (this.#rows.length + prefilling.length >= o.maxConcurrent) return;
      const verdict = admit(this.#pool, this.#footprint(), prefilling.map(demand), demand(next));
      if (!verdict.admit) return;
      // Cached prefixes give way to the sequence (least recently used first).
      this.prefixCache.evictTo(verdict.cacheLimit);
      this.#waiting.shift();
      this.#prefills.push({ seq: next, recompute: false });
    }
  }

  /** The decode batch as the KV pool sees it (rows waiting for compaction included: they hold memory). */
  #footprint(): BatchFootprint | null {
    const batch = this.#batch;
    if (!batch || this.#rows.length === 0) return null;
    let remaining = 0;
    for (const s of this.#rows) if (s.finished === null) remaining = Math.max(remaining, demand(s).remaining);
    return { rows: this.#rows.length, columns: batch.offset, remaining };
  }

  /** Shrinks the prefix cache to what the pool leaves it. */
  #trimCache(): void {
    const reserved = projectedBytes(this.#pool, this.#footprint(), this.#prefilling().map(demand));
    this.prefixCache.evictTo(this.options.kvBudgetBytes - reserved);
  }

  /**
   * Brings a prompt's prefix from disk into the prefix cache when the disk
   * holds more of it than memory does: one radix node per file, so the nodes
   * keep the files' boundaries (and their names) when written back.
   */
  #loadFromDisk(s: Sequence): void {
    const disk = this.#disk;
    if (!disk) return;
    const limit = s.tokens.length - 1;
    const inMemory = this.prefixCache.peek(s.tokens, s.regime);
    const found = disk.match(s.tokens, s.regime, limit, this.prefixCache.blockTokens);
    if (found.length <= inMemory || found.length < this.prefixCache.minTokens) return;
    const fileBytes = found.chain.reduce((n, c) => n + c.bytes, 0);
    if (!disk.choice.worthLoading(fileBytes, found.length - inMemory)) return;
    const reserved = projectedBytes(this.#pool, this.#footprint(), this.#prefilling().map(demand));
    this.prefixCache.evictTo(this.options.kvBudgetBytes - reserved - fileBytes);
    const states = disk.load(found.chain);
    if (!states) return;
    const used = new Set<KVState>();
    let end = 0;
    for (const state of states) {
      const start = end;
      end = Math.min(end + state.length, found.length);
      this.prefixCache.store(s.tokens, s.regime, end, (a, b) => {
        if (a === start && b - a === state.length) {
          used.add(state);
          return state;
        }
        return mx.tidy(() => ({
          parts: state.parts.map((layer) =>
            layer.map((x) => mx.keep(mx.contiguous(mx.sliceAxis(x, 2, a - start, b - start)))),
          ),
          length: b - a,
        }));
      });
    }
    for (const state of states) if (!used.has(state)) disposeState(state);
    this.#trimCache();
  }

  /** Stores a row's KV [0, length) in the prefix cache, copying only what is not cached yet. */
  #store(s: Sequence, cache: KVCache, row: number, length: number): void {
    // Room first: the copy is new memory.
    const reserved = projectedBytes(this.#pool, this.#footprint(), this.#prefilling().map(demand));
    this.prefixCache.evictTo(this.options.kvBudgetBytes - reserved - length * this.#bytesPerToken);
    this.prefixCache.store(s.tokens, s.regime, length, (start, end) => cache.rowState(row, start, end));
    this.#trimCache();
  }

  /** Removes rows from the batch now (one copy of the KV cache). */
  #removeRows(gone: Set<Sequence>): void {
    const batch = this.#batch;
    if (!batch) return;
    const keep: number[] = [];
    this.#rows.forEach((s, i) => {
      if (!gone.has(s)) {
        keep.push(i);
        return;
      }
      s.inBatch = false;
      if (s.finished !== null) {
        releaseRowStep(s.step);
        s.step = null;
      }
    });
    this.#rows = this.#rows.filter((s) => !gone.has(s));
    if (this.#rows.length === 0) {
      batch.dispose();
      this.#batch = null;
    } else {
      batch.keepRows(keep);
    }
  }

  /** Reads a sequence's unread step: emits its token or finishes it. */
  #read(s: Sequence): void {
    if (!s.step || !s.unread) return;
    s.unread = false;
    const step = s.step;
    const { token, logprob } = step.batch.value(step.index);
    let top: StepValues["top"] = null;
    if (step.topIds && step.topLogprobs) {
      const ids = step.topIds.read() as Int32Array;
      const lps = step.topLogprobs.read() as Float32Array;
      top = Array.from(ids, (id, i) => ({ token: id, logprob: lps[i] as number }));
    }
    this.#accept(s, { token, logprob, top });
  }

  /** Takes a row's next token: emits it, or finishes the row (stop token, constraint, length). */
  #accept(s: Sequence, v: StepValues): void {
    s.tokens.push(v.token);
    if (s.request.stopTokenIds.includes(v.token)) {
      this.#finish(s, "stop");
      return;
    }
    s.generated++;
    this.#tokensOut.push({ id: s.request.id, ...v });
    if (s.constraint) {
      if (!s.constraint.accept(v.token)) {
        this.#finish(s, "error", `constrained decoding: token ${v.token} is not allowed here`);
        return;
      }
      // Only a stop token may follow: end now rather than spend a step on it.
      if (s.constraint.done) {
        this.#finish(s, "stop");
        return;
      }
    }
    if (s.generated >= s.request.maxTokens || s.tokens.length >= this.options.contextLength) this.#finish(s, "length");
  }

  /**
   * The constraint's mask for a row's next token (null: unconstrained). A row
   * with no token allowed ends here: "stop" when its value is complete (a
   * grammar with no stop token), else "error" (a schema nothing satisfies).
   */
  #nextMask(s: Sequence): Uint8Array | null {
    if (!s.constraint || !s.mask || s.finished !== null) return null;
    s.mask.fill(0);
    if (s.constraint.allowed(s.mask) > 0) return s.mask;
    if (s.constraint.complete) this.#finish(s, "stop");
    else this.#finish(s, "error", "constrained decoding: no token can continue the response format");
    return null;
  }

  #decode(): void {
    // Rows whose next token moves them into another RoPE regime leave the
    // batch to recompute their cache; reading them first needs a sync.
    const crossing = this.#rows.filter((s) => this.model.ropeRegime(s.tokens.length + 1) !== s.regime);
    if (crossing.length > 0) {
      for (const s of this.#rows) this.#read(s);
      const leaving = new Set(this.#rows.filter((s) => s.finished !== null));
      for (const s of crossing) {
        if (s.finished) continue;
        leaving.add(s);
        s.regime = this.model.ropeRegime(s.tokens.length);
      }
      const moving = crossing.filter((s) => !s.finished);
      this.#removeRows(leaving);
      for (const s of moving) {
        releaseRowStep(s.step);
        s.step = null;
        this.#prefills.unshift({ seq: s, recompute: true });
      }
    }
    const rows = this.#rows;
    const batch = this.#batch;
    if (rows.length === 1 && batch && this.#speculate(rows[0] as Sequence, batch)) return;
    if (rows.length > 0 && batch) {
      let masks: Array<Uint8Array | null> | null = null;
      if (rows.some((s) => s.constraint && s.finished === null)) {
        // The masks need the tokens of the step in flight: read it now (a sync).
        for (const s of rows) this.#read(s);
        masks = rows.map((s) => this.#nextMask(s));
        if (rows.every((s) => s.finished !== null)) {
          this.#compact();
          return;
        }
      }
      const previous = rows.map((s) => s.step as RowStep);
      const next = mx.tidy(() =>
        this.#sampleBatch(rows, this.model.forward(nextInput(previous), batch, { logits: "last" }), masks),
      );
      mx.asyncEval(...next.flatMap(rowStepArrays));
      for (const s of rows) this.#read(s);
      rows.forEach((s, i) => {
        releaseRowStep(s.step);
        s.step = next[i] as RowStep;
        s.unread = s.finished === null;
      });
      this.#compact();
    }
  }

  // ---- Prompt-lookup speculation (speculation.ts, speculative-verify.ts) ----
  // Only a lone decoding row with no prefill pending speculates. Batched rows
  // share one left-padded write position, so per-row draft lengths would need
  // per-row holes or masks in the cache (not built yet): with more rows, or a
  // prefill waiting, a step decodes exactly as without speculation.

  /** Whether a request may speculate at all. */
  #speculates(request: EngineRequest, sampler: SequenceSampler, constraint: TokenConstraint | null): boolean {
    const asked = request.sampling.speculative;
    if (this.options.speculative === false || asked === false || request.internal) return false;
    // A constraint's mask and the penalties follow every token: those rows decode one token at a time.
    if (constraint || sampler.penalized) return false;
    // Seeded sampling draws differently when it speculates: it keeps the tokens a batch gives unless asked.
    return asked === true || sampler.params.temperature <= 0 || sampler.params.seed === null;
  }

  /** One verify pass in place of a lone row's decode step; false: decode as usual. */
  #speculate(s: Sequence, batch: KVCache): boolean {
    const began = performance.now();
    // The previous iteration was a plain step of this row alone: its time is the draft model's yardstick.
    const plain = s.plainSince;
    if (plain !== null && plain.step === this.#steps - 1) s.draft?.observePlain(began - plain.at);
    s.plainSince = null;
    const spoke = this.#speculateOnce(s, batch, began);
    if (!spoke && s.draft && this.#prefills.length === 0 && !this.#group)
      s.plainSince = { at: began, step: this.#steps };
    return spoke;
  }

  #speculateOnce(s: Sequence, batch: KVCache, began: number): boolean {
    const lookup = s.lookup;
    if (!lookup || s.finished !== null || this.#prefills.length > 0 || this.#group) return false;
    // Prompt lookup first (free when it matches); the draft model, when there is one, where it finds nothing.
    const drafting = this.#draftModel;
    const looks = (this.options.promptLookup !== false || !drafting) && lookup.ready();
    if (drafting) s.draft ??= new DraftSession(drafting);
    const drafts = s.draft?.ready() ?? false;
    if (!looks && !drafts) return false;
    // The step in flight holds the newest token, the draft's context: read it (a sync).
    this.#read(s);
    if (s.finished !== null) {
      this.#compact();
      return true;
    }
    let k = Math.min(
      Math.max(lookup.draftLength, s.draft?.draftLength ?? 0),
      s.request.maxTokens - s.generated - 1,
      this.options.contextLength - s.tokens.length - 1,
    );
    // Within the row's RoPE regime: crossing it (Phi-3 LongRoPE) recomputes the cache, token by token.
    while (k > 0 && this.model.ropeRegime(s.tokens.length + k + 1) !== s.regime) k--;
    const looked = looks && k > 0 ? lookup.propose(s.tokens, k) : null;
    let draft = looked?.draft ?? null;
    let q: MxArray | null = null;
    if (!draft && s.draft && drafts && k > 0) {
      const proposal = s.draft.propose(s.tokens, k, s.sampler, this.model.config.vocabSize);
      draft = proposal.draft;
      q = proposal.probs;
    }
    if (!draft || draft.length === 0) return false;
    const last = s.tokens[s.tokens.length - 1] as number;
    let verified: ReturnType<typeof verifyDraft>;
    try {
      verified = verifyDraft(this.model, batch, s.sampler, last, draft, q);
    } finally {
      q?.dispose();
    }
    const { values, accepted } = verified;
    if (looked) lookup.record(draft.length, accepted);
    else {
      s.draft?.record(draft.length, accepted);
      s.draft?.observeDraft(performance.now() - began, values.length);
    }
    const stats = this.speculation;
    stats.passes++;
    stats.drafted += draft.length;
    stats.accepted += accepted;
    stats.emitted += values.length;
    if (!looked) {
      stats.draftModelPasses++;
      stats.draftModelDrafted += draft.length;
      stats.draftModelAccepted += accepted;
    }
    // The last token is the next input, already taken here (a read step).
    releaseRowStep(s.step);
    const next = (values[values.length - 1] as StepValues).token;
    s.step = {
      batch: mx.tidy(() => new BatchStep(mx.int32([next]), null)).retain(),
      index: 0,
      topIds: null,
      topLogprobs: null,
    };
    s.unread = false;
    for (const v of values) if (s.finished === null) this.#accept(s, v);
    this.#compact();
    return true;
  }

  /**
   * Samples every row of logits [B, 1, V] in one graph: one argmax for the
   * rows that decode greedily without penalties (their logit biases stacked
   * into one [B, V] addition), their own sampler for the others, and
   * log-probabilities for all rows at once when any asked.
   */
  #sampleBatch(rows: Sequence[], logits: MxArray, masks: Array<Uint8Array | null> | null = null): RowStep[] {
    const B = rows.length;
    const flat = mx.reshape(logits, [B, -1]);
    let greedyInput = flat;
    // Finished rows waiting for compaction take the plain greedy path; their output is ignored.
    const live = (s: Sequence) => s.finished === null;
    // A constrained row samples on its own, its mask applied.
    const masked = (i: number) => (live(rows[i] as Sequence) ? (masks?.[i] ?? null) : null);
    const own = (s: Sequence, i: number) => live(s) && (!s.sampler.batchableGreedy || masked(i) !== null);
    const bias = (s: Sequence, i: number) => (live(s) && !own(s, i) ? s.sampler.biasVector : null);
    if (rows.some((s, i) => bias(s, i) !== null)) {
      const zero = mx.zeros([flat.dim(1)]);
      greedyInput = mx.add(flat, mx.stack(rows.map((s, i) => bias(s, i) ?? zero)));
    }
    const greedy = mx.astype(mx.argmax(greedyInput, -1), mx.Dtype.int32);
    const custom = rows.map((s, i) =>
      own(s, i) ? s.sampler.sample(mx.sliceAxis(flat, 0, i, i + 1), maskArray(masked(i))) : null,
    );
    const tokens = custom.every((c) => c === null)
      ? greedy
      : mx.concatenate(
          custom.map((c, i) => c?.token ?? mx.sliceAxis(greedy, 0, i, i + 1)),
          0,
        );
    const wantLogprobs = rows.some((s) => live(s) && (s.sampler.params.logprobs || s.sampler.params.topLogprobs > 0));
    let logprobs: MxArray | null = null;
    let all: MxArray | null = null;
    if (wantLogprobs) {
      all = mx.subtract(flat, mx.logsumexp(flat, -1, true));
      logprobs = mx.reshape(mx.takeAlongAxis(all, mx.reshape(tokens, [B, 1]), 1), [B]);
    }
    const step = new BatchStep(tokens, logprobs);
    return rows.map((s, i) => {
      const k = live(s) ? Math.min(s.sampler.params.topLogprobs, s.sampler.vocabSize) : 0;
      let topIds: MxArray | null = null;
      let topLogprobs: MxArray | null = null;
      if (k > 0 && all) {
        const row = mx.reshape(mx.sliceAxis(all, 0, i, i + 1), [-1]);
        topIds = mx.keep(mx.astype(mx.sliceAxis(mx.argsort(mx.neg(row), -1), 0, 0, k), mx.Dtype.int32));
        topLogprobs = mx.keep(mx.take(row, topIds, 0));
      }
      return { batch: step.retain(), index: i, topIds, topLogprobs };
    });
  }

  /** Whether a sequence takes part in the prefix cache. */
  #caches(s: Sequence): boolean {
    return this.prefixCache.enabled && !s.request.internal;
  }

  #prefilling(): Sequence[] {
    return [...this.#prefills.map((j) => j.seq), ...(this.#group?.jobs.map((j) => j.seq) ?? [])];
  }

  /**
   * The next prefill group from the head of the line: a prefix-cache hit or a
   * recompute goes alone (its cache starts elsewhere); otherwise following
   * prompts without a hit join, while padding stays modest.
   */
  #formGroup(): PrefillGroup | null {
    const first = this.#prefills.shift();
    if (!first) return null;
    const shape = cacheShape(this.model, this.options.kvBits);
    const s = first.seq;
    if (this.#caches(s) && !first.recompute) this.#loadFromDisk(s);
    const hit = this.#caches(s) ? this.prefixCache.lookup(s.tokens, s.regime) : null;
    if (hit || first.recompute || s.tokens.length > this.options.prefillChunk) {
      // Alone and unpadded: a causal mask keeps attention fused (no score matrix over a long context).
      if (hit && !first.recompute) s.cachedTokens = hit.length;
      const cache = hit
        ? mx.tidy(() =>
            KVCache.fromStates(
              shape,
              hit.segments.map((g) => sliceState(g.state, 0, g.tokens)),
            ),
          )
        : KVCache.padded(shape, [0]);
      // One allocation for the whole prompt (growing chunk by chunk copies the cache each time).
      cache.reserve(s.tokens.length + 1);
      return {
        jobs: [first],
        cache,
        tokens: Int32Array.from(s.tokens),
        width: s.tokens.length,
        done: hit?.length ?? 0,
      };
    }
    const jobs = [first];
    const limit = this.options.maxPrefillBatch ?? 1;
    let width = s.tokens.length;
    let real = s.tokens.length;
    while (jobs.length < limit && this.#prefills.length > 0) {
      const next = this.#prefills[0] as PrefillJob;
      if (next.recompute || next.seq.regime !== s.regime) break;
      if (this.#caches(next.seq) && this.prefixCache.peek(next.seq.tokens, next.seq.regime) > 0) break;
      if (next.seq.tokens.length > this.options.prefillChunk) break;
      const w = Math.max(width, next.seq.tokens.length);
      // Stop before padding exceeds half of the real tokens.
      if (w * (jobs.length + 1) > 1.5 * (real + next.seq.tokens.length)) break;
      jobs.push(this.#prefills.shift() as PrefillJob);
      width = w;
      real += next.seq.tokens.length;
    }
    const multiple = this.options.prefillWidthMultiple ?? 1;
    width = Math.ceil(width / multiple) * multiple;
    const tokens = new Int32Array(jobs.length * width);
    jobs.forEach((j, i) => {
      tokens.set(j.seq.tokens, i * width + width - j.seq.tokens.length);
    });
    return {
      jobs,
      cache: KVCache.padded(
        shape,
        jobs.map((j) => width - j.seq.tokens.length),
      ),
      tokens,
      width,
      done: 0,
    };
  }

  /** One chunk of the group's prefill; the last one samples each row's first token and joins the batch. */
  #prefillStep(group: PrefillGroup): void {
    const o = this.options;
    const n = group.jobs.length;
    const budget = this.#rows.length > 0 ? o.interleavedPrefillChunk : o.prefillChunk;
    const columns = Math.max(1, Math.floor(budget / n));
    const end = Math.min(group.width, group.done + columns);
    const part = new Int32Array(n * (end - group.done));
    for (let i = 0; i < n; i++) {
      part.set(group.tokens.subarray(i * group.width + group.done, i * group.width + end), i * (end - group.done));
    }
    const cache = group.cache;
    const ropeLengths = group.jobs.map((j) => j.seq.tokens.length);
    const input = () => mx.fromData(part, [n, end - group.done], mx.Dtype.int32);
    if (end < group.width) {
      const started = performance.now();
      mx.tidy(() => {
        this.model.forward(input(), cache, { logits: "none", ropeLengths });
        mx.evaluate(...cache.arrays());
      });
      this.#disk?.choice.recordPrefill(part.length, performance.now() - started);
      group.done = end;
      return;
    }
    const masks = group.jobs.map((j) => this.#nextMask(j.seq));
    const steps = mx.tidy(() => {
      const logits = this.model.forward(input(), cache, { logits: "last", ropeLengths });
      // A row finished meanwhile (cancelled) has no sampler left: it samples nothing.
      return group.jobs.map((j, i) =>
        j.seq.finished
          ? null
          : rowStepFromSampled(j.seq.sampler.sample(mx.sliceAxis(logits, 0, i, i + 1), maskArray(masks[i] ?? null))),
      );
    });
    mx.asyncEval(...steps.flatMap((step) => (step ? rowStepArrays(step) : [])));
    this.#group = null;
    const keep: number[] = [];
    group.jobs.forEach((j, i) => {
      const s = j.seq;
      const step = steps[i] ?? null;
      if (s.finished || !step) {
        releaseRowStep(step);
        return;
      }
      keep.push(i);
      if (!j.recompute && this.#caches(s)) this.#store(s, cache, i, s.tokens.length);
      s.step = step;
      s.unread = true;
      s.inBatch = true;
      if (!j.recompute) {
        this.#emit({
          type: "started",
          id: s.request.id,
          promptTokens: s.request.prompt.length,
          cachedTokens: s.cachedTokens,
          queuedMs: performance.now() - s.enqueuedAt,
        });
      }
    });
    if (keep.length === 0) {
      cache.dispose();
      return;
    }
    // Padding every row shares goes now (a lone row then decodes without a mask).
    if (keep.length < n || Math.min(...keep.map((i) => cache.leftPadding[i] ?? 0)) > 0) cache.keepRows(keep);
    // Joining copies the batch anyway: drop its idle rows in the same go.
    this.#compact(true);
    for (const i of keep) this.#rows.push((group.jobs[i] as PrefillJob).seq);
    if (this.#batch) this.#batch.appendRows(cache);
    else this.#batch = cache;
  }

  /** Frees everything (the engine is shutting down). */
  dispose(): void {
    this.cancelAll();
    this.step();
    this.#batch?.dispose();
    this.#batch = null;
    this.prefixCache.clear();
  }
}

export { disposeState };

/** A sequence's KV demand: tokens in its cache once prefilled, and tokens it may still add. */
function demand(s: Sequence): KvDemand {
  const prompt = s.request.prompt.length;
  return { tokens: s.tokens.length, remaining: Math.max(0, prompt + s.request.maxTokens - s.tokens.length) };
}
