// The batched 4-bit matrix product on a real GPU (skipped without CUDA): the
// same inputs through the kernel and through MLX's quantized_matmul for 2..64
// rows, and greedy tokens of a batch of concurrent requests on the tiny Llama
// and Phi-3 models with the kernel on and off.
//
// Tolerance (fp16): relative L2 distance to MLX's result under 3e-3. The kernel
// rounds each dequantized weight to fp16 (as MLX's dequantize does) and sums in
// float on tensor cores; test/gpu/qmm-emulated.test.ts measures 2-3e-4 against
// float64. bfloat16 keeps 8 bits of mantissa: under 2e-2.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { samplingParams } from "../../src/engine/protocol";
import * as mx from "../../src/mlx";
import { kernelLanguage } from "../../src/mlx/kernels";
import { type QmmConfig, qmmConfig, quantizedMatmulBatched } from "../../src/mlx/kernels-qmm";
import {
  batchedQmmEnabled,
  batchedQmmLaunchCount,
  batchedQmmReplacesDenseCopies,
  setBatchedQmm,
} from "../../src/models/gpu-qmm";
import { loadModel } from "../../src/models/loader";
import { tinyModel } from "../support/models";
import { promptIds } from "../support/reference";
import { request, runScheduled, TEST_SCHEDULER_OPTIONS } from "../support/scheduler";

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

describe.skipIf(!cuda)("batched 4-bit matmul on the GPU", () => {
  let wasEnabled = false;
  beforeAll(() => {
    mx.setDevice("gpu");
    wasEnabled = batchedQmmEnabled();
  });
  afterAll(() => setBatchedQmm(wasEnabled));

  // Phi-3-mini's shapes [out, in] and a small one (K not a multiple of 128), at rows that reach every row tile.
  // Each (dtype, row tile, warps, k-slices in a cluster, group) is one NVRTC compile (~2-3 s on the H100 host):
  // the cases are chosen to need few of them.
  const cases: Array<{ dtype: mx.Dtype; n: number; k: number; rows: number[] }> = [
    { dtype: mx.Dtype.float16, n: 9216, k: 3072, rows: [2, 5, 13, 33, 64] },
    { dtype: mx.Dtype.float16, n: 3072, k: 8192, rows: [32] },
    { dtype: mx.Dtype.float16, n: 32064, k: 3072, rows: [8] },
    { dtype: mx.Dtype.float16, n: 96, k: 1088, rows: [3] },
    { dtype: mx.Dtype.bfloat16, n: 9216, k: 3072, rows: [32] },
  ];
  let seed = 300;
  for (const { dtype, n, k, rows } of cases) {
    for (const m of rows) {
      const s = seed++;
      test(`${dtype === mx.Dtype.float16 ? "fp16" : "bf16"} [${m}, ${k}] x [${n}, ${k}]^T equals quantized_matmul`, () => {
        mx.tidy(() => {
          const w = mx.multiply(mx.randomNormal([n, k], dtype, 0, 1, mx.randomKey(s)), 0.02);
          const q = mx.quantize(w, 64, 4);
          const x = mx.randomNormal([m, k], dtype, 0, 1, mx.randomKey(s + 1000));
          const c = qmmConfig(n, k, m);
          // NaN poison (one k-slice, or slices summed in a cluster): an unwritten element makes the distance NaN.
          const ours = quantizedMatmulBatched(x, q, { ...c, poison: true });
          const theirs = mx.quantizedMatmul(x, q);
          expect(ours.shape).toEqual([m, n]);
          expect(ours.dtype).toBe(dtype);
          expect(relativeDistance(ours, theirs)).toBeLessThan(TOLERANCE[dtype] as number);
        });
      });
    }
  }

  test("group size 32, and x with a batch axis [B, 1, K]", () => {
    mx.tidy(() => {
      const q = mx.quantize(mx.randomNormal([3072, 3072], mx.Dtype.float16, 0, 0.02, mx.randomKey(32)), 32, 4);
      const x = mx.randomNormal([12, 1, 3072], mx.Dtype.float16, 0, 1, mx.randomKey(33));
      const ours = quantizedMatmulBatched(x, q);
      expect(ours.shape).toEqual([12, 1, 3072]);
      expect(relativeDistance(ours, mx.quantizedMatmul(x, q))).toBeLessThan(3e-3);
    });
  });

  test("other row tiles, warps, k-slices, feature blocks and cluster / atomics give the same result", () => {
    mx.tidy(() => {
      const q = mx.quantize(mx.randomNormal([3072, 3072], mx.Dtype.float16, 0, 0.02, mx.randomKey(7)), 64, 4);
      const x = mx.randomNormal([6, 3072], mx.Dtype.float16, 0, 1, mx.randomKey(8));
      const ref = mx.quantizedMatmul(x, q);
      // A few of each kind (each configuration compiles once): k-slices must fit the row tile's shared memory
      // (3072 k at 8 rows, 1536 at 16/32, 1024 at 64); clusters hold up to 8 slices, atomics any number.
      const configs: QmmConfig[] = [
        { rowTile: 8, warps: 4, splits: 1 },
        { rowTile: 8, warps: 4, splits: 8, blocks: 3, cluster: true },
        { rowTile: 8, warps: 4, splits: 3, cluster: false },
        { rowTile: 32, warps: 8, splits: 8, blocks: 3, cluster: true },
        { rowTile: 64, warps: 4, splits: 24, cluster: false },
      ];
      for (const c of configs) {
        // Poison where the output is written once (one slice, or slices summed in a cluster).
        const y = quantizedMatmulBatched(x, q, { ...c, poison: c.splits === 1 || c.cluster === true });
        expect(relativeDistance(y, ref)).toBeLessThan(3e-3);
      }
    });
  });

  test("with the kernel on, 4-bit models are served without dense weight copies", () => {
    setBatchedQmm(true);
    expect(batchedQmmReplacesDenseCopies({ bits: 4, groupSize: 64 })).toBe(true);
    expect(batchedQmmReplacesDenseCopies({ bits: 8, groupSize: 64 })).toBe(false);
    setBatchedQmm(false);
    expect(batchedQmmReplacesDenseCopies({ bits: 4, groupSize: 64 })).toBe(false);
  });

  // Six requests decoded together (2..6 rows per step as they join and finish).
  for (const name of ["tiny-llama", "tiny-phi3"]) {
    test(`${name}: greedy tokens of a batch with the kernel equal those without`, () => {
      const dir = tinyModel(name);
      const prompts = [3, 17, 40, 9, 25, 60].map((n, i) => promptIds(n, 40 + i));
      const greedy = samplingParams();
      const run = (on: boolean) => {
        setBatchedQmm(on);
        const { model } = loadModel(dir);
        try {
          const before = batchedQmmLaunchCount();
          const r = runScheduled(
            model,
            prompts.map((p, i) => ({ at: i % 3, request: request(`r${i}`, p, 24, greedy) })),
            TEST_SCHEDULER_OPTIONS,
          );
          return { tokens: prompts.map((_, i) => r.tokens.get(`r${i}`)), launches: batchedQmmLaunchCount() - before };
        } finally {
          model.dispose();
        }
      };
      const without = run(false);
      const withKernel = run(true);
      expect(without.launches).toBe(0);
      expect(withKernel.launches).toBeGreaterThan(0);
      expect(withKernel.tokens).toEqual(without.tokens);
    }, 180_000);
  }
});
