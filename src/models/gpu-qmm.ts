// Where the decoder uses Pensieve's batched 4-bit matrix product on CUDA
// (src/mlx/kernels-qmm.ts) instead of MLX's quantized_matmul: 2..64 rows of x
// (batched decode steps) through 4-bit weights, with PENSIEVE_GPU_QMM=1. With it
// on, the engine makes no dequantized float16 copies of the weights
// (LinearWeight.dense, 3.5x the 4-bit size): the kernel reads the 4-bit weights
// once per step for all rows, and products of more rows (prefill) use MLX's
// quantized_matmul. Off by default until the H100 measurement decides.
import type { MxArray, QuantizedWeight } from "../mlx";
import * as mx from "../mlx";
import { kernelLanguage } from "../mlx/kernels";
import { QMM_MAX_ROWS, QMM_MIN_ROWS, qmmSupports, quantizedMatmulBatched } from "../mlx/kernels-qmm";

let enabled = process.env.PENSIEVE_GPU_QMM === "1";
const supported = new WeakMap<QuantizedWeight, boolean>();
let launches = 0;

/** Turns the batched kernel on or off for products built from now on (tests compare both). */
export function setBatchedQmm(on: boolean): void {
  enabled = on;
}

export function batchedQmmEnabled(): boolean {
  return enabled;
}

/** Launches of the batched kernel built so far (tests check that a path really used it). */
export function batchedQmmLaunchCount(): number {
  return launches;
}

/**
 * Whether the batched kernel takes the place of dequantized weight copies for a
 * model quantized this way: on, CUDA, 4 bits with a group size it handles. (A
 * tensor it cannot take, e.g. with an odd shape, falls back to quantized_matmul.)
 */
export function batchedQmmReplacesDenseCopies(q: { bits: number; groupSize: number }): boolean {
  return enabled && kernelLanguage() === "cuda" && q.bits === 4 && [32, 64, 128].includes(q.groupSize);
}

/** x @ dequantize(q).T through the batched kernel when it applies to these rows, else null. */
export function gpuBatchedProduct(x: MxArray, q: QuantizedWeight, rows: number): MxArray | null {
  if (!enabled || rows < QMM_MIN_ROWS || rows > QMM_MAX_ROWS || x.dtype !== q.scales.dtype) return null;
  let ok = supported.get(q);
  if (ok === undefined) {
    ok = mx.getDevice() === "gpu" && qmmSupports(q);
    supported.set(q, ok);
  }
  if (!ok) return null;
  launches++;
  return quantizedMatmulBatched(x, q);
}
