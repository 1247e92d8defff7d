// MLX settings read from the environment that Pensieve gives a default of its own.
// MLX reads them with getenv when it first uses the GPU; Bun's process.env does not
// reach the C environment, so a default is set there with libc's setenv (overwrite 0:
// a value the user set stays).
import { dlopen, FFIType } from "bun:ffi";

/**
 * MLX_MAX_OPS_PER_BUFFER: MLX's CUDA backend launches a step's kernels as CUDA graphs of at
 * most this many nodes (100 on Hopper). A one-row decode step is ~230 nodes bound by the
 * GPU's kernel latencies, and the GPU starts a graph only once the host has built all of it;
 * at 25 it starts sooner. H100, full-size Phi-3, pipelined steps: 3.52-3.57 ms a token at 25
 * against 3.97-4.33 ms at the default (bench/results/gpu-h100-2026-12-07g, step-split).
 */
export const MLX_ENV_DEFAULTS: Readonly<Record<string, string>> = { MLX_MAX_OPS_PER_BUFFER: "25" };

/** Sets each default the environment lacks, in process.env and in the C environment MLX reads. */
export function applyMlxEnvDefaults(env: Record<string, string | undefined> = process.env): void {
  const missing = Object.entries(MLX_ENV_DEFAULTS).filter(([name]) => env[name] === undefined);
  if (missing.length === 0) return;
  let setenv: ((name: Buffer, value: Buffer, overwrite: number) => number) | null;
  try {
    const libc = dlopen(process.platform === "darwin" ? "libc.dylib" : "libc.so.6", {
      setenv: { args: [FFIType.ptr, FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
    });
    setenv = (name, value, overwrite) => libc.symbols.setenv(name, value, overwrite);
  } catch {
    setenv = null; // no libc to ask (another C library): MLX keeps its own defaults
  }
  for (const [name, value] of missing) {
    env[name] = value;
    if (setenv) setenv(Buffer.from(`${name}\0`), Buffer.from(`${value}\0`), 0);
  }
}
