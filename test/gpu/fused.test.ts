// The fused decode kernels on a real GPU (skipped without CUDA): each fused
// GEMV variant against MLX's unfused ops on the same inputs, and greedy tokens
// of the tiny Llama and Phi-3 with the fused path (PENSIEVE_GPU_FUSED) on and off.
//
// Tolerance (fp16), relative L2 to MLX's result: the GEMV alone is within 3e-3
// (gemv.test.ts); the fused epilogues round once where MLX rounds after each op,
// and the RMSNorm prologue rounds x twice (x*norm, *rsqrt): under 5e-3. bf16: 3e-2.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { generateTokens } from "../../src/engine/one-sequence";
import { samplingParams } from "../../src/engine/protocol";
import * as mx from "../../src/mlx";
import { kernelLanguage } from "../../src/mlx/kernels";
import {
  quantizedGemvNormRope,
  quantizedGemvNormSwiglu,
  quantizedGemvResidual,
} from "../../src/mlx/kernels-gemv-fused";
import { fusedLaunchCount, gpuFusedEnabled, setGpuFused } from "../../src/models/gpu-fused";
import { loadModel } from "../../src/models/loader";
import { tinyModel } from "../support/models";

const cuda = mx.gpuAvailable() && kernelLanguage() === "cuda";
const tolerance = (dtype: mx.Dtype) => (dtype === mx.Dtype.float16 ? 5e-3 : 3e-2);
const label = (dtype: mx.Dtype) => (dtype === mx.Dtype.float16 ? "fp16" : "bf16");

function relativeDistance(a: mx.MxArray, b: mx.MxArray): number {
  return mx.tidy(() => {
    const fa = mx.astype(a, mx.Dtype.float32);
    const fb = mx.astype(b, mx.Dtype.float32);
    const d = mx.sqrt(mx.sum(mx.square(mx.subtract(fa, fb))));
    const r = mx.sqrt(mx.sum(mx.square(fb)));
    return (d.item() as number) / (r.item() as number);
  });
}

const weight = (n: number, k: number, dtype: mx.Dtype, seed: number) =>
  mx.quantize(mx.multiply(mx.randomNormal([n, k], dtype, 0, 1, mx.randomKey(seed)), 0.02), 64, 4);
const hidden = (m: number, k: number, dtype: mx.Dtype, seed: number) =>
  mx.add(mx.multiply(mx.randomNormal([m, 1, k], dtype, 0, 1, mx.randomKey(seed)), 4), 1);
const normWeight = (k: number, dtype: mx.Dtype, seed: number) =>
  mx.add(mx.randomUniform([k], dtype, mx.randomKey(seed)), 0.5);

describe.skipIf(!cuda)("fused decode kernels on the GPU", () => {
  let wasEnabled = false;
  beforeAll(() => {
    mx.setDevice("gpu");
    wasEnabled = gpuFusedEnabled();
  });
  afterAll(() => setGpuFused(wasEnabled));

  let seed = 500;
  for (const dtype of [mx.Dtype.float16, mx.Dtype.bfloat16]) {
    for (const m of [1, 3]) {
      seed += 10;
      const s = seed;
      test(`${label(dtype)} M=${m}: o/down product + residual equals quantized_matmul + add`, () => {
        mx.tidy(() => {
          for (const [n, k] of [
            [3072, 3072],
            [3072, 8192],
          ] as Array<[number, number]>) {
            const q = weight(n, k, dtype, s);
            const x = mx.randomNormal([m, 1, k], dtype, 0, 1, mx.randomKey(s + 1));
            const res = mx.randomNormal([m, 1, n], dtype, 0, 2, mx.randomKey(s + 2));
            const ours = quantizedGemvResidual(x, q, res);
            expect(ours.shape).toEqual([m, 1, n]);
            expect(relativeDistance(ours, mx.add(res, mx.quantizedMatmul(x, q)))).toBeLessThan(tolerance(dtype));
          }
        });
      });
      test(`${label(dtype)} M=${m}: RMSNorm + gate|up + SwiGLU equals rms_norm, quantized_matmul, swiglu`, () => {
        mx.tidy(() => {
          const [ffn, k] = [8192, 3072];
          const q = weight(2 * ffn, k, dtype, s + 3);
          const x = hidden(m, k, dtype, s + 4);
          const g = normWeight(k, dtype, s + 5);
          const ours = quantizedGemvNormSwiglu(x, g, 1e-5, q);
          expect(ours.shape).toEqual([m, 1, ffn]);
          const [gate, up] = mx.split(mx.quantizedMatmul(mx.rmsNorm(x, g, 1e-5), q), [ffn], -1) as [
            mx.MxArray,
            mx.MxArray,
          ];
          expect(relativeDistance(ours, mx.swiglu(gate, up, false))).toBeLessThan(tolerance(dtype));
        });
      });
      for (const traditional of [false, true]) {
        test(`${label(dtype)} M=${m}: RMSNorm + q|k|v + RoPE${traditional ? " (traditional)" : ""} equals rms_norm, quantized_matmul, rope`, () => {
          mx.tidy(() => {
            // Phi-3-mini: 32 heads of 96, no GQA; position 1000 (scale 0.5: linear scaling).
            const [heads, kvHeads, hd, k] = [32, 32, 96, 3072];
            const n = (heads + 2 * kvHeads) * hd;
            const q = weight(n, k, dtype, s + 6);
            const x = hidden(m, k, dtype, s + 7);
            const g = normWeight(k, dtype, s + 8);
            const base = 10000;
            const invFreq = mx.divide(
              1,
              mx.power(mx.scalar(base), mx.divide(mx.arange(0, hd, 2, mx.Dtype.float32), hd)),
            );
            const offset = 1000;
            const pos = mx.int32(Array.from({ length: m }, () => offset));
            const rope = { headDim: hd, rotated: (heads + kvHeads) * hd, traditional, invFreq, positionScale: 0.5 };
            const ours = quantizedGemvNormRope(x, g, 1e-5, q, pos, rope);
            const y = mx.quantizedMatmul(mx.rmsNorm(x, g, 1e-5), q);
            const [q0, k0, v0] = mx.split(y, [heads * hd, (heads + kvHeads) * hd], -1) as [
              mx.MxArray,
              mx.MxArray,
              mx.MxArray,
            ];
            const rot = (t: mx.MxArray, h: number) => {
              const r = mx.rope(mx.transpose(mx.reshape(t, [m, 1, h, hd]), [0, 2, 1, 3]), {
                dims: hd,
                traditional,
                base,
                scale: 0.5,
                offset,
              });
              return mx.reshape(mx.transpose(r, [0, 2, 1, 3]), [m, 1, h * hd]);
            };
            const theirs = mx.concatenate([rot(q0, heads), rot(k0, kvHeads), v0], -1);
            expect(relativeDistance(ours, theirs)).toBeLessThan(tolerance(dtype));
          });
        });
      }
    }
  }

  for (const name of ["tiny-llama", "tiny-phi3"]) {
    test(`${name}: greedy tokens with the fused path equal those without`, () => {
      const dir = tinyModel(name);
      const prompt = Array.from({ length: 20 }, (_, i) => 100 + ((i * 37) % 900));
      const tokens = (on: boolean) => {
        setGpuFused(on);
        const { model } = loadModel(dir);
        try {
          const before = fusedLaunchCount();
          const out: number[] = [];
          for (const step of generateTokens(model, prompt, { maxTokens: 24, sampling: samplingParams() })) {
            out.push(step.token);
          }
          return { out, launches: fusedLaunchCount() - before };
        } finally {
          model.dispose();
        }
      };
      const without = tokens(false);
      const withFused = tokens(true);
      expect(without.launches).toBe(0);
      expect(withFused.launches).toBeGreaterThan(0);
      expect(withFused.out).toEqual(without.out);
    }, 180_000);
  }
});
