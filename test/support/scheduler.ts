// Scheduler settings for tests on tiny models: small chunks, so that prefill
// is chunked and interleaved with decode within a few dozen tokens.
// PENSIEVE_TEST_KV_BITS=8 (or 4) runs the scheduler tests over a quantized KV cache.
import { isKvBits, type KvBits } from "../../src/engine/attention-plan";
import { generateTokens } from "../../src/engine/one-sequence";
import { type EngineEvent, type EngineRequest, type SamplingParams, samplingParams } from "../../src/engine/protocol";
import { Scheduler, type SchedulerOptions } from "../../src/engine/scheduler";
import type { LanguageModel } from "../../src/models/types";

function testKvBits(): KvBits {
  const text = process.env.PENSIEVE_TEST_KV_BITS;
  const n = text ? Number(text) : 0;
  if (!isKvBits(n)) throw new Error(`PENSIEVE_TEST_KV_BITS must be 0, 4 or 8 (got ${text})`);
  return n;
}

/** KV storage the scheduler tests use (float unless PENSIEVE_TEST_KV_BITS says otherwise). */
export const TEST_KV_BITS = testKvBits();

export const TEST_SCHEDULER_OPTIONS: SchedulerOptions = {
  maxConcurrent: 8,
  queueSize: 16,
  kvBudgetBytes: 1 << 30,
  contextLength: 2048,
  prefillChunk: 64,
  interleavedPrefillChunk: 16,
  prefixCacheBytes: 0,
  maxPrefillBatch: 4,
  kvBits: TEST_KV_BITS,
};

export function single(
  model: LanguageModel,
  prompt: number[],
  maxTokens: number,
  sampling: SamplingParams,
  stops: number[] = [],
) {
  return singleWithLogprobs(model, prompt, maxTokens, sampling, stops).tokens;
}

export function singleWithLogprobs(
  model: LanguageModel,
  prompt: number[],
  maxTokens: number,
  sampling: SamplingParams,
  stops: number[] = [],
) {
  const tokens: number[] = [];
  const logprobs: number[] = [];
  for (const v of generateTokens(model, prompt, {
    maxTokens,
    sampling,
    stopTokenIds: stops,
    prefillChunk: 64,
    kvBits: TEST_KV_BITS,
  })) {
    tokens.push(v.token);
    logprobs.push(v.logprob ?? Number.NaN);
  }
  return { tokens, logprobs };
}

export interface Run {
  tokens: Map<string, number[]>;
  logprobs: Map<string, number[]>;
  events: EngineEvent[];
  scheduler: Scheduler;
}

/** Submits each request at its step number and runs until everything finished. */
export function runScheduled(
  model: LanguageModel,
  schedule: Array<{ at: number; request: EngineRequest }>,
  options = TEST_SCHEDULER_OPTIONS,
  setup?: (scheduler: Scheduler) => void,
): Run {
  const events: EngineEvent[] = [];
  const tokens = new Map<string, number[]>();
  const logprobs = new Map<string, number[]>();
  const scheduler = new Scheduler(model, options, (e) => {
    events.push(e);
    if (e.type !== "tokens") return;
    for (const t of e.items) {
      tokens.set(t.id, [...(tokens.get(t.id) ?? []), t.token]);
      logprobs.set(t.id, [...(logprobs.get(t.id) ?? []), t.logprob ?? Number.NaN]);
    }
  });
  setup?.(scheduler);
  let step = 0;
  const pending = [...schedule];
  while (pending.length > 0 || scheduler.hasWork()) {
    for (const p of pending.filter((p) => p.at <= step)) scheduler.submit(p.request);
    for (let i = pending.length - 1; i >= 0; i--) if ((pending[i] as { at: number }).at <= step) pending.splice(i, 1);
    scheduler.step();
    step++;
    if (step > 5000) throw new Error("scheduler did not finish");
  }
  return { tokens, logprobs, events, scheduler };
}

export function request(
  id: string,
  prompt: number[],
  maxTokens: number,
  sampling = samplingParams(),
  stops: number[] = [],
): EngineRequest {
  return { id, prompt, maxTokens, sampling, stopTokenIds: stops };
}
