// What the GPU micro-benchmarks share: the card's name, a median, and the time of one
// launch as a decode step sees it (wall time of one evaluated graph of many / count).
import { dlopen, FFIType } from "bun:ffi";
import * as mx from "../../src/mlx";

/** nvidia-smi's name, driver and memory of the card, or a line saying there is none. */
export function gpuName(): string {
  try {
    const r = Bun.spawnSync(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"], {
      stdout: "pipe",
      stderr: "ignore",
    });
    if (r.exitCode === 0) return r.stdout.toString().trim();
  } catch {
    // no nvidia-smi
  }
  return "unknown (no nvidia-smi)";
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
}

/** Seconds per product: one graph of `count` products (`run(i)`, cycling over weight sets), evaluated at once. */
export function timeProducts(run: (i: number) => mx.MxArray, count: number): number {
  return mx.tidy(() => {
    const ys: mx.MxArray[] = [];
    for (let i = 0; i < count; i++) ys.push(run(i));
    const t0 = performance.now();
    mx.evaluate(...ys);
    return (performance.now() - t0) / 1000 / count;
  });
}

/**
 * The driver's cuProfilerStart/Stop (libcuda.so.1), for ncu --profile-from-start off.
 * (MLX links the CUDA runtime statically: there is no libcudart to ask.)
 */
export function profilerCalls(): { start: () => number; stop: () => number } | null {
  try {
    const lib = dlopen("libcuda.so.1", {
      cuProfilerStart: { args: [], returns: FFIType.i32 },
      cuProfilerStop: { args: [], returns: FFIType.i32 },
    });
    return { start: () => lib.symbols.cuProfilerStart(), stop: () => lib.symbols.cuProfilerStop() };
  } catch {
    return null;
  }
}
