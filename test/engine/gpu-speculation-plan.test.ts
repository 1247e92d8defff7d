// Where prompt lookup is on by default (engine-plan.ts schedulerOptions): the CPU
// (drafting by its cost per draft), and a GPU whose fused verify path takes short passes, drafting by cost at most
// that path's length less one and up to GPU_LOOKUP_MAX_CONTEXT tokens; per server `speculative: false` turns it off.
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { planMemory, schedulerOptions } from "../../src/engine/engine-plan";
import { CPU_ROW_COST, draftLengthByCost, GPU_LOOKUP_MAX_CONTEXT, GPU_ROW_COST } from "../../src/engine/speculation";
import { configFromHf } from "../../src/models/config";
import { loadModel } from "../../src/models/loader";
import { tinyModel } from "../support/models";

const PHI3 = join(import.meta.dir, "..", "..", "..", "shared", "fixtures", "phi3-mini-128k", "config.json");
const phi3 = configFromHf(JSON.parse(readFileSync(PHI3, "utf8")));
const plan = planMemory({ model: PHI3 }, phi3, 2.2e9, "cpu", 2);

test("a GPU with the fused verify path drafts by cost, at most its length less one; without it, no lookup", () => {
  const gpu = schedulerOptions({ model: PHI3 }, plan, "gpu", 4);
  expect(gpu.speculative).toBe(true);
  expect(gpu.lookupTuning?.policy).toBe("cost");
  expect(gpu.lookupTuning?.maxDraft).toBe(3);
  expect(gpu.lookupTuning?.rowCost).toBe(GPU_ROW_COST);
  expect(gpu.lookupTuning?.maxContext).toBe(GPU_LOOKUP_MAX_CONTEXT);
  expect(schedulerOptions({ model: PHI3 }, plan, "gpu", 0).speculative).toBe(false);
  expect(schedulerOptions({ model: PHI3, speculative: false }, plan, "gpu", 4).speculative).toBe(false);
  // The CPU drafts by its own cost per draft, with no cap on the context.
  const cpu = schedulerOptions({ model: PHI3 }, plan, "cpu");
  expect(cpu.speculative).toBe(true);
  expect(cpu.lookupTuning?.policy).toBe("cost");
  expect(cpu.lookupTuning?.rowCost).toBe(CPU_ROW_COST);
  expect(cpu.lookupTuning?.maxContext).toBeUndefined();
  // Beside a draft model, the adaptive default (the cost per draft was measured for lookup alone).
  expect(schedulerOptions({ model: PHI3, draftModel: PHI3 }, plan, "cpu").lookupTuning).toBeUndefined();
});

test("at the GPU's cost per draft, well-copied text drafts the most the path takes and chance matches draft nothing", () => {
  expect(draftLengthByCost(0.95, 3, GPU_ROW_COST)).toBe(3);
  expect(draftLengthByCost(0.67, 3, GPU_ROW_COST)).toBeGreaterThan(0);
  expect(draftLengthByCost(0.2, 3, GPU_ROW_COST)).toBe(0);
});

test("on the CPU no model's verify pass takes the fused GPU kernels (the engine's GPU lookup asks the model)", () => {
  const { model } = loadModel(tinyModel("tiny-llama"));
  try {
    expect(model.fusedVerifySupported?.()).toBe(false);
  } finally {
    model.dispose();
  }
});
