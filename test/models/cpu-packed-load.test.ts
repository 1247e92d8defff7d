// On the CPU's int8 path a model's quantized weights are packed at load and
// the 4-bit ones keep only the packed copy (WeightStore.packForCpu): memory is
// about the file's size, not plain + packed; the logits match a load that keeps
// the plain arrays; the exact float path, which reads the plain arrays, gets
// them back equal. The engine, setup and doctor plan with cpuPackedWeightBytes.
import { afterAll, expect, test } from "bun:test";
import { statSync } from "node:fs";
import { cacheFor, prefill } from "../../src/engine/one-sequence";
import { cpuPackedWeightBytes } from "../../src/engine/memory-plan";
import * as mx from "../../src/mlx";
import { loadModel, readModelConfig } from "../../src/models/loader";
import { EMBEDDED_MODEL } from "../support/models";

const vnni = mx.cpuIsaSupported("vnni");
const TOKENS = [1, 504, 3458, 314, 253, 3575, 282, 4649, 47, 10612, 30, 2];

afterAll(() => {
  mx.setCpuPacking(true);
  mx.setCpuMatmul("int8");
});

function lastLogits(path: string, packing: boolean, matmul: "int8" | "exact") {
  mx.setCpuPacking(packing);
  mx.setCpuMatmul("int8");
  const before = mx.memory.active();
  const { model } = loadModel(path);
  const loadedBytes = mx.memory.active() - before;
  mx.setCpuMatmul(matmul);
  const logits = mx.tidy(() => {
    const cache = cacheFor(model);
    return prefill(model, cache, TOKENS).read() as Float32Array;
  });
  mx.setCpuMatmul("int8");
  model.dispose();
  return { logits, loadedBytes };
}

function argmax(a: Float32Array): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if ((a[i] as number) > (a[best] as number)) best = i;
  return best;
}

function maxRelDiff(a: Float32Array, b: Float32Array): number {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs((a[i] as number) - (b[i] as number)));
    scale = Math.max(scale, Math.abs(b[i] as number));
  }
  return diff / scale;
}

test.skipIf(!vnni)(
  "SmolLM2 on the CPU: packed at load, memory near the file's size, logits as with the plain arrays",
  () => {
    mx.setDevice("cpu");
    const file = statSync(EMBEDDED_MODEL).size;
    const plain = lastLogits(EMBEDDED_MODEL, false, "int8");
    const packed = lastLogits(EMBEDDED_MODEL, true, "int8");
    const { config } = readModelConfig(EMBEDDED_MODEL);
    console.log(
      `SmolLM2 weights in MLX memory after load: plain ${(plain.loadedBytes / 2 ** 20).toFixed(1)} MiB, packed ${(packed.loadedBytes / 2 ** 20).toFixed(1)} MiB (file ${(file / 2 ** 20).toFixed(1)} MiB, planned ${(cpuPackedWeightBytes(file, config) / 2 ** 20).toFixed(1)} MiB)`,
    );
    // Before packing at load, the packed copies sat beside the plain arrays (plain + ~0.9x).
    expect(packed.loadedBytes).toBeLessThan(plain.loadedBytes * 1.3);
    expect(packed.loadedBytes).toBeLessThanOrEqual(cpuPackedWeightBytes(file, config) * 1.05);
    // The same integer dots; the 16-row tile sums each group's floats in another order (1e-4 seen after 30 layers).
    expect(maxRelDiff(packed.logits, plain.logits)).toBeLessThan(1e-3);
    expect(argmax(packed.logits)).toBe(argmax(plain.logits));
    // The exact path reads the plain arrays: rebuilt from the packed copies, equal.
    const exactPlain = lastLogits(EMBEDDED_MODEL, false, "exact");
    const exactPacked = lastLogits(EMBEDDED_MODEL, true, "exact");
    expect(exactPacked.logits).toEqual(exactPlain.logits);
  },
  300_000,
);
