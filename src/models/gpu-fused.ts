// The decoder's fused CUDA decode path (PENSIEVE_GPU_FUSED=1): for forwards of
// at most FUSED_MAX_ROWS rows (decode steps), each layer is
//   rms_norm -> q|k|v product -> RoPE        one kernel (kernels-gemv-fused.ts),
//                                            k and v written in the cache's layout
//   KV-cache write                           MLX's slice updates (in place)
//   attention over the cache                 one kernel (kernels-attention.ts; two
//                                            past 512 keys per split: flash-decoding)
//   o product + residual                     one kernel
//   rms_norm -> gate|up product -> SwiGLU    one kernel
//   down product + residual                  one kernel
// and the final norm -> lm_head one kernel. Each piece falls back to MLX's ops
// where the layer does not fit it (biases, q/k norms, partial rotary, mixed
// RoPE regimes, post-norms, tensor parallelism, weights the GEMV does not take).
import type { MxArray } from "../mlx";
import * as mx from "../mlx";
import { decodeAttention, decodeAttentionSupports } from "../mlx/kernels-attention";
import { gemvSupports, quantizedGemvRmsNorm } from "../mlx/kernels-gemv";
import {
  type FusedRope,
  quantizedGemvNormRope,
  quantizedGemvNormRopeQkv,
  quantizedGemvNormSwiglu,
  quantizedGemvResidual,
} from "../mlx/kernels-gemv-fused";
import type { Rope } from "./rope";
import type { LinearWeight } from "./weights";

let enabled = process.env.PENSIEVE_GPU_FUSED === "1";

/** Rows (B * L) up to which forwards take the fused path. */
export const FUSED_MAX_ROWS = 4;

/** Turns the fused decode path on or off for forwards built from now on. */
export function setGpuFused(on: boolean): void {
  enabled = on;
}

export function gpuFusedEnabled(): boolean {
  return enabled;
}

let launches = 0;
/** Fused kernels added to graphs so far (tests check that a path really used them). */
export function fusedLaunchCount(): number {
  return launches;
}

const cudaWeights = new WeakMap<object, boolean>();

/** Whether a forward of `rows` rows in `dtype` takes the fused path at all. */
export function fusedForward(rows: number): boolean {
  return enabled && rows <= FUSED_MAX_ROWS && mx.getDevice() === "gpu";
}

/** The quantized weight when the GEMV family takes it for x (no bias, 4-bit affine, x in the scales' dtype). */
export function fusable(w: LinearWeight | undefined, x: MxArray): mx.QuantizedWeight | null {
  if (w?.kind !== "quantized" || w.bias || w.cpuKernel) return null;
  let ok = cudaWeights.get(w.q);
  if (ok === undefined) {
    ok = gemvSupports(w.q);
    cudaWeights.set(w.q, ok);
  }
  return ok && x.dtype === w.q.scales.dtype ? w.q : null;
}

/** Each row's RoPE position as int32 [B*L]: the view's offset (a number or int32 [B]) plus 0..L-1. */
export function fusedPositions(offset: number | MxArray, B: number, L: number): MxArray {
  if (typeof offset === "number") return mx.int32(Array.from({ length: B * L }, (_, i) => offset + (i % L)));
  const cols = mx.reshape(mx.arange(0, L), [1, L]);
  return mx.reshape(mx.add(mx.reshape(mx.astype(offset, mx.Dtype.int32), [B, 1]), cols), [B * L]);
}

/** The kernel form of a layer's RoPE for these rows, or null (mixed regimes, no kernel form). */
export function fusedRope(
  rope: Rope,
  regimes: number[],
  headDim: number,
  heads: number,
  kvHeads: number,
): FusedRope | null {
  const first = regimes[0] ?? 0;
  if (!rope.kernel || !regimes.every((r) => r === first)) return null;
  const spec = rope.kernel(first);
  if (!spec) return null;
  return { ...spec, headDim, rotated: (heads + kvHeads) * headDim };
}

/** norm -> q|k|v (-> RoPE when `rope`) in one kernel. */
export function normedQkv(
  h: MxArray,
  norm: { weight: MxArray; eps: number },
  q: mx.QuantizedWeight,
  rope: FusedRope | null,
  positions: MxArray,
): MxArray {
  launches++;
  if (!rope) return quantizedGemvRmsNorm(h, norm.weight, norm.eps, q);
  return quantizedGemvNormRope(h, norm.weight, norm.eps, q, positions, rope);
}

/** norm -> gate|up -> silu(gate) * up in one kernel. */
export function normedSwiglu(h: MxArray, norm: { weight: MxArray; eps: number }, q: mx.QuantizedWeight): MxArray {
  launches++;
  return quantizedGemvNormSwiglu(h, norm.weight, norm.eps, q);
}

/** res + x @ W.T in one kernel. */
export function productPlusResidual(x: MxArray, q: mx.QuantizedWeight, res: MxArray): MxArray {
  launches++;
  return quantizedGemvResidual(x, q, res);
}

/** norm -> product (the final norm -> lm_head) in one kernel. */
export function normedProduct(h: MxArray, norm: { weight: MxArray; eps: number }, q: mx.QuantizedWeight): MxArray {
  launches++;
  return quantizedGemvRmsNorm(h, norm.weight, norm.eps, q);
}

/** norm -> q|k|v -> RoPE for one new token per row: q [B, 1, H*D], k and v [B, Hkv, 1, D] (the cache's layout). */
export function normedQkvDecode(
  h: MxArray,
  norm: { weight: MxArray; eps: number },
  q: mx.QuantizedWeight,
  rope: FusedRope,
  positions: MxArray,
  kvHeads: number,
): [MxArray, MxArray, MxArray] {
  launches++;
  return quantizedGemvNormRopeQkv(h, norm.weight, norm.eps, q, positions, rope, kvHeads);
}

/** Whether decode attention runs in Pensieve's kernel for these heads (else MLX's sdpa). */
export function attentionKernelFor(heads: number, kvHeads: number, headDim: number, dtype: mx.Dtype): boolean {
  return process.env.PENSIEVE_GPU_FUSED_ATTENTION !== "0" && decodeAttentionSupports(heads, kvHeads, headDim, dtype);
}

/**
 * softmax(scale q k^T) v over the whole cache buffers kc, vc [B, Hkv, capacity, D]
 * for q [B, 1, H*D]; each row's keys are 0..positions[b]; `keys` = the longest
 * row's count (picks the splits). Returns [B, 1, H*D].
 */
export function cacheAttention(
  q: MxArray,
  kc: MxArray,
  vc: MxArray,
  positions: MxArray,
  scale: number,
  heads: number,
  keys: number,
): MxArray {
  launches++;
  return decodeAttention(q, kc, vc, positions, scale, heads, keys);
}
