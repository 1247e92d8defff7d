// One decode step of a model, bracketed by cudaProfilerStart/Stop, for Nsight
// Compute to list every kernel of the step with its device time:
//   ncu --profile-from-start off --metrics gpu__time_duration.sum --csv \
//     bun bench/gpu/step-profile.ts MODEL [PROMPT_TOKENS]
// then `bun bench/gpu/ncu-summary.ts FILE.csv`. The step runs unpipelined
// (evaluated alone), after warm-up steps, so compilation stays out of it.
// PENSIEVE_GPU_GEMV=0 profiles the step without Pensieve's GEMV; PENSIEVE_GPU_FUSED=0
// profiles it without the fused decode path (src/models/gpu-fused.ts, the default). Also prints the host
// time to build a step's graph (TypeScript + FFI, before evaluation).
import { cacheFor, prefill } from "../../src/engine/one-sequence";
import * as mx from "../../src/mlx";
import { lib } from "../../src/mlx/ffi";
import { fusedLaunchCount } from "../../src/models/gpu-fused";
import { loadModel } from "../../src/models/loader";
import { profilerCalls } from "./timing";

const [modelPath, promptArg] = process.argv.slice(2);
if (!modelPath) throw new Error("usage: step-profile.ts MODEL [PROMPT_TOKENS]");
// PENSIEVE_STEP_DEVICE=cpu: the same step on the CPU (host graph-building time only; no profiler there).
mx.setDevice(process.env.PENSIEVE_STEP_DEVICE === "cpu" ? "cpu" : "gpu");
const { model } = loadModel(modelPath);
const prompt = Array.from({ length: Number(promptArg ?? 128) }, (_, i) => 100 + ((i * 7919) % 20000));

const cache = cacheFor(model);
let token = mx.tidy(() => mx.argmax(prefill(model, cache, prompt), -1).item() as number);
/** Shim calls that do not add a node to the graph (frees, queries, evaluation). */
const notAnOp =
  /^pv_(last_error|mlx_version|abi_version|free|free_many|retain|ndim|shape|dtype|size|nbytes|read|eval|async_eval|synchronize|cpu_(set_)?isa.*|cpu_(set_)?threads|get_device|set_device|gpu_available|.*_memory|set_.*_limit|clear_cache|live_handles|map_.*)$/;

/**
 * Counts the shim calls fn makes, by symbol (fn builds a step's graph: each
 * array-making call is one MLX primitive, the cost the host pays per step).
 */
function countCalls<T>(fn: () => T): { result: T; calls: Map<string, number> } {
  const table = lib as unknown as Record<string, (...args: unknown[]) => unknown>;
  const calls = new Map<string, number>();
  const saved = new Map<string, (...args: unknown[]) => unknown>();
  for (const [name, f] of Object.entries(table)) {
    if (typeof f !== "function" || notAnOp.test(name)) continue;
    saved.set(name, f);
    table[name] = (...args: unknown[]) => {
      calls.set(name, (calls.get(name) ?? 0) + 1);
      return f(...args);
    };
  }
  try {
    return { result: fn(), calls };
  } finally {
    for (const [name, f] of saved) table[name] = f;
  }
}

// PENSIEVE_STEP_TOKENS=L (2..16): a speculative verify pass of L tokens instead (logits of every position; the
// cache is cut back to one new token after each, so every pass sees the same context).
const L = Number(process.env.PENSIEVE_STEP_TOKENS ?? 1);
let buildMs = 0;
const step = () => {
  const t0 = performance.now();
  const start = cache.offset;
  cache.growFor(L);
  const inputs = mx.int32(Array(L).fill(token), [1, L]);
  const next = mx.tidy(() =>
    mx.argmax(mx.reshape(model.forward(inputs, cache, { logits: L > 1 ? "all" : "last" }), [L, -1]), -1),
  );
  inputs.dispose();
  buildMs += performance.now() - t0;
  mx.evaluate(next);
  token = (next.read() as Int32Array)[L - 1] as number;
  next.dispose();
  if (L > 1) cache.truncate(start + 1);
};
for (let i = 0; i < 4; i++) step();
{
  const launches = fusedLaunchCount();
  const start = cache.offset;
  cache.growFor(L);
  const { result, calls } = countCalls(() =>
    mx.tidy(() =>
      mx.argmax(model.forward(mx.int32(Array(L).fill(token), [1, L]), cache, { logits: L > 1 ? "all" : "last" }), -1),
    ),
  );
  mx.evaluate(result);
  token = (mx.reshape(result, [-1]).read() as Int32Array)[L - 1] as number;
  result.dispose();
  if (L > 1) cache.truncate(start + 1);
  const total = [...calls.values()].reduce((a, b) => a + b, 0);
  const top = [...calls.entries()].sort((a, b) => b[1] - a[1]).map(([n, c]) => `${n.replace(/^pv_/, "")} ${c}`);
  console.error(
    `[step-profile] graph ops per step (shim calls): ${total}, fused kernels ${fusedLaunchCount() - launches}`,
  );
  console.error(`[step-profile] by op: ${top.join(", ")}`);
}
buildMs = 0;
for (let i = 0; i < 8; i++) step();
console.error(`[step-profile] graph building (host): ${(buildMs / 8).toFixed(3)} ms per step`);
mx.synchronize();
const profiler = mx.getDevice() === "gpu" ? profilerCalls() : null;
const t0 = performance.now();
console.error(`[step-profile] profiler ${profiler ? `start ${profiler.start()}` : "not found (no libcuda.so.1)"}`);
step();
mx.synchronize();
if (profiler) console.error(`[step-profile] stop ${profiler.stop()}`);
console.error(`[step-profile] one step in ${(performance.now() - t0).toFixed(1)} ms (under the profiler)`);
cache.dispose();
model.dispose();
