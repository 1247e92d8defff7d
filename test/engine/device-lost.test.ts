// A lost device (src/engine/memory-pressure.ts, isDeviceLost): CUDA reports an
// illegal memory access and every later call in the process fails with it (an
// H100 after an out-of-memory failure on a full card). The scheduler fails every
// sequence, waiting ones included, with the error and marks itself lost, so that
// the engine process exits and the supervisor starts a fresh one (src/engine/main.ts).
// The device error is injected at the model's forward pass: this CPU cannot lose one.
import { describe, expect, test } from "bun:test";
import { isDeviceLost, isOutOfMemory } from "../../src/engine/memory-pressure";
import type { EngineEvent } from "../../src/engine/protocol";
import { Scheduler } from "../../src/engine/scheduler";
import { loadModel } from "../../src/models/loader";
import { tinyModel } from "../support/models";
import { promptIds } from "../support/reference";
import { request, TEST_SCHEDULER_OPTIONS } from "../support/scheduler";

const ILLEGAL = "eval: cudaGetLastError() failed: an illegal memory access was encountered";

describe("a lost device", () => {
  test("which errors lose the device, and which are out of memory", () => {
    for (const m of [
      ILLEGAL,
      "fromData: cudaMallocManaged(&data, size) failed: an illegal memory access was encountered",
      "unspecified launch failure",
      "device-side assert triggered",
    ]) {
      expect(isDeviceLost(m)).toBe(true);
    }
    expect(isDeviceLost("eval: cudaMallocAsync(&data, size, stream) failed: out of memory")).toBe(false);
    expect(isOutOfMemory("eval: cudaMallocAsync(&data, size, stream) failed: out of memory")).toBe(true);
    expect(isDeviceLost("[rope] offset must be a scalar or have 6 elements but has shape (5)")).toBe(false);
  });

  test("fails every sequence, running, prefilling and waiting, and marks the scheduler lost", () => {
    const { model } = loadModel(tinyModel("tiny-llama"));
    const options = { ...TEST_SCHEDULER_OPTIONS, maxConcurrent: 2 };
    const events: EngineEvent[] = [];
    const scheduler = new Scheduler(model, options, (e) => events.push(e));
    try {
      for (let i = 0; i < 4; i++) scheduler.submit(request(`r${i}`, promptIds(20 + 5 * i, 40 + i), 200));
      let steps = 0;
      while (scheduler.stats().running < 2) {
        scheduler.step();
        if (++steps > 300) throw new Error("two rows never ran");
      }
      expect(scheduler.stats().waiting).toBe(2);
      const forward = model.forward.bind(model);
      model.forward = () => {
        throw new Error(ILLEGAL);
      };
      try {
        scheduler.step();
      } finally {
        model.forward = forward;
      }
      expect(scheduler.deviceLost).toContain("illegal memory access");
      const finished = events.filter((e) => e.type === "finished");
      expect(finished.map((e) => e.id).sort()).toEqual(["r0", "r1", "r2", "r3"]);
      for (const e of finished) {
        expect(e.type === "finished" && e.reason).toBe("error");
        expect(e.type === "finished" && e.message).toContain("illegal memory access");
      }
      expect(scheduler.hasWork()).toBe(false);
      expect(scheduler.stats().waiting).toBe(0);
    } finally {
      scheduler.dispose();
      model.dispose();
    }
  }, 120_000);
});
