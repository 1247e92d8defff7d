// Issue 10's replay at a small scale: a first session fills the prefix cache,
// then 8 "second sessions" (same system prompt, different first messages) arrive
// at once. Each must start from the cached prefix, none may wait for another to
// finish (they decode together in one batch), and each gets its lone tokens.
// (The H200 run's 18-20 s for the 8 was the fused decode path's compiles per row
// count, not the scheduler: test/models/gpu-fused-rows.test.ts, test/gpu/fused.test.ts.)
import { expect, test } from "bun:test";
import type { EngineEvent } from "../../src/engine/protocol";
import { loadModel } from "../../src/models/loader";
import { tinyModel } from "../support/models";
import { promptIds } from "../support/reference";
import { request, runScheduled, single, TEST_SCHEDULER_OPTIONS } from "../support/scheduler";

test("8 concurrent sessions sharing a cached prefix start from it and decode together", () => {
  const { model } = loadModel(tinyModel("tiny-llama"));
  try {
    const options = { ...TEST_SCHEDULER_OPTIONS, prefixCacheBytes: null };
    const system = promptIds(160, 81);
    const first = [...system, ...promptIds(10, 82).slice(1)];
    const sessions = Array.from({ length: 8 }, (_, i) => [...system, ...promptIds(24 + i, 90 + i).slice(1)]);
    const maxTokens = 40;
    const schedule = [
      { at: 0, request: request("first", first, 4) },
      ...sessions.map((prompt, i) => ({ at: 40, request: request(`s${i}`, prompt, maxTokens) })),
    ];
    const run = runScheduled(model, schedule, options);

    const startedAt = new Map<string, number>();
    const finishedAt = new Map<string, number>();
    const cached = new Map<string, number>();
    let peakRows = 0;
    run.events.forEach((e: EngineEvent, at) => {
      if (e.type === "started") {
        startedAt.set(e.id, at);
        cached.set(e.id, e.cachedTokens);
      } else if (e.type === "finished") finishedAt.set(e.id, at);
      else if (e.type === "tokens") peakRows = Math.max(peakRows, e.items.length);
    });
    expect(finishedAt.get("first")).toBeLessThan(startedAt.get("s0") as number);
    const ids = sessions.map((_, i) => `s${i}`);
    const firstFinish = Math.min(...ids.map((id) => finishedAt.get(id) as number));
    for (const id of ids) {
      expect(cached.get(id)).toBeGreaterThanOrEqual(128); // the system prompt's whole blocks
      expect(startedAt.get(id)).toBeLessThan(firstFinish);
    }
    expect(peakRows).toBe(8);
    sessions.forEach((prompt, i) => {
      expect(run.tokens.get(`s${i}`)).toEqual(single(model, prompt, maxTokens, request("x", [], 0).sampling));
    });
    run.scheduler.dispose();
  } finally {
    model.dispose();
  }
}, 300_000);
