// Continuous batching. Every active sequence shares one batched forward pass
// per decode step, each with its own sampler and stop conditions. New requests
// are prefilled in bounded chunks between decode steps and then join the batch;
// finished or cancelled rows leave it at the next step. Admission is bounded by
// a maximum of concurrent sequences and a KV-memory budget; waiting requests
// sit in a bounded FIFO queue.
//
// This file holds the queue and runs an iteration. The decisions are the
// policy's (scheduler-policy.ts, token-policy.ts: plain data, no MLX, tested
// without a model); the device work is batch-step.ts (forward passes,
// sampling), with prefill-line.ts (admitted prompts and the group being
// prefilled), decode-batch.ts (the batch's rows and KV cache),
// scheduler-prefix.ts (prefix-cache copies) and scheduler-speculation.ts (a
// lone row's verify pass); a request becomes a sequence in
// scheduler-sequence.ts; what an out-of-memory failure does is
// scheduler-recovery.ts. About 515 lines: a sequence's lifecycle (queue,
// prefill, batch, preemption, failure, its events in order) reads in one
// place. One iteration (step):
//   1. drop cancelled sequences;
//   2. admit waiting requests to the prefill line;
//   3. decode: queue step n+1 for the whole batch (async_eval), then read step
//      n's tokens and emit them as one event; rows that finished leave (with
//      a growth allowance, rows the pool cannot hold are preempted first);
//   4. run one prefill chunk; a finished prefill joins the batch.
//
// Constrained decoding (response_format): a constrained row's next mask
// depends on the token just sampled, so while any such row runs, step n's
// tokens are read before step n+1 is built (no pipelining for that batch);
// without one, the path is unchanged.

import * as mx from "../mlx";
import type { LanguageModel } from "../models/types";
import { decodeStep, type RowStep, readRowStep, releaseRowStep } from "./batch-step";
import { DecodeBatch } from "./decode-batch";
import { cardFreeBytes, DeviceHeadroom } from "./device-headroom";
import { KV_STEP, KVCache } from "./kv-cache";
import { type KvPoolShape, projectedBytes } from "./kv-pool";
import { isDeviceLost, isOutOfMemory, MemoryPressure } from "./memory-pressure";
import { cacheShape } from "./one-sequence";
import { PrefixCache } from "./prefix-cache";
import { PrefillLine } from "./prefill-line";
import type { PrefixStore } from "./prefix-store";
import type { EngineEvent, EngineRequest, FinishReason, SchedulerStats, StepValues, TokenOut } from "./protocol";
import {
  checkSubmission,
  demand,
  dropCancelled,
  planAdmissions,
  planPreemption,
  regimeCrossings,
  type SchedulerOptions,
  type SequenceState,
  type TokenConstraint,
} from "./scheduler-policy";
import { PrefixKeeper } from "./scheduler-prefix";
import { type RecoveryHooks, recoverFromOutOfMemory } from "./scheduler-recovery";
import { type ConstraintFactory, newSequence, type Sequence } from "./scheduler-sequence";
import { speculateLoneRow } from "./scheduler-speculation";
import { emptySpeculationStats, type SpeculationStats } from "./speculation";
import { acceptToken, nextMask } from "./token-policy";

export type { ConstraintFactory, SchedulerOptions, TokenConstraint };

export class Scheduler {
  readonly model: LanguageModel;
  readonly options: SchedulerOptions;
  readonly prefixCache: PrefixCache;
  readonly #emit: (event: EngineEvent) => void;
  #waiting: Sequence[] = [];
  readonly #line: PrefillLine<Sequence>;
  readonly #batch = new DecodeBatch<Sequence>();
  #steps = 0;
  /** The error that lost the device (memory-pressure.ts, isDeviceLost): nothing more can run in this process. */
  deviceLost: string | null = null;
  #draftModel: LanguageModel | null = null;
  #tokensOut: TokenOut[] = [];
  #finishedOut: EngineEvent[] = [];
  /** Prompt-lookup verify passes so far (benchmarks). */
  readonly speculation: SpeculationStats = emptySpeculationStats();
  /** Rows preempted so far (SchedulerOptions.growthAllowance). */
  preemptions = 0;
  readonly #bytesPerToken: number;
  readonly #pool: KvPoolShape;
  readonly #constrain: ConstraintFactory | null;
  readonly #prefix: PrefixKeeper;
  /** The KV budget after out-of-memory failures (memory-pressure.ts). */
  readonly #pressure: MemoryPressure;
  /** The device's free memory, asked before a prefill chunk or a decode step's KV growth (device-headroom.ts). */
  readonly #headroom: DeviceHeadroom;

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
    this.#bytesPerToken = KVCache.bytesPerToken(cacheShape(model, options.kvBits));
    this.#pool = {
      budgetBytes: options.kvBudgetBytes,
      bytesPerToken: this.#bytesPerToken,
      numLayers: model.config.numLayers,
      growthStep: KV_STEP,
    };
    this.#pressure = new MemoryPressure(options.kvBudgetBytes);
    this.#headroom = new DeviceHeadroom(options.deviceFreeBytes ?? cardFreeBytes, mx.memory.cache);
    this.#prefix = new PrefixKeeper(this.prefixCache, options.kvBudgetBytes, this.#bytesPerToken, (joining) =>
      this.#reserved(joining),
    );
    this.#line = new PrefillLine(model, options, this.#prefix, {
      caches: (s) => this.#caches(s),
      nextMask: (s) => this.#nextMask(s),
      started: (s) => {
        s.started = true;
        this.#emit({
          type: "started",
          id: s.request.id,
          promptTokens: s.request.prompt.length,
          cachedTokens: s.cachedTokens,
          queuedMs: performance.now() - s.enqueuedAt,
        });
      },
      ensureRoom: (bytes, what) => this.#headroom.ensure(bytes, what),
    });
  }

  /** Keeps cached prefixes on disk too (src/engine/prefix-store.ts). */
  attachPrefixStore(store: PrefixStore | null): void {
    this.#prefix.attach(store);
  }

  /** Drafts with a second model where prompt lookup finds nothing (src/engine/draft-model.ts). */
  attachDraftModel(model: LanguageModel | null): void {
    this.#draftModel = model;
  }

  /**
   * Writes one cached prefix node that the disk lacks (quiet moments and
   * shutdown). Returns whether more remain.
   */
  persistStep(): boolean {
    return this.#prefix.persistStep();
  }

  /** KV bytes one token occupies (all layers, keys and values). */
  get bytesPerToken(): number {
    return this.#bytesPerToken;
  }

  /** Queues a request (true), or rejects it at once with a "rejected" event (too long, queue full). */
  submit(request: EngineRequest): boolean {
    const reject = (status: number, message: string, retryAfterSeconds?: number) => {
      this.#emit({ type: "rejected", id: request.id, status, message, retryAfterSeconds });
      return false;
    };
    const vocab = this.model.config.vocabSize;
    const verdict = checkSubmission(request, this.options, this.#pool, vocab, this.#waiting.length);
    if (!verdict.accept) return reject(verdict.status, verdict.message, verdict.retryAfterSeconds);
    const s = newSequence(this.model, this.options, request, verdict.maxTokens, this.#constrain);
    if ("status" in s) return reject(s.status, s.message);
    this.#waiting.push(s);
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
    return this.#waiting.length > 0 || !this.#line.empty || this.#batch.rows.length > 0;
  }

  /** A sequence runs, prefills or waits (finished rows idle in the batch do not count). */
  busy(): boolean {
    return this.#waiting.length > 0 || this.#holdingMemory();
  }

  /** A sequence decodes or prefills (finished rows idle in the batch do not count). */
  #holdingMemory(): boolean {
    return !this.#line.empty || this.#batch.rows.some((r) => r.finished === null);
  }

  /** KV bytes the batch's and the prefilling group's caches hold now. */
  #kvBytes(): number {
    return (this.#batch.cache?.nbytes ?? 0) + (this.#line.group?.cache.nbytes ?? 0);
  }

  *#all(): Iterable<Sequence> {
    yield* this.#waiting;
    yield* this.#line.sequences();
    yield* this.#batch.rows;
  }

  stats(): SchedulerStats {
    const prefilling = this.#line.sequences();
    return {
      running: this.#batch.rows.filter((r) => r.finished === null).length,
      prefilling: prefilling.length,
      waiting: this.#waiting.length,
      kvCacheBytes: this.#kvBytes(),
      kvReservedBytes: this.#reserved(),
      kvBudgetBytes: this.#pressure.budgetBytes,
      outOfMemory: this.#pressure.stats(),
      prefixCache: this.prefixCache.stats(),
      prefixDisk: this.#prefix.disk?.stats() ?? null,
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
    for (const s of dropCancelled(this.#waiting, this.#line.jobs, this.#line.groupSequences(), this.#batch.rows)) {
      this.#finish(s, "cancelled");
    }
    this.#batch.compact();
    this.#admit();
    if (this.#batch.rows.length > 0) this.#guard(() => this.#decode(), [...this.#batch.rows], true);
    const group = this.#line.formGroup();
    if (group) {
      const done = this.#guard(
        () => this.#line.runChunk(group, this.#batch.rows.length, this.#pressure.short),
        group.jobs.map((j) => j.seq),
        false,
      );
      if (done) this.#join(done);
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
   * Prefilled rows join the batch; joining copies it, so its idle rows leave
   * in the same go. A join that fails leaves the batch's cache half copied:
   * the batch goes, its rows and the joining ones with it.
   */
  #join(done: { rows: Sequence[]; cache: KVCache }): void {
    const join = () => {
      try {
        this.#batch.join(done.rows, done.cache);
      } catch (e) {
        done.cache.dispose();
        throw e;
      }
    };
    this.#guard(join, [...this.#batch.rows, ...done.rows], true);
  }

  /**
   * An MLX failure fails the sequences involved and leaves the engine serving.
   * A failed decode step leaves the batch cache in an unknown state: it goes.
   * Out of memory, they recompute instead, a bounded number of times, and
   * admission plans with less (memory-pressure.ts).
   */
  #guard<T>(work: () => T, involved: readonly Sequence[], dropBatch: boolean): T | null {
    try {
      return work();
    } catch (e) {
      const message = `engine error: ${(e as Error).message}`;
      const failed = new Set(involved);
      if (dropBatch) for (const s of this.#batch.rows) failed.add(s);
      if (!isOutOfMemory(message)) {
        // A lost device fails everything; the engine process then exits and is restarted (Engine.run).
        const lost = isDeviceLost(message);
        if (lost) {
          this.deviceLost = message;
          for (const s of this.#all()) failed.add(s);
          this.#waiting.length = 0;
        }
        for (const s of failed) this.#finish(s, "error", message);
        this.#line.fail(failed);
        if (dropBatch || lost) this.#batch.drop();
        return null;
      }
      recoverFromOutOfMemory(this.#recovery(dropBatch), failed, message);
      return null;
    }
  }

  /** What recovering from an out-of-memory failure does here (scheduler-recovery.ts). */
  #recovery(dropBatch: boolean): RecoveryHooks {
    return {
      prefixCache: this.prefixCache,
      pressure: this.#pressure,
      reserved: () => this.#reserved(),
      kvBytes: () => this.#kvBytes(),
      read: (s) => this.#read(s),
      finish: (s, reason, message) => this.#finish(s, reason, message),
      discard: (failed) => {
        this.#line.fail(failed);
        if (dropBatch) this.#batch.drop();
      },
      othersRunning: () => this.#holdingMemory(),
      requeue: (sequences) => this.#waiting.unshift(...sequences),
      unadmit: () => this.#line.unadmit(),
    };
  }

  /** Nothing left to run. MLX's buffer cache stays: the engine frees it after a quiet spell. */
  #idle(): void {
    this.#batch.free();
    this.#pressure.relax();
  }

  #finish(s: Sequence, reason: FinishReason, message?: string): void {
    if (s.finished) return;
    s.finished = reason;
    this.#finishedOut.push({ type: "finished", id: s.request.id, reason, completionTokens: s.generated, message });
    s.sampler.dispose();
    s.draft?.dispose();
    s.draft = null;
    const row = s.inBatch ? this.#batch.rows.indexOf(s) : -1;
    const cache = this.#batch.cache;
    if (row >= 0 && cache && (reason === "stop" || reason === "length") && this.#caches(s)) {
      // Its KV stays in the batch until compaction: copy what the prefix cache lacks now.
      const length = Math.min(s.tokens.length, cache.rowLengths()[row] ?? 0);
      this.#prefix.store(s.tokens, s.regime, cache, row, length);
    }
    // A batch row keeps its last step: its token still fills the row's input until compaction.
    if (row < 0) {
      releaseRowStep(s.step);
      s.step = null;
    }
    s.unread = false;
  }

  #admit(): void {
    const cacheLimits = planAdmissions(
      this.options,
      this.#admissionPool(),
      this.#batch.footprint(this.options.growthAllowance),
      this.#batch.rows.length,
      this.#line.sequences(),
      this.#waiting,
    );
    for (const limit of cacheLimits) {
      // Cached prefixes give way to the sequence (least recently used first).
      this.prefixCache.evictTo(limit);
      const seq = this.#waiting.shift() as Sequence;
      // A preempted sequence resumes as a recompute: from the prefix cache where it can, no second "started".
      this.#line.jobs.push({ seq, recompute: seq.resumes });
      seq.resumes = false;
    }
  }

  /** The pool as admission and preemption see it: the plan's budget, or less after running out of memory. */
  #admissionPool(): KvPoolShape {
    return { ...this.#pool, budgetBytes: this.#pressure.budgetBytes };
  }

  /** KV bytes the batch and the sequences prefilling (and `joining` ones) will hold at their largest. */
  #reserved(joining: readonly SequenceState[] = []): number {
    const allowance = this.options.growthAllowance;
    const pending = [...this.#line.sequences(), ...joining];
    return projectedBytes(
      this.#pool,
      this.#batch.footprint(allowance),
      pending.map((s) => demand(s, allowance)),
    );
  }

  /** Reads a sequence's unread step: emits its token or finishes it. */
  #read(s: Sequence): void {
    if (!s.step || !s.unread) return;
    s.unread = false;
    this.#accept(s, readRowStep(s.step));
  }

  /** Takes a row's next token: emits it, or finishes the row (stop token, constraint, length). */
  #accept(s: Sequence, v: StepValues): void {
    const outcome = acceptToken(s, v, this.options.contextLength);
    if (outcome.emit) this.#tokensOut.push({ id: s.request.id, ...v });
    if (outcome.finish) this.#finish(s, outcome.finish.reason, outcome.finish.message);
  }

  /** The constraint's mask for a row's next token (null: unconstrained, or the row just ended). */
  #nextMask(s: Sequence): Uint8Array | null {
    const decision = nextMask(s);
    if ("mask" in decision) return decision.mask;
    this.#finish(s, decision.finish, decision.message);
    return null;
  }

  #decode(): void {
    // Rows whose next token moves them into another RoPE regime leave the
    // batch to recompute their cache; reading them first needs a sync.
    const crossing = regimeCrossings(this.#batch.rows, (n) => this.model.ropeRegime(n));
    if (crossing.length > 0) {
      for (const s of this.#batch.rows) this.#read(s);
      const leaving = new Set(this.#batch.rows.filter((s) => s.finished !== null));
      for (const s of crossing) {
        if (s.finished) continue;
        leaving.add(s);
        s.regime = this.model.ropeRegime(s.tokens.length);
      }
      const moving = crossing.filter((s) => !s.finished);
      this.#batch.remove(leaving);
      for (const s of moving) {
        releaseRowStep(s.step);
        s.step = null;
        this.#line.jobs.unshift({ seq: s, recompute: true });
      }
    }
    const short = this.#batch.cache
      ? planPreemption(
          this.options,
          this.#admissionPool(),
          this.#batch.rows,
          this.#batch.cache.offset,
          this.#line.sequences(),
        )
      : [];
    if (short.length > 0) this.#preempt(short);
    const rows = this.#batch.rows;
    const batch = this.#batch.cache;
    // A lone row with no prefill pending may verify a draft instead (scheduler-speculation.ts).
    if (rows.length === 1 && batch && this.#line.empty) {
      const tokens = {
        read: (s: Sequence) => this.#read(s),
        accept: (s: Sequence, v: StepValues) => this.#accept(s, v),
      };
      const lone = rows[0] as Sequence;
      const drafting = {
        model: this.#draftModel,
        promptLookup: this.options.promptLookup !== false,
        step: this.#steps,
      };
      if (speculateLoneRow(this.model, this.options.contextLength, lone, batch, this.speculation, tokens, drafting)) {
        this.#batch.compact();
        return;
      }
    }
    if (rows.length > 0 && batch) {
      let masks: Array<Uint8Array | null> | null = null;
      if (rows.some((s) => s.constraint && s.finished === null)) {
        // The masks need the tokens of the step in flight: read it now (a sync).
        for (const s of rows) this.#read(s);
        masks = rows.map((s) => this.#nextMask(s));
        if (rows.every((s) => s.finished !== null)) {
          this.#batch.compact();
          return;
        }
      }
      // Every KV_STEP columns the step grows the batch's buffers: on a full card, refused before anything runs.
      if (batch.offset + 1 > batch.capacity)
        this.#headroom.ensure(batch.growthBytes(1), "the decode batch's KV growth");
      const next = decodeStep(this.model, batch, rows, masks);
      for (const s of rows) this.#read(s);
      rows.forEach((s, i) => {
        releaseRowStep(s.step);
        s.step = next[i] as RowStep;
        s.unread = s.finished === null;
      });
      this.#batch.compact();
    }
  }

  /**
   * Takes rows out of the batch to resume later: each row's KV (prompt and
   * tokens so far) goes to the prefix cache, and the sequence goes back to the
   * front of the queue, where it resumes through a prefix hit (or recomputes
   * its cache when the hit was evicted meanwhile).
   */
  #preempt(preempted: readonly Sequence[]): void {
    // Their tokens in flight first: a row may finish on it (then it just leaves).
    for (const s of preempted) this.#read(s);
    const cache = this.#batch.cache as KVCache;
    const leaving = new Set(this.#batch.rows.filter((s) => s.finished !== null));
    const resuming = preempted.filter((s) => s.finished === null);
    for (const s of resuming) {
      const row = this.#batch.rows.indexOf(s);
      const length = Math.min(s.tokens.length, cache.rowLengths()[row] ?? 0);
      // Stored before the copy that removes the row; the pool's trim after it (the row's reservation gone).
      if (this.#caches(s)) this.prefixCache.store(s.tokens, s.regime, length, (a, b) => cache.rowState(row, a, b));
      leaving.add(s);
    }
    this.#batch.remove(leaving);
    this.#prefix.trim();
    for (const s of [...resuming].reverse()) {
      releaseRowStep(s.step);
      s.step = null;
      s.unread = false;
      s.resumes = true;
      this.#waiting.unshift(s);
    }
    this.preemptions += resuming.length;
  }

  /** Whether a sequence takes part in the prefix cache. */
  #caches(s: Sequence): boolean {
    return this.prefixCache.enabled && !s.request.internal;
  }

  /** Frees everything (the engine is shutting down). */
  dispose(): void {
    this.cancelAll();
    this.step();
    this.#batch.free();
    this.prefixCache.clear();
  }
}
