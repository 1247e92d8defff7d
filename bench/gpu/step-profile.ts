// One decode step of a model, bracketed by cudaProfilerStart/Stop, for Nsight
// Compute to list every kernel of the step with its device time:
//   ncu --profile-from-start off --metrics gpu__time_duration.sum --csv \
//     bun bench/gpu/step-profile.ts MODEL [PROMPT_TOKENS]
// then `bun bench/gpu/ncu-summary.ts FILE.csv`. The step runs unpipelined
// (evaluated alone), after warm-up steps, so compilation stays out of it.
// PENSIEVE_GPU_GEMV=0 profiles the step without Pensieve's GEMV; PENSIEVE_GPU_FUSED=1
// profiles the fused decode path (src/models/gpu-fused.ts). Also prints the host
// time to build a step's graph (TypeScript + FFI, before evaluation).
import { dlopen, FFIType } from "bun:ffi";
import { cacheFor, prefill } from "../../src/engine/one-sequence";
import * as mx from "../../src/mlx";
import { loadModel } from "../../src/models/loader";

const [modelPath, promptArg] = process.argv.slice(2);
if (!modelPath) throw new Error("usage: step-profile.ts MODEL [PROMPT_TOKENS]");
// PENSIEVE_STEP_DEVICE=cpu: the same step on the CPU (host graph-building time only; no profiler there).
mx.setDevice(process.env.PENSIEVE_STEP_DEVICE === "cpu" ? "cpu" : "gpu");
const { model } = loadModel(modelPath);
const prompt = Array.from({ length: Number(promptArg ?? 128) }, (_, i) => 100 + ((i * 7919) % 20000));

/**
 * The driver's cuProfilerStart/Stop (libcuda.so.1), for ncu --profile-from-start off.
 * (MLX links the CUDA runtime statically: there is no libcudart to ask.)
 */
function profilerCalls(): { start: () => number; stop: () => number } | null {
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

const cache = cacheFor(model);
let token = mx.tidy(() => mx.argmax(prefill(model, cache, prompt), -1).item() as number);
let buildMs = 0;
const step = () => {
  const t0 = performance.now();
  const next = mx.tidy(() => mx.argmax(model.forward(mx.int32([token], [1, 1]), cache), -1));
  buildMs += performance.now() - t0;
  mx.evaluate(next);
  token = next.item() as number;
  next.dispose();
};
for (let i = 0; i < 4; i++) step();
buildMs = 0;
for (let i = 0; i < 8; i++) step();
console.error(`[step-profile] graph building (host): ${(buildMs / 8).toFixed(3)} ms per step`);
mx.synchronize();
const profiler = profilerCalls();
const t0 = performance.now();
console.error(`[step-profile] profiler ${profiler ? `start ${profiler.start()}` : "not found (no libcuda.so.1)"}`);
step();
mx.synchronize();
if (profiler) console.error(`[step-profile] stop ${profiler.stop()}`);
console.error(`[step-profile] one step in ${(performance.now() - t0).toFixed(1)} ms (under the profiler)`);
cache.dispose();
model.dispose();
