// L2 prefetch of the next product's weights from inside a GEMV launch (PENSIEVE_GPU_PREFETCH, off by default;
// src/models/gpu-fused.ts chains it: q|k|v -> o -> gate|up -> down -> the next layer's q|k|v).
// Measured slower (H100, full-size Phi-3, bench/results/gpu-h100-2026-12-07i): a one-row step as one CUDA graph
// took 2.00-2.06 ms of device time against 1.68 without it, pipelined 288-308 tok/s against 304-321; its GPU test
// (same logits bit for bit) passes. Kept as the place to try other schedules (prefetch after the loop, fewer bytes).
// A one-row decode product is latency-bound (H100, Nsight Compute: 0.9-1.7 TB/s of 3.35), and between two
// launches DRAM idles; each launch asks L2 for the bytes the next one will read, so that they stream during
// this launch's tail and the launch gap, and the next launch reads them from L2. Fire-and-forget: no result
// depends on it (the emulation compiles it to nothing). The source is PREFETCH_SOURCE (kernels-gemv-chunk.ts),
// which gemvSource prepends for a variant with `prefetch`.
import { type GemvSpec, gemvSource } from "./kernels-gemv";
import type { QuantizedWeight } from "./ops";

/** The inputs a prefetching launch takes after its own: the next product's weight, scales and biases. */
const PREFETCH_INPUTS = ["pf_w", "pf_s", "pf_b"];

const prefetchSpecs = new Map<string, GemvSpec>();
/** A spec's kernel that first prefetches the next product's weights (its own name: MLX keys kernels by name). */
export function prefetchSpec(spec: GemvSpec): GemvSpec {
  let s = prefetchSpecs.get(spec.name);
  if (!s) {
    if (!spec.variant) throw new Error(`${spec.name}: no variant to make a prefetching kernel from`);
    const variant = { ...spec.variant, prefetch: true };
    s = {
      ...spec,
      name: `${spec.name}_pf`,
      inputs: [...spec.inputs, ...PREFETCH_INPUTS],
      variant,
      source: gemvSource(variant),
    };
    prefetchSpecs.set(spec.name, s);
  }
  return s;
}

/** Template constants for prefetching `next`, or null where its arrays are not whole 16-byte pieces. */
export function prefetchTemplate(next: QuantizedWeight): { PF_W: number; PF_S: number } | null {
  const w = next.weight.nbytes;
  const s = next.scales.nbytes;
  if (!next.biases || next.biases.nbytes !== s || w % 16 !== 0 || s % 16 !== 0) return null;
  if (w >= 2 ** 31 || s >= 2 ** 31) return null;
  return { PF_W: w, PF_S: s };
}

/**
 * `spec` and `template`, or with `next` (a weight prefetchTemplate takes) the spec's prefetching kernel and
 * PF_W / PF_S: its plan's run() then takes prefetchInputs(next) after the variant's inputs.
 */
export function maybePrefetch(
  spec: GemvSpec,
  template: Record<string, number | boolean>,
  next?: QuantizedWeight | null,
): [GemvSpec, Record<string, number | boolean>] {
  const pf = next ? prefetchTemplate(next) : null;
  return pf ? [prefetchSpec(spec), { ...template, ...pf }] : [spec, template];
}

/** Whether plans made with `next` prefetch it (its arrays are whole 16-byte pieces). */
export const prefetches = (next: QuantizedWeight | null | undefined): next is QuantizedWeight =>
  !!next && prefetchTemplate(next) !== null;

/** next's arrays as a prefetching launch's trailing inputs. */
export const prefetchInputs = (next: QuantizedWeight) => [
  next.weight,
  next.scales,
  next.biases as NonNullable<QuantizedWeight["biases"]>,
];

let enabled = process.env.PENSIEVE_GPU_PREFETCH === "1";

/** Whether fused decode launches prefetch the next product's weights (forwards built from now on). */
export function gemvPrefetchEnabled(): boolean {
  return enabled;
}

/** Turns the prefetch on or off (tests compare both). */
export function setGemvPrefetch(on: boolean): void {
  enabled = on;
}
