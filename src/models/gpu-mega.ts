// The decoder's decode layer as one persistent CUDA kernel (src/mlx/kernels-layer.ts),
// off by default (PENSIEVE_GPU_MEGA=1 turns it on): where every piece of the fused
// path (gpu-fused.ts) applies to a layer's decode step (norm -> q|k|v -> RoPE,
// the attention over a float cache from reserveWhole, o + residual, norm -> gate|up
// -> SwiGLU, down + residual), the five kernels become one graph node. Anything
// else takes the fused path. The megakernel always stores k/v in the cache itself and
// merges its splits in the launch: its numerics are those of the fused path with
// the kernel writing k/v (PENSIEVE_GPU_FUSED_KV_WRITE, on by default) and PENSIEVE_GPU_FUSED_MERGE on, its default.
//
// The grid is every phase's blocks (layerBlocks: 2,016 for Phi-3's one row at one split), in
// blocks of the attention's warps; a block waits only on blocks that started before it,
// so it need not fit the GPU at once. PENSIEVE_GPU_MEGA_WARPS: the block's warps (4, the
// default, 8 or 16: the attention's warps too); PENSIEVE_GPU_MEGA_BLOCKS_PER_SM bounds the
// registers for that many blocks an SM (default 16 warps' worth: 128 registers).
// PENSIEVE_GPU_MEGA_PREFETCH=1: blocks that must wait prefetch their weights into L2 first.
import type { MxArray } from "../mlx";
import * as mx from "../mlx";
import { CustomKernel, type KernelPlan } from "../mlx/kernels";
import { ATTENTION_MAX_SPLITS, type DecodeAttention, mergedAttentionSplits } from "../mlx/kernels-attention";
import type { FusedRope } from "../mlx/kernels-gemv-fused";
import {
  LAYER_BLOCK_WARPS,
  type LayerConstants,
  type LayerShape,
  layerBlocks,
  layerKernel,
  layerOutputs,
  layerSyncWords,
  layerTemplate,
} from "../mlx/kernels-layer";
import type { DecoderLayerWeights } from "./decoder";
import { FUSED_MAX_ROWS, type FusedStep, fusable } from "./gpu-fused";
import type { AttentionBatch } from "./types";

let enabled = process.env.PENSIEVE_GPU_MEGA === "1";
const WARPS = Number(process.env.PENSIEVE_GPU_MEGA_WARPS ?? LAYER_BLOCK_WARPS);
/** A waiting block prefetches its weight rows into L2 first (kernels-layer.ts PREFETCH). */
const PREFETCH = process.env.PENSIEVE_GPU_MEGA_PREFETCH === "1";
/** Blocks an SM holds (registers bounded to 64K / their threads: 128 at 16 warps an SM). */
const PER_SM = Number(process.env.PENSIEVE_GPU_MEGA_BLOCKS_PER_SM ?? Math.max(1, 16 / WARPS));

/** The warps of the megakernel's blocks: its attention's at most (tests match the fused path's attention to them). */
export function megaBlockWarps(): number {
  return WARPS;
}

/** Turns the layer megakernel on or off for forwards built from now on (tests compare both). */
export function setGpuMega(on: boolean): void {
  enabled = on;
}

export function gpuMegaEnabled(): boolean {
  return enabled;
}

let launches = 0;
/** Layer megakernels added to graphs so far (tests check that a path really used it). */
export function megaLaunchCount(): number {
  return launches;
}

const kernels = new Map<number, CustomKernel>();
interface Site {
  outW: mx.QuantizedWeight;
  gateUpW: mx.QuantizedWeight;
  downW: mx.QuantizedWeight;
  mlpNorm: { weight: MxArray; eps: number };
  shape: LayerShape;
  constants: LayerConstants;
  /** By splits * 64 + rows. */
  plans: Map<number, KernelPlan>;
}
// Per q|k|v weight (one per layer): the layer's other weights and plans, or null (it does not fit).
const sites = new WeakMap<object, Site | null>();

function layerSite(
  step: FusedStep,
  shape: MegaShape,
  layer: DecoderLayerWeights,
  hidden: number,
  inNorm: { weight: MxArray; eps: number },
  qkvW: mx.QuantizedWeight,
  kr: FusedRope,
  attention: DecodeAttention,
): Site | null {
  const dtype = step.dtype;
  const outW = layer.attentionOutputNorm ? null : fusable(layer.attention.out, dtype);
  const mlpNorm = layer.mlpNorm.rms;
  const swiglu = layer.mlp.swiglu;
  const gateUpW = mlpNorm && swiglu ? fusable(swiglu.gateUp, dtype) : null;
  const downW = swiglu && !layer.mlpOutputNorm ? fusable(swiglu.down, dtype) : null;
  if (!outW || !mlpNorm || !gateUpW || !downW) return null;
  const intermediate = gateUpW.weight.dim(0) / 2;
  const kIn = (q: mx.QuantizedWeight) => (q.weight.dim(1) * 32) / q.bits;
  const qs = shape.numHeads * shape.headDim;
  if (kIn(qkvW) !== hidden || kIn(outW) !== qs || outW.weight.dim(0) !== hidden) return null;
  if (kIn(gateUpW) !== hidden || kIn(downW) !== intermediate || downW.weight.dim(0) !== hidden) return null;
  return {
    outW,
    gateUpW,
    downW,
    mlpNorm,
    shape: {
      dtype,
      rows: 1,
      hidden,
      intermediate,
      heads: shape.numHeads,
      kvHeads: shape.numKvHeads,
      headDim: shape.headDim,
    },
    constants: {
      groups: [qkvW.groupSize, outW.groupSize, gateUpW.groupSize, downW.groupSize],
      eps1: inNorm.eps,
      eps2: mlpNorm.eps,
      traditional: kr.traditional,
      scale: attention.scale,
    },
    plans: new Map(),
  };
}
// Tickets, phase counts and split tickets per layer (its q|k|v weight): zero between launches.
const syncs = new WeakMap<object, MxArray>();

function syncState(site: object, size: number): MxArray {
  let s = syncs.get(site);
  if (!s || s.size < size) {
    s?.dispose();
    s = mx.keep(mx.zeros([size], mx.Dtype.int32));
    mx.evaluate(s);
    syncs.set(site, s);
  }
  return s;
}

/**
 * A launch plan of the layer megakernel. run() takes DECODE_LAYER_KERNEL's inputs: x [B, 1, D],
 * norm1, q|k|v (weight, scales, biases), pos int32 [B], rope_cs (ropeTable) float32 [B, HD], kc, vc (the whole cache
 * buffers), o (3), norm2, gate|up (3), down (3), sync (int32 [layerSyncWords], zero); output 0 is
 * the layer's output [B, 1, D]. `splits`: mergedAttentionSplits of the longest row's keys (pos + 1).
 */
export function layerPlan(s: LayerShape, c: LayerConstants, splits: number): KernelPlan {
  const template = layerTemplate(s, c, WARPS, PREFETCH);
  const warps = template.AW as number;
  let kernel = kernels.get(warps);
  if (!kernel) {
    kernel = new CustomKernel(layerKernel(warps, PER_SM));
    kernels.set(warps, kernel);
  }
  return kernel.plan({
    outputs: layerOutputs(s, ATTENTION_MAX_SPLITS, mx.Dtype.float32),
    grid: [layerBlocks(template, splits) * warps * 32, 1, 1],
    threadgroup: [warps * 32, 1, 1],
    template: { T: { dtype: s.dtype }, ...template },
  });
}

export interface MegaShape {
  numHeads: number;
  numKvHeads: number;
  headDim: number;
}

/**
 * One decode layer (L = 1) as one kernel, or null where the layer does not fit
 * every piece (the caller then takes the fused path). `qkvW`, `kr` and `inNorm`
 * are what the fused decode branch already checked; `attention` its kernel.
 */
export function megaLayer(
  step: FusedStep,
  shape: MegaShape,
  layer: DecoderLayerWeights,
  index: number,
  input: MxArray,
  keys: number,
  batch: AttentionBatch,
  inNorm: { weight: MxArray; eps: number },
  qkvW: mx.QuantizedWeight,
  kr: FusedRope,
  attention: DecodeAttention,
): MxArray | null {
  // Past 4 rows the fused path's GEMVs take tensor cores (kernels-gemv-mma.ts); the phases are the scalar GEMV's.
  if (!enabled || step.L !== 1 || step.B > FUSED_MAX_ROWS) return null;
  const { dtype, B } = step;
  // What the layer's weights allow is found once per layer (its q|k|v weight): a step only runs the plan.
  let site = sites.get(qkvW);
  if (site === undefined) {
    site = layerSite(step, shape, layer, input.dim(-1), inNorm, qkvW, kr, attention);
    sites.set(qkvW, site);
  }
  if (!site) return null;
  const writable = batch.reserveWhole?.(index, dtype) ?? null;
  if (!writable) return null;
  launches++;
  const splits = mergedAttentionSplits(keys);
  const key = splits * 64 + B;
  let plan = site.plans.get(key);
  if (!plan) {
    plan = layerPlan({ ...site.shape, rows: B }, site.constants, splits);
    site.plans.set(key, plan);
  }
  const { outW, gateUpW, downW, mlpNorm } = site;
  const q = (w: mx.QuantizedWeight) => [w.weight, w.scales, w.biases as MxArray];
  const sync = syncState(qkvW, layerSyncWords(B, shape.numKvHeads));
  const inputs = [
    input,
    inNorm.weight,
    ...q(qkvW),
    step.positions,
    step.ropeTableFor(kr),
    writable[0],
    writable[1],
    ...q(outW),
    mlpNorm.weight,
    ...q(gateUpW),
    ...q(downW),
    sync,
  ];
  return plan.run(inputs)[0] as MxArray;
}
