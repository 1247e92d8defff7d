// The 4-bit GEMV on a real GPU (skipped without CUDA): the same inputs through
// the kernel and through MLX's quantized_matmul, and greedy tokens of the tiny
// Llama and Phi-3 models with the kernel on and off.
//
// Tolerance (fp16): relative L2 distance to MLX's result under 3e-3. Both round
// to fp16 (about 5e-4 each); the kernel adds packed 16-bit products of four
// terms (test/gpu/gemv-emulated.test.ts measures 4.5e-4 against float64).
// bfloat16 keeps 8 bits of mantissa: under 2e-2.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { generateTokens } from "../../src/engine/one-sequence";
import { samplingParams } from "../../src/engine/protocol";
import * as mx from "../../src/mlx";
import { kernelLanguage } from "../../src/mlx/kernels";
import { gemvConfig, quantizedGemv, quantizedGemvRmsNorm } from "../../src/mlx/kernels-gemv";
import { gpuFusedEnabled, setGpuFused } from "../../src/models/gpu-fused";
import { gemvLaunchCount, gpuKernelsEnabled, setGpuKernels } from "../../src/models/gpu-kernels";
import { loadModel } from "../../src/models/loader";
import { tinyModel } from "../support/models";

const cuda = mx.gpuAvailable() && kernelLanguage() === "cuda";
const TOLERANCE = { [mx.Dtype.float16]: 3e-3, [mx.Dtype.bfloat16]: 2e-2 } as Record<number, number>;

function relativeDistance(a: mx.MxArray, b: mx.MxArray): number {
  return mx.tidy(() => {
    const fa = mx.astype(a, mx.Dtype.float32);
    const fb = mx.astype(b, mx.Dtype.float32);
    const d = mx.sqrt(mx.sum(mx.square(mx.subtract(fa, fb))));
    const r = mx.sqrt(mx.sum(mx.square(fb)));
    return (d.item() as number) / (r.item() as number);
  });
}

describe.skipIf(!cuda)("4-bit GEMV on the GPU", () => {
  let wasEnabled = true;
  beforeAll(() => {
    mx.setDevice("gpu");
    wasEnabled = gpuKernelsEnabled();
  });
  afterAll(() => setGpuKernels(wasEnabled));

  // Phi-3-mini's shapes [out, in], and small ones with ragged chunks and few rows.
  const shapes: Array<[number, number]> = [
    [9216, 3072],
    [3072, 8192],
    [32064, 3072],
    [96, 1088],
    [8, 256],
  ];
  let seed = 100;
  for (const dtype of [mx.Dtype.float16, mx.Dtype.bfloat16]) {
    for (const [n, k] of shapes) {
      for (const m of n * k > 1e6 ? [1, 8] : [1, 3, 8]) {
        const s = seed++;
        test(`${dtype === mx.Dtype.float16 ? "fp16" : "bf16"} [${m}, ${k}] x [${n}, ${k}]^T equals quantized_matmul`, () => {
          mx.tidy(() => {
            const w = mx.multiply(mx.randomNormal([n, k], dtype, 0, 1, mx.randomKey(s)), 0.02);
            const q = mx.quantize(w, 64, 4);
            const x = mx.randomNormal([m, k], dtype, 0, 1, mx.randomKey(s + 1000));
            const ours = quantizedGemv(x, q, { ...gemvConfig(n, m), poison: true });
            const theirs = mx.quantizedMatmul(x, q);
            expect(ours.shape).toEqual([m, n]);
            expect(ours.dtype).toBe(dtype);
            // NaN poison: an unwritten element makes the distance NaN, which fails.
            const dist = relativeDistance(ours, theirs);
            expect(dist).toBeLessThan(TOLERANCE[dtype] as number);
          });
        });
      }
    }
  }

  // RMSNorm fused in front: against MLX's rms_norm then quantized_matmul. The normed x is
  // rounded to 16 bits twice (x*norm, then *rsqrt) where MLX rounds once: fp16 under 5e-3.
  for (const dtype of [mx.Dtype.float16, mx.Dtype.bfloat16]) {
    for (const [n, k] of [
      [9216, 3072],
      [16384, 3072],
      [96, 1088],
    ] as Array<[number, number]>) {
      for (const m of [1, 2]) {
        const s = seed++;
        test(`${dtype === mx.Dtype.float16 ? "fp16" : "bf16"} [${m}, ${k}] RMSNorm fused into [${n}, ${k}] equals rms_norm + quantized_matmul`, () => {
          mx.tidy(() => {
            const q = mx.quantize(mx.multiply(mx.randomNormal([n, k], dtype, 0, 1, mx.randomKey(s)), 0.02), 64, 4);
            const x = mx.add(mx.multiply(mx.randomNormal([m, k], dtype, 0, 1, mx.randomKey(s + 1)), 4), 1);
            const g = mx.add(mx.randomUniform([k], dtype, mx.randomKey(s + 2)), 0.5);
            const ours = quantizedGemvRmsNorm(x, g, 1e-5, q, { ...gemvConfig(n, m), poison: true });
            const theirs = mx.quantizedMatmul(mx.rmsNorm(x, g, 1e-5), q);
            expect(relativeDistance(ours, theirs)).toBeLessThan(dtype === mx.Dtype.float16 ? 5e-3 : 3e-2);
          });
        });
      }
    }
  }

  test("other rows-per-warp settings give the same result", () => {
    mx.tidy(() => {
      const q = mx.quantize(mx.randomNormal([3072, 3072], mx.Dtype.float16, 0, 0.02, mx.randomKey(7)), 64, 4);
      const x = mx.randomNormal([1, 3072], mx.Dtype.float16, 0, 1, mx.randomKey(8));
      const ref = mx.quantizedMatmul(x, q);
      for (const rows of [1, 2, 4]) {
        for (const warps of [4, 8]) {
          expect(relativeDistance(quantizedGemv(x, q, { rows, warps, poison: true }), ref)).toBeLessThan(3e-3);
        }
      }
    });
  });

  for (const name of ["tiny-llama", "tiny-phi3"]) {
    test(`${name}: greedy tokens with the GEMV equal those without`, () => {
      const dir = tinyModel(name);
      const prompt = Array.from({ length: 20 }, (_, i) => 100 + ((i * 37) % 900));
      const tokens = (on: boolean) => {
        setGpuKernels(on);
        // The fused path (on by default on CUDA) would take these products itself.
        setGpuFused(false);
        const { model } = loadModel(dir);
        try {
          const before = gemvLaunchCount();
          const out: number[] = [];
          for (const step of generateTokens(model, prompt, { maxTokens: 24, sampling: samplingParams() })) {
            out.push(step.token);
          }
          return { out, launches: gemvLaunchCount() - before };
        } finally {
          model.dispose();
          setGpuFused(fusedWasOn);
        }
      };
      const fusedWasOn = gpuFusedEnabled();
      const without = tokens(false);
      const withGemv = tokens(true);
      expect(without.launches).toBe(0);
      expect(withGemv.launches).toBeGreaterThan(0);
      expect(withGemv.out).toEqual(without.out);
    }, 120_000);
  }
});
