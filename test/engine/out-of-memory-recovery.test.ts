// Out of memory in the middle of a batch (src/engine/memory-pressure.ts): a
// real MLX allocation failure (the memory limit set just above what is in use,
// which the shim's allocator guard enforces on the CPU) fails a decode step of
// three rows, or a row's join to the batch part-way through the copy. They do
// not fail: they go back to the queue, recompute, and end with the greedy
// tokens they have without the failure, one "started" each.
// Admission plans with a lowered budget until the engine is idle again.
import { afterEach, describe, expect, test } from "bun:test";
import { KVCache } from "../../src/engine/kv-cache";
import { MemoryPressure, retriesAfterOutOfMemory } from "../../src/engine/memory-pressure";
import { cacheShape } from "../../src/engine/one-sequence";
import type { EngineEvent } from "../../src/engine/protocol";
import { samplingParams } from "../../src/engine/protocol";
import { Scheduler } from "../../src/engine/scheduler";
import * as mx from "../../src/mlx";
import { loadModel } from "../../src/models/loader";
import { tinyModel } from "../support/models";
import { promptIds } from "../support/reference";
import { request, runScheduled, single, TEST_KV_BITS, TEST_SCHEDULER_OPTIONS } from "../support/scheduler";

const greedy = samplingParams();
const maxTokens = 40;
const prompts = [promptIds(30, 71), promptIds(50, 72), promptIds(20, 73)];

let restoreLimit: number | null = null;
afterEach(() => {
  if (restoreLimit !== null) mx.memory.setLimit(restoreLimit);
  restoreLimit = null;
});

describe("running out of memory mid-batch (tiny-llama, CPU)", () => {
  const { model } = loadModel(tinyModel("tiny-llama"));
  // Greedy, and greedy with penalties (their lazy state must not keep the failed step's token).
  const penalized = samplingParams({ repetitionPenalty: 1.3, frequencyPenalty: 0.4, presencePenalty: 0.2 });
  const cases = [
    { prefixCacheBytes: 0, sampling: greedy, name: "prefix cache off" },
    { prefixCacheBytes: null, sampling: greedy, name: "prefix cache on" },
    { prefixCacheBytes: null, sampling: penalized, name: "prefix cache on, penalties" },
  ];

  for (const { prefixCacheBytes, sampling, name } of cases) {
    const schedule = prompts.map((p, i) => ({ at: 0, request: request(`r${i}`, p, maxTokens, sampling) }));
    test(`a failed decode step: the rows recompute and keep their greedy tokens (${name})`, () => {
      const options = { ...TEST_SCHEDULER_OPTIONS, prefixCacheBytes };
      const expected = runScheduled(model, schedule, options);
      expected.scheduler.dispose();

      const events: EngineEvent[] = [];
      const tokens = new Map<string, number[]>();
      const scheduler = new Scheduler(model, options, (e) => {
        events.push(e);
        if (e.type === "tokens") for (const t of e.items) tokens.set(t.id, [...(tokens.get(t.id) ?? []), t.token]);
      });
      for (const { request: r } of schedule) scheduler.submit(r);
      let steps = 0;
      while (scheduler.stats().running < prompts.length) {
        scheduler.step();
        if (++steps > 500) throw new Error("the three rows never ran together");
      }
      // A few steps together, then a step that cannot allocate.
      for (let i = 0; i < 3; i++) scheduler.step();
      const emittedBefore = [...tokens.values()].reduce((n, t) => n + t.length, 0);
      // The queued step finishes first (reads no longer wait for it), so its buffers are not counted as headroom.
      mx.synchronize();
      restoreLimit = mx.memory.setLimit(mx.memory.active() + 1024);
      scheduler.step();
      mx.memory.setLimit(restoreLimit);
      restoreLimit = null;
      const failed = scheduler.stats();
      console.log(`after the failure: ${JSON.stringify(failed.outOfMemory)}, kv budget ${failed.kvBudgetBytes}`);
      expect(failed.outOfMemory.failures).toBe(1);
      expect(failed.outOfMemory.requeued).toBe(prompts.length);
      expect(failed.running).toBe(0);
      expect(failed.waiting).toBe(prompts.length);
      expect(failed.kvBudgetBytes).toBeLessThan(options.kvBudgetBytes);
      expect(emittedBefore).toBeGreaterThan(prompts.length);

      while (scheduler.hasWork()) {
        scheduler.step();
        if (++steps > 5000) throw new Error("the scheduler did not finish");
      }
      for (const [i] of prompts.entries())
        expect(tokens.get(`r${i}`)).toEqual(expected.tokens.get(`r${i}`) as number[]);
      const started = events.filter((e) => e.type === "started").map((e) => (e as { id: string }).id);
      expect(started.sort()).toEqual(["r0", "r1", "r2"]);
      const finished = events.filter((e) => e.type === "finished") as Extract<EngineEvent, { type: "finished" }>[];
      expect(finished.map((e) => [e.id, e.reason, e.completionTokens]).sort()).toEqual(
        prompts.map((_, i) => [`r${i}`, "length", maxTokens]),
      );
      // Idle again: the plan's budget is back.
      const after = scheduler.stats();
      expect(after.kvBudgetBytes).toBe(options.kvBudgetBytes);
      expect(after.outOfMemory.loweredBudgetBytes).toBeNull();
      scheduler.dispose();
    }, 120_000);
  }

  test("a row joining the batch runs out of memory mid-copy: batch and row recompute, with their greedy tokens", () => {
    // Three long rows decode; a short prompt's prefill fits the limit, but joining copies the batch a layer
    // at a time (a merged layer is ~3 MB here) and the copy fails part-way, as on the H100 with 8 Claude
    // Code sessions. The limit is set just after the batch's cache grew, so the decode step beside it
    // allocates no new cache.
    const options = { ...TEST_SCHEDULER_OPTIONS, contextLength: 4096, prefillChunk: 512, interleavedPrefillChunk: 512 };
    const long = [promptIds(2400, 81), promptIds(2400, 82), promptIds(2400, 83)];
    const short = promptIds(10, 84);
    const rows = 200;
    const expected = [...long.map((p) => single(model, p, rows, greedy)), single(model, short, 20, greedy)];
    const bytesPerToken = KVCache.bytesPerToken(cacheShape(model, TEST_KV_BITS));
    const events: EngineEvent[] = [];
    const tokens = new Map<string, number[]>();
    const scheduler = new Scheduler(model, options, (e) => {
      events.push(e);
      if (e.type === "tokens") for (const t of e.items) tokens.set(t.id, [...(tokens.get(t.id) ?? []), t.token]);
    });
    for (const [i, p] of long.entries()) scheduler.submit(request(`long${i}`, p, rows, greedy));
    let steps = 0;
    const capacity = () => scheduler.stats().kvCacheBytes / (long.length * bytesPerToken);
    // All three decoding, then wait for a growth of the cache.
    while (scheduler.stats().running < long.length || scheduler.stats().prefilling > 0) {
      scheduler.step();
      if (++steps > 2000) throw new Error("the long rows never ran together");
    }
    const before = capacity();
    while (capacity() === before) {
      scheduler.step();
      if (++steps > 2000) throw new Error("the cache never grew");
    }
    scheduler.submit(request("short", short, 20, greedy));
    mx.synchronize(); // the queued step's buffers are not headroom
    restoreLimit = mx.memory.setLimit(mx.memory.active() + 2 * 2 ** 20);
    scheduler.step();
    mx.memory.setLimit(restoreLimit);
    restoreLimit = null;
    const failed = scheduler.stats();
    console.log(`join out of memory: ${JSON.stringify(failed.outOfMemory)}; waiting ${failed.waiting}`);
    expect(failed.outOfMemory).toMatchObject({ failures: 1, requeued: 4 });
    expect(failed.running + failed.prefilling).toBe(0);
    while (scheduler.hasWork()) {
      scheduler.step();
      if (++steps > 20000) throw new Error("the scheduler did not finish");
    }
    for (const [i] of long.entries()) expect(tokens.get(`long${i}`)).toEqual(expected[i] as number[]);
    expect(tokens.get("short")).toEqual(expected[3] as number[]);
    const started = events.filter((e) => e.type === "started").map((e) => (e as { id: string }).id);
    expect(started.sort()).toEqual(["long0", "long1", "long2", "short"]);
    expect(
      events.filter((e) => e.type === "finished").every((e) => (e as { reason: string }).reason === "length"),
    ).toBe(true);
    scheduler.dispose();
  }, 300_000);

  test("a sequence that keeps running out of memory fails with the error, and the engine serves the next", () => {
    const events: EngineEvent[] = [];
    const scheduler = new Scheduler(model, TEST_SCHEDULER_OPTIONS, (e) => events.push(e));
    scheduler.submit(request("doomed", prompts[0] as number[], maxTokens, greedy));
    restoreLimit = mx.memory.setLimit(mx.memory.active() + 1024);
    let steps = 0;
    while (scheduler.hasWork()) {
      scheduler.step();
      if (++steps > 50) throw new Error("the failing sequence never ended");
    }
    mx.memory.setLimit(restoreLimit);
    restoreLimit = null;
    const end = events.find((e) => e.type === "finished") as Extract<EngineEvent, { type: "finished" }>;
    expect(end.reason).toBe("error");
    expect(end.message).toMatch(/out of memory/);
    // Alone: one retry after clearing MLX's cache, then the error.
    expect(scheduler.stats().outOfMemory).toMatchObject({ failures: 2, requeued: 1 });
    const next = runScheduled(model, [{ at: 0, request: request("next", prompts[1] as number[], 8, greedy) }]);
    expect(next.tokens.get("next")).toHaveLength(8);
    next.scheduler.dispose();
    scheduler.dispose();
  }, 120_000);
});

describe("the memory pressure policy (plain data)", () => {
  test("beside others the budget shrinks to a fraction of what the pool held, never grows on a failure, and comes back when idle", () => {
    const p = new MemoryPressure(1000);
    expect(p.budgetBytes).toBe(1000);
    p.failed(800, true);
    expect(p.budgetBytes).toBe(600);
    p.failed(2000, true);
    expect(p.budgetBytes).toBe(450);
    // Alone: counted, the budget unchanged.
    p.failed(100, false);
    expect(p.budgetBytes).toBe(450);
    expect(p.stats()).toEqual({ failures: 3, requeued: 0, loweredBudgetBytes: 450 });
    p.relax();
    expect(p.budgetBytes).toBe(1000);
  });

  test("two retries beside other sequences and one alone, counted apart", () => {
    expect([1, 2, 3].map((n) => retriesAfterOutOfMemory({ crowded: n, alone: 0 }, true))).toEqual([true, true, false]);
    expect([1, 2].map((n) => retriesAfterOutOfMemory({ crowded: 0, alone: n }, false))).toEqual([true, false]);
    // Two failures in a crowd leave the retry alone.
    expect(retriesAfterOutOfMemory({ crowded: 2, alone: 1 }, false)).toBe(true);
  });
});
