// What the tests against outside oracles (mlx-lm, llama.cpp, Hugging Face
// semantics) share: the oracles compute with float products, so these tests run
// Pensieve's exact CPU kernel (int8 activations, the CPU default, move logits by
// more than their tolerances; test/models/int8-quality.test.ts measures that).
import { afterAll, beforeAll, expect } from "bun:test";
import * as mx from "../../src/mlx";

/** Selects the exact CPU matmul for the calling test file, restoring the mode after it. */
export function useExactCpuMatmul(): void {
  const before = mx.cpuMatmul();
  beforeAll(() => mx.setCpuMatmul("exact"));
  afterAll(() => mx.setCpuMatmul(before));
}

/** Max |a - b| over two equally long vectors. */
export function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs((a[i] as number) - (b[i] as number)));
  return m;
}
