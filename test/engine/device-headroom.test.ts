// A prefill chunk the device cannot hold is refused before it runs
// (src/engine/device-headroom.ts, issue 14): on a CUDA card the scheduler asks
// the card's free memory; here a smaller card stands in (deviceFreeBytes), so
// the policy runs on the CPU with a real model. The long prompt fails with an
// out-of-memory error and nothing of it evaluated (after its first refusal,
// admission holds it until the decoding stream is done, then it is refused
// alone); the stream goes on with the tokens it has alone; once the memory is back, the same
// prompt is served. The GPU run of the same story is
// test/gpu/out-of-memory.test.ts. The sizes at Phi-3's real dimensions come
// from its real config.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { DeviceHeadroom, forwardWorkingBytes } from "../../src/engine/device-headroom";
import { KVCache } from "../../src/engine/kv-cache";
import type { EngineEvent } from "../../src/engine/protocol";
import { samplingParams } from "../../src/engine/protocol";
import { Scheduler } from "../../src/engine/scheduler";
import * as mx from "../../src/mlx";
import { configFromHf } from "../../src/models/config";
import { loadModel } from "../../src/models/loader";
import { tinyModel } from "../support/models";
import { promptIds } from "../support/reference";
import { request, runScheduled, TEST_SCHEDULER_OPTIONS } from "../support/scheduler";

const GiB = 2 ** 30;
const phi3 = configFromHf(
  JSON.parse(readFileSync(join(import.meta.dir, "../../../shared/fixtures/phi3-mini-128k/config.json"), "utf8")),
);

describe("the device's headroom at Phi-3-mini's real dimensions", () => {
  const shape = {
    ...{ numLayers: phi3.numLayers, numKvHeads: phi3.numKvHeads, headDim: phi3.headDim },
    ...{ dtype: mx.Dtype.float16, kvBits: 0 as const, kvGroupSize: 0 },
  };

  test("a 30,000-token prompt's first chunk needs its whole KV (11.7 GB) and is refused on a card with 2 GiB free", () => {
    const cache = new KVCache(shape, 1);
    cache.reserve(30_001);
    const kv = cache.growthBytes(2048);
    expect(kv / 1e9).toBeCloseTo((30_208 * 384 * 1024) / 1e9, 3);
    const need = kv + forwardWorkingBytes(phi3, 2048, 0, 2);
    const headroom = new DeviceHeadroom(
      () => 2 * GiB,
      () => 0.5 * GiB,
    );
    expect(() => headroom.ensure(need, "a prefill chunk")).toThrow(
      /out of memory: a prefill chunk needs 11\.\d\d GiB; the GPU has 2\.00 GiB free/,
    );
    // With the card's memory back it goes.
    new DeviceHeadroom(
      () => 60 * GiB,
      () => 0,
    ).ensure(need, "a prefill chunk");
  });

  test("a chunk's activations at 2,048 tokens are a fraction of a GiB; nothing is asked without a device", () => {
    // The shim's card query (pv_device_free_memory) answers "no CUDA card" on the CPU backend.
    if (mx.getDevice() === "cpu") expect(mx.memory.deviceFree()).toBeNull();
    const working = forwardWorkingBytes(phi3, 2048, 1, 2);
    expect(working).toBeGreaterThan(50 * 2 ** 20);
    expect(working).toBeLessThan(0.5 * GiB);
    new DeviceHeadroom(
      () => null,
      () => 0,
    ).ensure(1e15, "anything");
  });
});

describe("a prefill the device cannot hold (tiny-llama, CPU, a stand-in card)", () => {
  const { model } = loadModel(tinyModel("tiny-llama"));
  const greedy = samplingParams();
  const running = request("running", promptIds(12, 5), 60, greedy);
  const long = request("long", promptIds(400, 9), 8, greedy);

  test("fails with out of memory before it runs; the decoding stream goes on; served once the memory is back", () => {
    const alone = runScheduled(model, [{ at: 0, request: running }]);
    alone.scheduler.dispose();
    const longAlone = runScheduled(model, [{ at: 0, request: long }]);
    longAlone.scheduler.dispose();

    let free: number | null = null;
    const events: EngineEvent[] = [];
    const tokens = new Map<string, number[]>();
    const scheduler = new Scheduler(model, { ...TEST_SCHEDULER_OPTIONS, deviceFreeBytes: () => free }, (e) => {
      events.push(e);
      if (e.type === "tokens") for (const t of e.items) tokens.set(t.id, [...(tokens.get(t.id) ?? []), t.token]);
    });
    const finished = (id: string) => events.find((e) => e.type === "finished" && e.id === id);
    scheduler.submit(running);
    for (let i = 0; i < 10; i++) scheduler.step();
    expect(tokens.get("running")?.length ?? 0).toBeGreaterThan(0);

    // A full card: 1 KiB free, and no buffer cache to take from (the tiny model's chunk would fit in it).
    free = 1024;
    const cacheLimit = mx.memory.setCacheLimit(0);
    mx.memory.clearCache();
    scheduler.submit(long);
    let steps = 0;
    while (!finished("long")) {
      scheduler.step();
      if (++steps > 200) throw new Error("the long prompt neither ran nor failed");
    }
    const failure = finished("long") as Extract<EngineEvent, { type: "finished" }>;
    expect(failure.reason).toBe("error");
    expect(failure.message).toMatch(/out of memory: a prefill chunk of \d+ tokens .* needs/);
    expect(tokens.get("long")).toBeUndefined();
    expect(scheduler.stats().outOfMemory.failures).toBeGreaterThan(0);

    free = null; // the memory is back
    mx.memory.setCacheLimit(cacheLimit);
    scheduler.submit({ ...long, id: "long-again" });
    while (scheduler.hasWork()) {
      scheduler.step();
      if (++steps > 5000) throw new Error("the scheduler did not finish");
    }
    expect(tokens.get("running")).toEqual(alone.tokens.get("running") as number[]);
    expect((finished("running") as { reason: string }).reason).not.toBe("error");
    expect(tokens.get("long-again")).toEqual(longAlone.tokens.get("long") as number[]);
    scheduler.dispose();
  });

  test("a decode step whose KV would grow on a full card is refused before it runs; the row fails, not the engine", () => {
    // 250 prompt tokens: the batch's buffers (256 columns) grow at the seventh token.
    const growing = request("growing", promptIds(250, 13), 20, greedy);
    // One decoding row verifies drafts instead of stepping: off here, so that it steps.
    const options = { ...TEST_SCHEDULER_OPTIONS, speculative: false };
    const alone = runScheduled(model, [{ at: 0, request: growing }], options);
    alone.scheduler.dispose();
    let free: number | null = null;
    const events: EngineEvent[] = [];
    const scheduler = new Scheduler(model, { ...options, deviceFreeBytes: () => free }, (e) => {
      events.push(e);
    });
    const cacheLimit = mx.memory.setCacheLimit(0);
    try {
      scheduler.submit(growing);
      // Prefilled and decoding, before the growth.
      while (!events.some((e) => e.type === "tokens")) scheduler.step();
      mx.memory.clearCache();
      free = 1024;
      for (let steps = 0; scheduler.hasWork(); steps++) {
        scheduler.step();
        if (steps > 200) throw new Error("the row neither grew nor failed");
      }
    } finally {
      mx.memory.setCacheLimit(cacheLimit);
    }
    const end = events.find((e) => e.type === "finished") as Extract<EngineEvent, { type: "finished" }>;
    expect(end.reason).toBe("error");
    expect(end.message).toMatch(/out of memory: .* needs/);
    // The step's growth was refused (the row then recomputed, alone, and its prefill was refused).
    expect(scheduler.stats().outOfMemory.failures).toBe(2);
    free = null;
    const again = runScheduled(model, [{ at: 0, request: { ...growing, id: "again" } }], {
      ...options,
      deviceFreeBytes: () => free,
    });
    expect(again.tokens.get("again")).toEqual(alone.tokens.get("growing") as number[]);
    again.scheduler.dispose();
    scheduler.dispose();
  });
});
