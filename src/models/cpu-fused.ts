// The decoder's layer on the CPU with each packed product's neighbours folded into it (ffi/cpu_qmm_packed.cpp):
//   RMSNorm -> q|k|v product           one node (then RoPE of q|k together, one node, without q/k norms)
//   o product + residual               one node
//   RMSNorm -> gate|up product -> SwiGLU one node
//   down product + residual            one node
// Each fold runs the very code of the op it replaces (cpu_norm.cpp's rows, a float32 add), so the logits are
// bit-equal to the plain layer's (test/models/cpu-fused.test.ts). Why: MLX hands every CPU node to its stream
// thread as a task, and its eval lets at most ~100 tasks queue, so a step of ~420 tasks made the engine thread
// wait on the stream thread instead of building the next step. With the KV cache's fold (its write and the
// attention in one node) a SmolLM2 step went from 700 nodes and ~420 tasks to 370 and ~180, decode on a 2-vCPU
// Sapphire Rapids VM from ~22 to ~17 ms a token (bench/results/cpu-fused-2026-12-08.md). A piece that does not
// fit (no packed copy, biases, post norms, another dtype) takes the plain ops. PENSIEVE_CPU_FUSE=0
// (mx.setCpuFolds) turns it off, and the KV cache's fold (mx.cpuCacheSdpa) with it.
import type { MxArray } from "../mlx";
import * as mx from "../mlx";
import type { DecoderLayerWeights, Norm } from "./decoder";
import { type LinearWeight, linear } from "./weights";

/** The packed copy `linear` would read for w on the CPU, or null (another kernel, a bias, a dense copy). */
function packedFor(w: LinearWeight | undefined): MxArray | null {
  if (!mx.cpuFoldsEnabled() || w?.kind !== "quantized" || !w.cpuKernel || w.bias || w.dense) return null;
  return mx.cpuProductPacked(w.q);
}

/** The norm's weight and eps when it is RMSNorm the fold can take for x (float32 both). */
function foldableNorm(norm: Norm, x: MxArray): { weight: MxArray; eps: number } | null {
  const rms = norm.rms;
  return rms && x.dtype === mx.Dtype.float32 && rms.weight.dtype === mx.Dtype.float32 ? rms : null;
}

/** Whether the CPU layer may fold anything: on, on the CPU, and the model's residual is the plain sum. */
export function cpuFuseApplies(plainResidual: boolean): boolean {
  return mx.cpuFoldsEnabled() && plainResidual && mx.getDevice() === "cpu";
}

/**
 * One layer: attention (`attend` takes q, k, v split from the q|k|v product at `qkvSplit` and returns the heads
 * merged) and the MLP, with the folds where they fit and the plain ops elsewhere.
 */
export function cpuFusedLayer(
  layer: DecoderLayerWeights,
  input: MxArray,
  qkvSplit: [number, number],
  attend: (q: MxArray, k: MxArray | null, v: MxArray) => MxArray,
): MxArray {
  const w = layer.attention;
  const inNorm = foldableNorm(layer.inputNorm, input);
  const qkvPacked = inNorm ? packedFor(w.qkv.product) : null;
  let merged: MxArray;
  if (qkvPacked && inNorm) {
    const y = mx.cpuPackedProduct(input, qkvPacked, { norm: inNorm });
    // Without q/k norms, q|k stay side by side: one RoPE node for both (attend's k = null).
    const together = w.qNorm === undefined && w.kNorm === undefined;
    const [q, k, v] = mx.split(y, together ? [qkvSplit[1]] : qkvSplit, -1) as MxArray[];
    merged = together ? attend(q as MxArray, null, k as MxArray) : attend(q as MxArray, k as MxArray, v as MxArray);
  } else {
    const [q, k, v] = w.qkv(layer.inputNorm(input));
    merged = attend(q, k, v);
  }
  const outPacked = layer.attentionOutputNorm || input.dtype !== mx.Dtype.float32 ? null : packedFor(w.out);
  let mid: MxArray;
  if (outPacked) mid = mx.cpuPackedProduct(merged, outPacked, { residual: input });
  else {
    let a = linear(merged, w.out);
    if (layer.attentionOutputNorm) a = layer.attentionOutputNorm(a);
    mid = mx.add(input, a);
  }
  const swiglu = layer.mlp.swiglu;
  const mlpNorm = foldableNorm(layer.mlpNorm, mid);
  const gateUpPacked = swiglu && mlpNorm ? packedFor(swiglu.gateUp) : null;
  if (!(swiglu && mlpNorm && gateUpPacked)) {
    let m = layer.mlp(layer.mlpNorm(mid));
    if (layer.mlpOutputNorm) m = layer.mlpOutputNorm(m);
    return mx.add(mid, m);
  }
  const act = mx.cpuPackedProduct(mid, gateUpPacked, { norm: mlpNorm, swiglu: true });
  const downPacked = layer.mlpOutputNorm ? null : packedFor(swiglu.down);
  if (downPacked) return mx.cpuPackedProduct(act, downPacked, { residual: mid });
  let m = linear(act, swiglu.down);
  if (layer.mlpOutputNorm) m = layer.mlpOutputNorm(m);
  return mx.add(mid, m);
}
