// The scheduler's device work: forward passes over the decode batch and over
// a prefill group, sampling every row of a step in one graph, and the lazy
// per-row results a step leaves for the host to read. What runs when is the
// policy's (scheduler-policy.ts); the scheduler (scheduler.ts) calls these.

import type { MxArray } from "../mlx";
import * as mx from "../mlx";
import type { LanguageModel } from "../models/types";
import { type CacheShape, KVCache, type KVState, sliceState } from "./kv-cache";
import type { FinishReason } from "./protocol";
import type { GroupPlan, PrefillJob, SequenceState } from "./scheduler-policy";
import type { SampledStep, SequenceSampler } from "./sampling";

/**
 * One decode step's results for a whole batch, as lazy arrays: token ids
 * (int32 [n]) and, when any row asked, their log-probabilities. Read from the
 * device once for all rows.
 */
export class BatchStep {
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

/** A row's part of a batch step, plus its top alternatives when it asked for them. */
export interface RowStep {
  batch: BatchStep;
  index: number;
  topIds: MxArray | null;
  topLogprobs: MxArray | null;
}

/** What sampling needs of a row: its sampler, and whether it still runs (a finished row's output is ignored). */
export interface SamplingRow {
  sampler: SequenceSampler;
  finished: FinishReason | null;
}

/** A decode batch row: its last sampled step is the next input. */
export interface DecodingRow extends SamplingRow {
  step: RowStep | null;
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

/** A row step holding one known token (what a speculative verify pass leaves as the next input). */
export function knownRowStep(token: number): RowStep {
  return {
    batch: mx.tidy(() => new BatchStep(mx.int32([token]), null)).retain(),
    index: 0,
    topIds: null,
    topLogprobs: null,
  };
}

export function releaseRowStep(step: RowStep | null): void {
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

/**
 * Samples every row of logits [B, 1, V] in one graph: one argmax for the
 * rows that decode greedily without penalties (their logit biases stacked
 * into one [B, V] addition), their own sampler for the others, and
 * log-probabilities for all rows at once when any asked.
 */
function sampleBatch(rows: readonly SamplingRow[], logits: MxArray, masks: Array<Uint8Array | null> | null): RowStep[] {
  const B = rows.length;
  const flat = mx.reshape(logits, [B, -1]);
  let greedyInput = flat;
  // Finished rows waiting for compaction take the plain greedy path; their output is ignored.
  const live = (s: SamplingRow) => s.finished === null;
  // A constrained row samples on its own, its mask applied.
  const masked = (i: number) => (live(rows[i] as SamplingRow) ? (masks?.[i] ?? null) : null);
  const own = (s: SamplingRow, i: number) => live(s) && (!s.sampler.batchableGreedy || masked(i) !== null);
  const bias = (s: SamplingRow, i: number) => (live(s) && !own(s, i) ? s.sampler.biasVector : null);
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

/**
 * Queues one decode step for the whole batch (async_eval): each row's last
 * step is its input. Returns the new steps, row by row, not yet read.
 */
export function decodeStep(
  model: LanguageModel,
  batch: KVCache,
  rows: readonly DecodingRow[],
  masks: Array<Uint8Array | null> | null,
): RowStep[] {
  const previous = rows.map((s) => s.step as RowStep);
  batch.growFor(1);
  const next = mx.tidy(() => sampleBatch(rows, model.forward(nextInput(previous), batch, { logits: "last" }), masks));
  mx.asyncEval(...next.flatMap(rowStepArrays));
  return next;
}

/** Reads a row step from the device: its token, log-probability and top alternatives. */
export function readRowStep(step: RowStep): {
  token: number;
  logprob: number | null;
  top: Array<{ token: number; logprob: number }> | null;
} {
  const { token, logprob } = step.batch.value(step.index);
  let top: Array<{ token: number; logprob: number }> | null = null;
  if (step.topIds && step.topLogprobs) {
    const ids = step.topIds.read() as Int32Array;
    const lps = step.topLogprobs.read() as Float32Array;
    top = Array.from(ids, (id, i) => ({ token: id, logprob: lps[i] as number }));
  }
  return { token, logprob, top };
}

/**
 * Prompts prefilled together: left-padded to one width so they share each
 * forward pass (one larger matrix product instead of several small ones),
 * and join the decode batch together when done.
 */
export interface PrefillGroup<S extends SequenceState & SamplingRow> {
  jobs: PrefillJob<S>[];
  cache: KVCache;
  /** Row-major [jobs, width] token ids, each row left-padded with zeros. */
  tokens: Int32Array;
  width: number;
  /** Columns already in the cache (for a prefix-cache hit: the cached tokens). */
  done: number;
}

/**
 * PENSIEVE_PREFILL_RESERVE=0: prefill caches grow chunk by chunk instead (a measurement switch, for
 * `bench/gpu/device.sh reserve-ab`). On an H100 the scheduler's one allocation is not slower: 120,000 tokens over
 * HTTP in 10.6-12.4 s at an MLX peak of 55.96 GiB, against 12.5 s at 70.17 GiB without it
 * (bench/results/gpu-h100-2026-12-07e; it was `pensieve generate`'s reserve that ran 3.2x slower, 2026-12-07d).
 */
const RESERVE_PREFILL = process.env.PENSIEVE_PREFILL_RESERVE !== "0";

/** Builds the cache and token matrix of a planned group (`hit`: the cached prefix's states, for a group alone). */
export function buildPrefillGroup<S extends SequenceState & SamplingRow>(
  shape: CacheShape,
  jobs: PrefillJob<S>[],
  plan: GroupPlan,
  hit: { state: KVState; tokens: number }[] | null,
): PrefillGroup<S> {
  if (plan.alone) {
    const s = (jobs[0] as PrefillJob<S>).seq;
    // Unpadded: a causal mask keeps attention fused (no score matrix over a long context).
    const cache = hit
      ? mx.tidy(() =>
          KVCache.fromStates(
            shape,
            hit.map((g) => sliceState(g.state, 0, g.tokens)),
          ),
        )
      : KVCache.padded(shape, [0]);
    // One allocation for the whole prompt (growing chunk by chunk copies the cache each time).
    if (RESERVE_PREFILL) cache.reserve(s.tokens.length + 1);
    return { jobs, cache, tokens: Int32Array.from(s.tokens), width: plan.width, done: plan.done };
  }
  const width = plan.width;
  const tokens = new Int32Array(jobs.length * width);
  jobs.forEach((j, i) => {
    tokens.set(j.seq.tokens, i * width + (plan.padding[i] as number));
  });
  // As alone: one allocation for the group's whole width (growing chunk by chunk copies every layer in one graph).
  const cache = KVCache.padded(shape, plan.padding);
  if (RESERVE_PREFILL) cache.reserve(width + 1);
  return { jobs, cache, tokens, width, done: 0 };
}

/**
 * Runs the group's prefill up to column `end`. Before the last column it only
 * fills the cache; the last pass samples each live row's first token
 * (queued, not read) — a row finished meanwhile (cancelled) samples nothing.
 */
export function prefillChunk<S extends SequenceState & SamplingRow>(
  model: LanguageModel,
  group: PrefillGroup<S>,
  end: number,
  masks: Array<Uint8Array | null>,
): Array<RowStep | null> | null {
  const n = group.jobs.length;
  const part = new Int32Array(n * (end - group.done));
  for (let i = 0; i < n; i++) {
    part.set(group.tokens.subarray(i * group.width + group.done, i * group.width + end), i * (end - group.done));
  }
  const cache = group.cache;
  const ropeLengths = group.jobs.map((j) => j.seq.tokens.length);
  const input = () => mx.fromData(part, [n, end - group.done], mx.Dtype.int32);
  if (end < group.width) {
    mx.tidy(() => {
      model.forward(input(), cache, { logits: "none", ropeLengths });
      mx.evaluate(...cache.arrays());
    });
    group.done = end;
    return null;
  }
  const steps = mx.tidy(() => {
    const logits = model.forward(input(), cache, { logits: "last", ropeLengths });
    return group.jobs.map((j, i) =>
      j.seq.finished
        ? null
        : rowStepFromSampled(j.seq.sampler.sample(mx.sliceAxis(logits, 0, i, i + 1), maskArray(masks[i] ?? null))),
    );
  });
  mx.asyncEval(...steps.flatMap((step) => (step ? rowStepArrays(step) : [])));
  return steps;
}
