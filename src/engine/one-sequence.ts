// Token generation for one sequence, no batching: chunked prefill, then decode
// steps pipelined with async_eval (step n+1 is queued before step n's token is
// read). Used by `pensieve generate`, setup's smoke test and the benchmarks;
// the server's path is the scheduler (scheduler.ts), which takes cacheFor()
// and defaultPrefillChunk() from here. The text side lives in src/text.

import type { MxArray } from "../mlx";
import * as mx from "../mlx";
import type { LanguageModel } from "../models/types";
import { effectiveKvBits, type KvBits, kvGroupSize } from "./attention-plan";
import { type CacheShape, KVCache } from "./kv-cache";
import type { FinishReason, SamplingParams, StepValues } from "./protocol";
import { readStep, type SampledStep, SequenceSampler, stepArrays } from "./sampling";

/** Prefill tokens per forward pass: the GPU keeps its matrix units busier with larger chunks. */
export function defaultPrefillChunk(): number {
  return mx.getDevice() === "gpu" ? 2048 : 512;
}

/**
 * The cache layout for a model: its dtype, and float (kvBits 0) or quantized KV.
 * A model whose head_dim no quantization group divides keeps float KV.
 */
export function cacheShape(model: LanguageModel, requested: KvBits = 0): CacheShape {
  const c = model.config;
  const kvBits = effectiveKvBits(requested, c.headDim);
  return {
    numLayers: c.numLayers,
    numKvHeads: c.numKvHeads,
    headDim: c.headDim,
    dtype: model.dtype,
    kvBits,
    kvGroupSize: kvBits === 0 ? 0 : (kvGroupSize(c.headDim) as number),
  };
}

export function cacheFor(model: LanguageModel, batchSize = 1, kvBits: KvBits = 0): KVCache {
  return new KVCache(cacheShape(model, kvBits), batchSize);
}

/**
 * Runs `tokens` through the model into `cache` (one row) in chunks, and
 * returns the last position's logits [1, 1, V], lazily. `ropeLength` is the
 * sequence length that selects the RoPE regime (the whole prompt).
 */
export function prefill(
  model: LanguageModel,
  cache: KVCache,
  tokens: readonly number[],
  options: { chunk?: number; ropeLength?: number } = {},
): MxArray {
  if (tokens.length === 0) throw new Error("prefill needs at least one token");
  const chunk = Math.max(1, options.chunk ?? defaultPrefillChunk());
  const ropeLength = options.ropeLength ?? cache.rowLengths()[0]! + tokens.length;
  // No reserve() for the whole prompt here: on an H100 a 120,000-token prompt took 54.9 s to its first token with
  // one allocation against 17.1 s grown chunk by chunk (MLX peak 51.0 against 64.6 GB; mlx-lm 16.7 s, 64.4 GB;
  // bench/results/gpu-h100-2026-12-07d). Why the one allocation is slower is not known yet.
  let start = 0;
  while (tokens.length - start > chunk) {
    const part = tokens.slice(start, start + chunk);
    mx.tidy(() => {
      model.forward(mx.int32(part, [1, part.length]), cache, { logits: "none", ropeLengths: [ropeLength] });
      mx.evaluate(...cache.arrays());
    });
    start += chunk;
  }
  const last = tokens.slice(start);
  return model.forward(mx.int32(last, [1, last.length]), cache, { logits: "last", ropeLengths: [ropeLength] });
}

export interface GenerateOptions {
  maxTokens: number;
  sampling: SamplingParams;
  /** Generation ends (without yielding) on these ids. */
  stopTokenIds?: Iterable<number>;
  prefillChunk?: number;
  /** Checked between steps: an aborted signal ends generation with "cancelled". */
  signal?: AbortSignal;
  /** KV cache storage: 0 (default) float, 8 or 4 group-quantized bits. */
  kvBits?: KvBits;
}

export interface GenerationResult {
  finishReason: FinishReason;
  promptTokens: number;
  completionTokens: number;
  /** Times in ms: prefill (to the first token) and the whole run. */
  prefillMs: number;
  totalMs: number;
}

function keepStep(step: SampledStep): SampledStep {
  for (const a of stepArrays(step)) mx.keep(a);
  return step;
}

function disposeStep(step: SampledStep | null): void {
  if (step) for (const a of stepArrays(step)) a.dispose();
}

/**
 * Yields one StepValues per generated token. Returns why it stopped.
 * Phi-3 LongRoPE: when the sequence grows past the original context, the KV
 * cache is recomputed once with the long factors, so every step equals an
 * uncached forward pass of the whole sequence.
 */
export function* generateTokens(
  model: LanguageModel,
  promptTokens: readonly number[],
  options: GenerateOptions,
): Generator<StepValues, GenerationResult> {
  const started = performance.now();
  const stops = new Set(options.stopTokenIds ?? []);
  const cache = cacheFor(model, 1, options.kvBits);
  const sampler = new SequenceSampler(options.sampling, model.config.vocabSize, promptTokens);
  const tokens = [...promptTokens];
  let regime = model.ropeRegime(tokens.length);
  let step: SampledStep | null = null;
  let next: SampledStep | null = null;
  let prefillMs = 0;
  let generated = 0;
  const result = (finishReason: FinishReason): GenerationResult => ({
    finishReason,
    promptTokens: promptTokens.length,
    completionTokens: generated,
    prefillMs,
    totalMs: performance.now() - started,
  });
  try {
    if (options.maxTokens <= 0) return result("length");
    step = keepStep(mx.tidy(() => sampler.sample(prefill(model, cache, tokens, { chunk: options.prefillChunk }))));
    mx.asyncEval(...stepArrays(step));
    while (step) {
      if (options.signal?.aborted) return result("cancelled");
      const current: SampledStep = step;
      const last = generated + 1 >= options.maxTokens;
      let values: StepValues | null = null;
      let recompute = false;
      if (!last && model.ropeRegime(tokens.length + 1) !== regime) {
        // Crossing into another RoPE regime: the whole cache is recomputed with it, once this token is out.
        values = readStep(current);
        if (stops.has(values.token)) return result("stop");
        tokens.push(values.token);
        regime = model.ropeRegime(tokens.length);
        recompute = true;
      } else if (!last) {
        next = keepStep(
          mx.tidy(() => sampler.sample(model.forward(mx.reshape(current.token, [1, 1]), cache, { logits: "last" }))),
        );
        mx.asyncEval(...stepArrays(next));
      }
      if (!values) {
        values = readStep(current);
        if (stops.has(values.token)) return result("stop");
        tokens.push(values.token);
      }
      if (generated === 0) prefillMs = performance.now() - started;
      disposeStep(current);
      step = next;
      next = null;
      generated++;
      yield values;
      if (recompute) {
        // After the yield: a prompt that ends at the regime's edge (Phi-3's 4,096) gets its first token without
        // waiting for the recompute's chunks, which only the tokens after it need.
        cache.reset();
        step = keepStep(mx.tidy(() => sampler.sample(prefill(model, cache, tokens, { chunk: options.prefillChunk }))));
        mx.asyncEval(...stepArrays(step));
      }
    }
    return result("length");
  } finally {
    disposeStep(step);
    disposeStep(next);
    cache.dispose();
    sampler.dispose();
  }
}
