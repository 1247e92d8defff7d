// Admission by current need (SchedulerOptions.growthAllowance): with a pool
// that holds two sequences at their whole max_tokens, three run at once; as
// they grow past it the newest is preempted (its KV kept in the prefix cache),
// requeued at the front, and resumed through a prefix hit. Greedy tokens stay
// exactly those of each request alone and those of the run that reserves
// whole max_tokens (and never preempts).
import { describe, expect, test } from "bun:test";
import { KV_STEP, KVCache } from "../../src/engine/kv-cache";
import { cacheShape } from "../../src/engine/one-sequence";
import type { EngineEvent } from "../../src/engine/protocol";
import { samplingParams } from "../../src/engine/protocol";
import { loadModel } from "../../src/models/loader";
import { tinyModel } from "../support/models";
import { promptIds } from "../support/reference";
import { request, runScheduled, single, TEST_KV_BITS, TEST_SCHEDULER_OPTIONS } from "../support/scheduler";

describe("preemption through the prefix cache (tiny-llama)", () => {
  const { model } = loadModel(tinyModel("tiny-llama"));
  const bytesPerToken = KVCache.bytesPerToken(cacheShape(model, TEST_KV_BITS));
  const layers = model.config.numLayers;
  // Prompt 40 + 300 tokens: 2 × KV_STEP columns each at its longest. The pool holds 2.9 such rows: two at
  // whole max_tokens, and room beside them for the preempted row's KV in the prefix cache.
  const perRow = 2 * KV_STEP * bytesPerToken * (1 + 1 / layers);
  const options = {
    ...TEST_SCHEDULER_OPTIONS,
    kvBudgetBytes: Math.floor(2.9 * perRow),
    prefixCacheBytes: null,
  };
  const greedy = samplingParams();
  const prompts = [promptIds(40, 61), promptIds(40, 62), promptIds(40, 63)];
  const maxTokens = 300;
  const schedule = prompts.map((p, i) => ({ at: i, request: request(`r${i}`, p, maxTokens, greedy) }));
  const mostRunning = (events: EngineEvent[]) => {
    let open = 0;
    let most = 0;
    for (const e of events) {
      if (e.type === "started") most = Math.max(most, ++open);
      else if (e.type === "finished") open--;
    }
    return most;
  };

  test("three run where two fit at whole max_tokens; the preempted one resumes with the same greedy tokens", () => {
    const expected = prompts.map((p) => single(model, p, maxTokens, greedy));
    const reserving = runScheduled(model, schedule, options);
    const growing = runScheduled(model, schedule, { ...options, growthAllowance: 32 });
    for (const [i] of prompts.entries()) {
      expect(reserving.tokens.get(`r${i}`)).toEqual(expected[i] as number[]);
      expect(growing.tokens.get(`r${i}`)).toEqual(expected[i] as number[]);
    }
    // Reserving whole max_tokens: two at once, never preempted.
    expect(mostRunning(reserving.events)).toBe(2);
    expect(reserving.scheduler.preemptions).toBe(0);
    // By current need: all three started together, then the pool ran short.
    expect(mostRunning(growing.events)).toBe(3);
    expect(growing.scheduler.preemptions).toBeGreaterThanOrEqual(1);
    // One "started" and one "finished" per request, the preempted one included.
    for (const run of [reserving, growing]) {
      expect(
        run.events
          .filter((e) => e.type === "started")
          .map((e) => (e as { id: string }).id)
          .sort(),
      ).toEqual(["r0", "r1", "r2"]);
      const finished = run.events.filter((e) => e.type === "finished") as Extract<EngineEvent, { type: "finished" }>[];
      expect(finished.map((e) => [e.id, e.reason, e.completionTokens]).sort()).toEqual(
        prompts.map((_, i) => [`r${i}`, "length", maxTokens]),
      );
    }
    // It resumed from the prefix cache: a hit over its prompt and well over a hundred generated tokens.
    const stats = growing.scheduler.stats();
    expect(stats.prefixCache.hits).toBeGreaterThanOrEqual(1);
    expect(stats.prefixCache.reusedTokens).toBeGreaterThan(40 + 100);
    expect(stats.running + stats.prefilling + stats.waiting).toBe(0);
    reserving.scheduler.dispose();
    growing.scheduler.dispose();
  }, 300_000);

  test("without a prefix cache the preempted sequence recomputes its cache, with the same greedy tokens", () => {
    const expected = prompts.map((p) => single(model, p, maxTokens, greedy));
    const run = runScheduled(model, schedule, { ...options, prefixCacheBytes: 0, growthAllowance: 32 });
    for (const [i] of prompts.entries()) expect(run.tokens.get(`r${i}`)).toEqual(expected[i] as number[]);
    expect(run.scheduler.preemptions).toBeGreaterThanOrEqual(1);
    run.scheduler.dispose();
  }, 300_000);
});
