// Where the decoder's linear layers use Pensieve's own GPU kernels
// (src/mlx/kernels-gemv.ts) instead of MLX's: 4-bit weights on CUDA, products
// of at most GEMV_MAX_ROWS rows (decode steps). PENSIEVE_GPU_GEMV=0 turns it
// off (A/B runs); bench/gpu/gemv.ts measures it against MLX's quantized_matmul.
import type { MxArray, QuantizedWeight } from "../mlx";
import * as mx from "../mlx";
import { GEMV_MAX_ROWS, gemvSupports, quantizedGemv } from "../mlx/kernels-gemv";

let enabled = process.env.PENSIEVE_GPU_GEMV !== "0";
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

/** x @ dequantize(q).T through the GEMV when it applies to these rows, else null. */
export function gpuQuantizedProduct(x: MxArray, q: QuantizedWeight, rows: number): MxArray | null {
  if (!enabled || rows > GEMV_MAX_ROWS) return null;
  let ok = supported.get(q);
  if (ok === undefined) {
    ok = mx.getDevice() === "gpu" && gemvSupports(q);
    supported.set(q, ok);
  }
  if (!ok || x.dtype !== q.scales.dtype) return null;
  gemvLaunches++;
  return quantizedGemv(x, q);
}
