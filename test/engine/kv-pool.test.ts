// The KV pool: one budget for running sequences and cached prefixes. The
// arithmetic is plain data; the scheduler tests run a tiny model on the CPU
// with budgets small enough that eviction and queueing happen.
import { describe, expect, test } from "bun:test";
import {
  admit,
  automaticKvBits,
  CLAUDE_CODE_SESSION_TOKENS,
  concurrentFit,
  type KvPoolShape,
  loneBytes,
  projectedBytes,
} from "../../src/engine/kv-pool";
import type { EngineEvent } from "../../src/engine/protocol";
import { Scheduler } from "../../src/engine/scheduler";
import { loadModel } from "../../src/models/loader";
import { tinyModel } from "../support/models";
import { promptIds } from "../support/reference";
import { request, runScheduled, single, TEST_SCHEDULER_OPTIONS } from "../support/scheduler";

const shape: KvPoolShape = { budgetBytes: 1000 * 100, bytesPerToken: 100, numLayers: 4, growthStep: 16 };

describe("pool arithmetic", () => {
  test("a batch holds rows × (longest start + most remaining), rounded to the growth step, plus one layer while joining", () => {
    expect(projectedBytes(shape, null, [])).toBe(0);
    // 10 + 5 → 16 columns; one row: 1600 + 400.
    expect(loneBytes(shape, { tokens: 10, remaining: 5 })).toBe(2000);
    // Left padding: a short row joining a long one occupies the long one's width.
    const batch = { rows: 1, columns: 100, remaining: 10 };
    expect(projectedBytes(shape, batch, [{ tokens: 3, remaining: 2 }])).toBe(2 * 112 * 100 * 1.25);
  });

  test("cached prefixes never block admission; the verdict says how far to shrink them", () => {
    const v = admit(shape, null, [], { tokens: 400, remaining: 0 });
    expect(v).toEqual({ admit: true, cacheLimit: 100_000 - 400 * 100 * 1.25 });
    // Two rows of 400 fill the pool exactly; of 410 (416 columns) they do not.
    expect(admit(shape, { rows: 1, columns: 400, remaining: 0 }, [], { tokens: 400, remaining: 0 }).admit).toBe(true);
    expect(admit(shape, { rows: 1, columns: 410, remaining: 0 }, [], { tokens: 410, remaining: 0 }).admit).toBe(false);
    expect(concurrentFit(shape, 410)).toBe(1);
    expect(concurrentFit(shape, 100)).toBe(7);
  });

  test("automatic KV storage: 8-bit when the float pool holds fewer than two Claude Code sessions", () => {
    // Phi-3-mini at fp16: 384 KiB a token, 32 layers.
    const phi3 = (gib: number): KvPoolShape => ({
      budgetBytes: gib * 1024 ** 3,
      bytesPerToken: 384 * 1024,
      numLayers: 32,
      growthStep: 256,
    });
    expect(automaticKvBits(phi3(54), 131_072)).toBe(0); // the H100: 5 sessions at fp16
    expect(automaticKvBits(phi3(12), 131_072)).toBe(8); // a 16-24 GB Mac: one session at fp16
    expect(concurrentFit(phi3(12), CLAUDE_CODE_SESSION_TOKENS)).toBe(1);
    // With 8-bit (216 KiB a token) the same pool holds two.
    expect(concurrentFit({ ...phi3(12), bytesPerToken: 216 * 1024 }, CLAUDE_CODE_SESSION_TOKENS)).toBe(2);
  });
});

describe("the KV pool in the scheduler (tiny-llama-f16, float32 CPU)", () => {
  const { model } = loadModel(tinyModel("tiny-llama-f16"));
  const c = model.config;
  const bytesPerToken = c.numLayers * 2 * c.numKvHeads * c.headDim * 4;

  test("sessions that share a system prefix share its blocks, and each gets the same tokens as alone", () => {
    const system = promptIds(96, 41);
    const a = [...system, ...promptIds(20, 42).slice(1)];
    const b = [...system, ...promptIds(20, 43).slice(1)];
    const expectedB = single(model, b, 8, request("x", [], 0).sampling);
    const run = runScheduled(
      model,
      [
        { at: 0, request: request("a", a, 6) },
        { at: 40, request: request("b", b, 8) },
      ],
      { ...TEST_SCHEDULER_OPTIONS, prefixCacheBytes: null },
    );
    const started = run.events.find((e) => e.type === "started" && e.id === "b") as Extract<
      EngineEvent,
      { type: "started" }
    >;
    expect(started.cachedTokens).toBe(96);
    expect(run.tokens.get("b")).toEqual(expectedB);
    const stats = run.scheduler.stats().prefixCache;
    // a's prompt+output and b's prompt+output, the 96 shared tokens once.
    expect(stats.tokens).toBeLessThan(a.length + b.length + 14 - 96 + 16);
    expect(stats.tokens).toBeGreaterThanOrEqual(96 + 2 * 16);
    expect(stats.bytes).toBe(stats.tokens * bytesPerToken);
    run.scheduler.dispose();
  });

  test("a prompt that nearly fills the pool is copied into the prefix cache only as far as the pool has room", () => {
    // 300 prompt tokens + 150 to generate: 512 columns, +50% while joining (2 layers) = 768 of 800 tokens' bytes.
    // Before the fix, the group was counted nowhere between its last chunk and joining the batch, so all 300
    // tokens were copied (an H100 ran out of memory this way at 120K tokens).
    const budget = 800 * bytesPerToken;
    let cachedAtStart = -1;
    const scheduler = new Scheduler(
      model,
      { ...TEST_SCHEDULER_OPTIONS, prefixCacheBytes: null, kvBudgetBytes: budget },
      (e) => {
        if (e.type === "started") cachedAtStart = scheduler.stats().prefixCache.bytes;
      },
    );
    scheduler.submit(request("x", promptIds(300, 47), 150));
    for (let i = 0; i < 20 && cachedAtStart < 0; i++) scheduler.step();
    const reserved = scheduler.stats().kvReservedBytes;
    expect(cachedAtStart).toBeGreaterThanOrEqual(0);
    expect(cachedAtStart + reserved).toBeLessThanOrEqual(budget);
    scheduler.cancelAll();
    scheduler.step();
    scheduler.dispose();
  });

  test("a lone prompt too big to copy is kept, once it finishes, as views of its own buffers: a repeat finds it", () => {
    // 250 prompt tokens + 240 to generate: 512 columns, 768 while joining, so a 1000-token pool has room to copy
    // only 232 tokens at the end of its prefill. It is alone, so nothing is copied then (a partial copy would
    // raise the peak by the copy) and when it finishes its buffers become the cache entry, with no copy at all.
    const prompt = promptIds(250, 48);
    const tokens = new Map<string, number[]>();
    let cachedAtStart = -1;
    let again: Extract<EngineEvent, { type: "started" }> | null = null;
    const scheduler = new Scheduler(
      model,
      { ...TEST_SCHEDULER_OPTIONS, prefixCacheBytes: null, kvBudgetBytes: 1000 * bytesPerToken },
      (e) => {
        if (e.type === "started" && e.id === "first") cachedAtStart = scheduler.stats().prefixCache.bytes;
        if (e.type === "started" && e.id === "again") again = e;
        if (e.type === "tokens") for (const t of e.items) tokens.set(t.id, [...(tokens.get(t.id) ?? []), t.token]);
      },
    );
    scheduler.submit(request("first", prompt, 240));
    for (let i = 0; i < 2000 && scheduler.hasWork(); i++) scheduler.step();
    expect(cachedAtStart).toBe(0);
    const stats = scheduler.stats().prefixCache;
    expect(stats.tokens).toBeGreaterThanOrEqual(480);
    // Views share the row's buffers, so MLX holds no more than the row did.
    scheduler.submit(request("again", prompt, 4));
    for (let i = 0; i < 2000 && scheduler.hasWork(); i++) scheduler.step();
    expect((again as Extract<EngineEvent, { type: "started" }> | null)?.cachedTokens).toBe(240);
    expect(tokens.get("again")).toEqual((tokens.get("first") as number[]).slice(0, 4));
    scheduler.dispose();
  });

  test("a prefix larger than any cache budget of its own is kept: only the pool bounds it", () => {
    const prompt = promptIds(300, 44);
    const run = runScheduled(
      model,
      [
        { at: 0, request: request("first", prompt, 4) },
        { at: 30, request: request("again", prompt, 4) },
      ],
      { ...TEST_SCHEDULER_OPTIONS, prefixCacheBytes: null, kvBudgetBytes: 2000 * bytesPerToken },
    );
    const again = run.events.find((e) => e.type === "started" && e.id === "again") as Extract<
      EngineEvent,
      { type: "started" }
    >;
    expect(again.cachedTokens).toBe(288);
    expect(run.tokens.get("again")).toEqual(run.tokens.get("first") as number[]);
    run.scheduler.dispose();
  });

  test("a new sequence evicts cached prefixes (least recently used first) instead of waiting", () => {
    // Room for one 200-token sequence at a time (256 columns, +50% while joining: 2 layers), not for a cached one beside it.
    const budget = 500 * bytesPerToken;
    const p1 = promptIds(200, 45);
    const p2 = promptIds(200, 46);
    const run = runScheduled(
      model,
      [
        { at: 0, request: request("one", p1, 4) },
        { at: 40, request: request("two", p2, 4) },
        { at: 80, request: request("one-again", p1, 4) },
      ],
      { ...TEST_SCHEDULER_OPTIONS, prefixCacheBytes: null, kvBudgetBytes: budget, maxConcurrent: 1 },
    );
    const finished = run.events.filter((e) => e.type === "finished").map((e) => e.id);
    expect(finished).toEqual(["one", "two", "one-again"]);
    const again = run.events.find((e) => e.type === "started" && e.id === "one-again") as Extract<
      EngineEvent,
      { type: "started" }
    >;
    // "two" took the room, so "one" was evicted.
    expect(again.cachedTokens).toBe(0);
    expect(run.scheduler.stats().prefixCache.evictions).toBeGreaterThan(0);
    expect(run.scheduler.stats().prefixCache.bytes).toBeLessThanOrEqual(budget);
    run.scheduler.dispose();
  });

  test("requests that do not fit together queue, and all complete", () => {
    const budget = 500 * bytesPerToken;
    const schedule = [0, 1, 2, 3].map((i) => ({ at: 0, request: request(`q${i}`, promptIds(100, 50 + i), 6) }));
    const expected = schedule.map((s) => single(model, s.request.prompt, 6, s.request.sampling));
    const run = runScheduled(model, schedule, {
      ...TEST_SCHEDULER_OPTIONS,
      prefixCacheBytes: null,
      kvBudgetBytes: budget,
    });
    expect(run.events.filter((e) => e.type === "rejected")).toEqual([]);
    schedule.forEach((s, i) => {
      expect(run.tokens.get(s.request.id)).toEqual(expected[i] as number[]);
    });
    run.scheduler.dispose();
  });

  test("a request larger than the whole pool is refused before prefill", () => {
    const run = runScheduled(model, [{ at: 0, request: request("huge", promptIds(300, 60), 100) }], {
      ...TEST_SCHEDULER_OPTIONS,
      kvBudgetBytes: 500 * bytesPerToken,
    });
    const rejected = run.events.find((e) => e.type === "rejected") as Extract<EngineEvent, { type: "rejected" }>;
    expect(rejected.status).toBe(400);
    expect(rejected.message).toContain(
      "the request needs 400 tokens of KV cache, more than the memory budget allows (256)",
    );
    expect(run.events.some((e) => e.type === "started")).toBe(false);
  });
});
