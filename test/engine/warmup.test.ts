// Padded prompt widths and the idle warm-up (the GPU's defaults), run here on
// the CPU with a tiny model: warm-ups stay invisible to clients and out of the
// prefix cache, and a real request afterwards gives plain generation's tokens.
import { expect, test } from "bun:test";
import { Engine, warmupLengths } from "../../src/engine/engine";
import { verifyWarmupLengths, warmDecodeRows } from "../../src/engine/warmup";
import * as mx from "../../src/mlx";
import { fusedRowLimit, fusedRowsBuilt, fusedRowsNow, holdFusedRowsUntilBuilt } from "../../src/models/gpu-fused";
import { loadModel } from "../../src/models/loader";
import { generateTokens } from "../../src/engine/one-sequence";
import type { EngineEvent } from "../../src/engine/protocol";
import { samplingParams } from "../../src/engine/protocol";
import { tinyModel } from "../support/models";
import { promptIds } from "../support/reference";

test("warm-up lengths: one per padded width up to a prefill chunk, one short of it", () => {
  const base = { maxConcurrent: 4, queueSize: 4, kvBudgetBytes: 1 << 30, contextLength: 512, prefixCacheBytes: 0 };
  expect(warmupLengths({ ...base, prefillChunk: 64, interleavedPrefillChunk: 16, prefillWidthMultiple: 16 })).toEqual([
    15, 31, 47, 63,
  ]);
  expect(warmupLengths({ ...base, prefillChunk: 64, interleavedPrefillChunk: 16 })).toEqual([]);
  expect(
    warmupLengths({
      ...base,
      contextLength: 40,
      prefillChunk: 64,
      interleavedPrefillChunk: 16,
      prefillWidthMultiple: 16,
    }),
  ).toEqual([15, 31]);
});

test("the engine warms each width while idle; clients see none of it, and outputs are unchanged", async () => {
  const events: EngineEvent[] = [];
  const engine = new Engine(
    {
      model: tinyModel("tiny-llama"),
      device: "cpu",
      maxContext: 512,
      prefillChunk: 64,
      prefillWidthMultiple: 16,
      prefixCacheBytes: 64 << 20,
      cacheReleaseIdleMs: 50,
    },
    (e) => events.push(e),
  );
  const running = engine.run();
  try {
    expect(engine.warmupsLeft).toBe(4);
    const deadline = Date.now() + 60_000;
    while ((engine.warmupsLeft > 0 || engine.scheduler.hasWork()) && Date.now() < deadline) await Bun.sleep(20);
    expect(engine.warmupsLeft).toBe(0);
    expect(events).toEqual([]);
    expect(engine.scheduler.prefixCache.stats().entries).toBe(0);

    const prompt = promptIds(21, 3);
    const expected = [...generateTokens(engine.loaded.model, prompt, { maxTokens: 6, sampling: samplingParams() })].map(
      (v) => v.token,
    );
    const done = new Promise<void>((resolve) => {
      const check = setInterval(() => {
        if (events.some((e) => e.type === "finished")) {
          clearInterval(check);
          resolve();
        }
      }, 10);
    });
    engine.submit({ id: "real", prompt, maxTokens: 6, sampling: samplingParams(), stopTokenIds: [] });
    await done;
    const tokens = events.flatMap((e) => (e.type === "tokens" ? e.items.map((t) => t.token) : []));
    expect(tokens).toEqual(expected);
    expect(events.every((e) => e.type === "tokens" || e.id === "real")).toBe(true);
  } finally {
    engine.stop();
    await running;
  }
});

test("verify passes warmed on a GPU with prompt lookup: every length 2..the fused path's, none without it", () => {
  expect(verifyWarmupLengths(4)).toEqual([2, 3, 4]);
  expect(verifyWarmupLengths(1)).toEqual([]);
  expect(verifyWarmupLengths(0)).toEqual([]);
});

test("a batch size's warm-up runs two decode steps on a throwaway cache, lets that size through and leaves nothing", () => {
  const { model } = loadModel(tinyModel("tiny-llama"));
  try {
    holdFusedRowsUntilBuilt();
    expect(fusedRowsNow()).toBe(1);
    warmDecodeRows(model, 0, 2);
    expect(fusedRowsNow()).toBe(Math.min(2, fusedRowLimit()));
    warmDecodeRows(model, 0, 3); // builds the graph once so that the handle count below is steady
    const handles = mx.liveHandleCount();
    const active = mx.memory.active();
    warmDecodeRows(model, 0, 3);
    expect(fusedRowsNow()).toBe(Math.min(3, fusedRowLimit()));
    expect(mx.liveHandleCount()).toBe(handles);
    expect(mx.memory.active()).toBe(active);
    // In order only: with 3 rows not built (say its warm-up failed), 4 rows stay held.
    fusedRowsBuilt(2);
    warmDecodeRows(model, 0, 4);
    expect(fusedRowsNow()).toBe(2);
  } finally {
    fusedRowsBuilt(4);
    model.dispose();
  }
});
