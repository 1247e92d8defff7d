// On the GPU: the split-K decode GEMV (src/mlx/kernels-gemv-split.ts, PENSIEVE_GEMV_SPLITK) of
// every variant against the unsplit kernel on the same inputs, at Phi-3-mini's decode shapes
// and the configurations the setting gives (auto, 2, 4, 8, fewer row groups a block, 16 loads).
// The split output starts as NaN (every element must be written); only the float sums' order
// differs, so the two agree to fp16 rounding (the CPU emulation found them bit-equal:
// test/gpu/gemv-split-emulated.test.ts). Skips without CUDA. bench/gpu/gemv-splitk.sh runs it.
import { beforeAll, describe, expect, test } from "bun:test";
import * as mx from "../../src/mlx";
import { kernelLanguage } from "../../src/mlx/kernels";
import { type GemvConfig, quantizedGemv, quantizedGemvRmsNorm } from "../../src/mlx/kernels-gemv";
import {
  quantizedGemvNormRope,
  quantizedGemvNormRopeQkv,
  quantizedGemvNormSwiglu,
  quantizedGemvResidual,
} from "../../src/mlx/kernels-gemv-fused";
import { splitConfig } from "../../src/mlx/kernels-gemv-split";

const cuda = mx.gpuAvailable() && kernelLanguage() === "cuda";
const tolerance = (dtype: mx.Dtype) => (dtype === mx.Dtype.float16 ? 2e-3 : 1e-2);

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
const hidden = (k: number, dtype: mx.Dtype, seed: number) =>
  mx.add(mx.multiply(mx.randomNormal([1, 1, k], dtype, 0, 1, mx.randomKey(seed)), 4), 1);
const normWeight = (k: number, dtype: mx.Dtype, seed: number) =>
  mx.add(mx.randomUniform([k], dtype, mx.randomKey(seed)), 0.5);

const UNSPLIT: GemvConfig = { rows: 4, warps: 4 };
const SETTINGS: Record<string, string>[] = [
  { PENSIEVE_GEMV_SPLITK: "auto" },
  { PENSIEVE_GEMV_SPLITK: "2" },
  { PENSIEVE_GEMV_SPLITK: "4" },
  { PENSIEVE_GEMV_SPLITK: "8" },
  { PENSIEVE_GEMV_SPLITK: "4", PENSIEVE_GEMV_SPLITK_GROUPS: "1" },
  { PENSIEVE_GEMV_SPLITK: "2", PENSIEVE_GEMV_SPLITK_LOADS: "16" },
];
const split = (k: number, env: Record<string, string>): GemvConfig => ({
  ...splitConfig(UNSPLIT, k, env),
  poison: true,
});

describe.skipIf(!cuda)("split-K GEMV on the GPU equals the unsplit kernel (Phi-3-mini decode shapes)", () => {
  beforeAll(() => mx.setDevice("gpu"));
  const rope = { headDim: 96, rotated: 6144, traditional: false };
  for (const dtype of [mx.Dtype.float16, mx.Dtype.bfloat16]) {
    for (const env of SETTINGS) {
      const name = `${dtype === mx.Dtype.float16 ? "fp16" : "bf16"} ${Object.entries(env)
        .map(([k, v]) => `${k.replace("PENSIEVE_GEMV_", "")}=${v}`)
        .join(" ")}`;
      test(`${name}: lm_head, RMSNorm + lm_head, o and down + residual, gate|up + SwiGLU, q|k|v + RoPE`, () => {
        mx.tidy(() => {
          const x = hidden(3072, dtype, 1);
          const x8 = hidden(8192, dtype, 2);
          const g = normWeight(3072, dtype, 3);
          const res = mx.randomNormal([1, 1, 3072], dtype, 0, 2, mx.randomKey(4));
          const pos = mx.int32([777]);
          const invFreq = mx.divide(
            1,
            mx.power(mx.scalar(10000), mx.divide(mx.arange(0, 96, 2, mx.Dtype.float32), 96)),
          );
          const lm = weight(32064, 3072, dtype, 5);
          const o = weight(3072, 3072, dtype, 6);
          const down = weight(3072, 8192, dtype, 7);
          const gu = weight(16384, 3072, dtype, 8);
          const qkv = weight(9216, 3072, dtype, 9);
          const pairs: Array<[string, mx.MxArray, mx.MxArray]> = [
            ["lm_head", quantizedGemv(x, lm, split(3072, env)), quantizedGemv(x, lm, UNSPLIT)],
            [
              "rms_norm lm_head",
              quantizedGemvRmsNorm(x, g, 1e-5, lm, split(3072, env)),
              quantizedGemvRmsNorm(x, g, 1e-5, lm, UNSPLIT),
            ],
            ["o", quantizedGemvResidual(x, o, res, split(3072, env)), quantizedGemvResidual(x, o, res, UNSPLIT)],
            [
              "down",
              quantizedGemvResidual(x8, down, res, split(8192, env)),
              quantizedGemvResidual(x8, down, res, UNSPLIT),
            ],
            [
              "gate|up",
              quantizedGemvNormSwiglu(x, g, 1e-5, gu, split(3072, env)),
              quantizedGemvNormSwiglu(x, g, 1e-5, gu, UNSPLIT),
            ],
            [
              "q|k|v",
              quantizedGemvNormRope(x, g, 1e-5, qkv, pos, { ...rope, invFreq }, split(3072, env)),
              quantizedGemvNormRope(x, g, 1e-5, qkv, pos, { ...rope, invFreq }, UNSPLIT),
            ],
          ];
          const three = quantizedGemvNormRopeQkv(x, g, 1e-5, qkv, pos, { ...rope, invFreq }, 32, split(3072, env));
          const threeBase = quantizedGemvNormRopeQkv(x, g, 1e-5, qkv, pos, { ...rope, invFreq }, 32, UNSPLIT);
          for (let i = 0; i < 3; i++)
            pairs.push([`q|k|v output ${i}`, three[i] as mx.MxArray, threeBase[i] as mx.MxArray]);
          const distances = pairs.map(([what, a, b]) => [what, relativeDistance(a, b)] as const);
          console.log(`[split-k] ${name}: ${distances.map(([w, d]) => `${w} ${d.toExponential(1)}`).join(", ")}`);
          for (const [, d] of distances) expect(d).toBeLessThan(tolerance(dtype));
        });
      }, 120_000);
    }
  }
});
