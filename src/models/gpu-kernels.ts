// Where the decoder uses Pensieve's own GPU kernels (src/mlx/kernels-gemv.ts)
// instead of MLX's: 4-bit weights on CUDA, products of at most
// DECODE_GEMV_MAX_ROWS rows (decode steps). bench/gpu/gemv.ts measures the
// kernel against MLX's quantized_matmul (1.5-2.5x faster on an H100,
// bench/results/gpu-h100-2026-12-06), but whole decode steps were slower with
// it (124 vs 172 tok/s: per-call host cost, since cut by launch plans and not
// yet measured), so it is off unless PENSIEVE_GPU_GEMV=1.
import type { MxArray, QuantizedWeight } from "../mlx";
import * as mx from "../mlx";
import { gemvSupports, quantizedGemv, quantizedGemvRmsNorm } from "../mlx/kernels-gemv";
import { DENSE_MIN_ROWS, type LinearWeight } from "./weights";

let enabled = process.env.PENSIEVE_GPU_GEMV === "1";

/** Rows of x up to which decode uses the GEMV (more rows: longer NVRTC compiles, unmeasured gains). */
export const DECODE_GEMV_MAX_ROWS = 4;

const supported = new WeakMap<QuantizedWeight, boolean>();
let gemvLaunches = 0;

/** Launches of the GEMV built so far (tests check that a path really used it). */
export function gemvLaunchCount(): number {
  return gemvLaunches;
}

/** Turns the GPU kernels on or off for products built from now on. */
export function setGpuKernels(on: boolean): void {
  enabled = on;
}

export function gpuKernelsEnabled(): boolean {
  return enabled;
}

function usable(x: MxArray, q: QuantizedWeight, rows: number): boolean {
  if (!enabled || rows > DECODE_GEMV_MAX_ROWS) return false;
  let ok = supported.get(q);
  if (ok === undefined) {
    ok = mx.getDevice() === "gpu" && gemvSupports(q);
    supported.set(q, ok);
  }
  return ok && x.dtype === q.scales.dtype;
}

/** x @ dequantize(q).T through the GEMV when it applies to these rows, else null. */
export function gpuQuantizedProduct(x: MxArray, q: QuantizedWeight, rows: number): MxArray | null {
  if (!usable(x, q, rows)) return null;
  gemvLaunches++;
  return quantizedGemv(x, q);
}

/**
 * rms_norm(h, norm, eps) @ w.T as one kernel (the GEMV with the norm fused in
 * front) when the GEMV applies, else null: then use linear(rmsNorm(h)). For the
 * decoder's norm -> q|k|v, norm -> gate|up and final norm -> lm_head; not wired
 * into decoder.ts yet (checked on the CPU by emulation, not yet run on a GPU).
 */
export function gpuNormedProduct(h: MxArray, norm: MxArray, eps: number, w: LinearWeight): MxArray | null {
  if (w.kind !== "quantized" || w.bias || w.cpuKernel || norm.dtype !== h.dtype) return null;
  const rows = h.size / h.dim(-1);
  if ((w.dense && rows >= DENSE_MIN_ROWS) || !usable(h, w.q, rows)) return null;
  gemvLaunches++;
  return quantizedGemvRmsNorm(h, norm, eps, w.q);
}
