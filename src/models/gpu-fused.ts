// The decoder's fused CUDA decode path (on by default; PENSIEVE_GPU_FUSED=0 turns
// it off): for decode steps of 1..4 rows (PENSIEVE_GPU_FUSED_MAX_ROWS sets it, up to 32 with the GEMV's
// tensor cores), each layer is
//   rms_norm -> q|k|v product -> RoPE        one kernel (kernels-gemv-fused.ts),
//                                            k and v written in the cache's layout
//   KV-cache write + attention over the      one kernel (kernels-attention.ts: stores the new
//   cache                                    k/v, splits merged by the last block; without
//                                            the in-kernel write, MLX's slice updates first)
//   o product + residual                     one kernel
//   rms_norm -> gate|up product -> SwiGLU    one kernel
//   down product + residual                  one kernel
// and the final norm -> lm_head one kernel. Each piece falls back to MLX's ops
// where the layer does not fit it (biases, q/k norms, partial rotary, mixed
// RoPE regimes, post-norms, tensor parallelism, weights the GEMV does not take).
//
// A step is CPU-bound (MLX encodes each primitive on the engine thread), so the
// per-call cost matters: launch plans are kept per weight and (B, L) and run
// directly, without keys, shape queries or checks (FusedStep).
// Over 400 lines: the fused step, the rules for which rows and verify passes take it, and the verify pass's
// attention share this module's switches, plan caches and split counters; apart they would export them all.
import type { MxArray } from "../mlx";
import * as mx from "../mlx";
import { type KernelPlan, kernelLanguage } from "../mlx/kernels";
import {
  attentionWarps,
  DecodeAttention,
  decodeAttentionSupports,
  mergedAttentionSplits,
} from "../mlx/kernels-attention";
import { VERIFY_MAX_TOKENS, VerifyAttention, verifyAttentionSupports } from "../mlx/kernels-attention-verify";
import { GEMV_MAX_ROWS, type GemvConfig, gemvConfig, gemvMmaFromRows, gemvSupports } from "../mlx/kernels-gemv";
import { GEMV_MMA_MAX_ROWS, mmaBucket } from "../mlx/kernels-gemv-mma";
import { type FusedRope, fusedPlans, mmaPrenorm, pairedConfig, ropeTable } from "../mlx/kernels-gemv-fused";
import type { Rope } from "./rope";
import type { AttentionBatch, ForwardView } from "./types";
import type { LinearWeight } from "./weights";

// On by default: single-stream decode on an H100 went 166 -> 263 tok/s (mlx-lm 181), with greedy tokens equal
// to the unfused path's (bench/results/gpu-h100-2026-12-06d/).
let enabled = process.env.PENSIEVE_GPU_FUSED !== "0";
const attentionKernel = process.env.PENSIEVE_GPU_FUSED_ATTENTION !== "0";
// The attention kernel stores the new key/value in the cache itself (no slice updates: 64 graph nodes fewer a
// Phi-3 step, which is host-bound), its splits merged in the same launch; PENSIEVE_GPU_FUSED_KV_WRITE=0 goes back
// to MLX's slice updates. On by default since 2026-12-07 (H100, bench/results/gpu-h100-2026-12-07i): pipelined
// one-row steps 315-353 tok/s against 292-321 in 5 alternating pairs, MLX's host work 1.1-1.7 ms a step against
// 1.8-2.2. (On an H200 it had measured 261 against 272 while the step was still device-bound: gpu-h200-2026-12-06f.)
const kvWriteDefault = () => process.env.PENSIEVE_GPU_FUSED_KV_WRITE !== "0";
let kernelWritesKv = kvWriteDefault();

/** Whether the attention kernel stores the new keys/values itself (tests compare both; null: the default). */
export function setKernelWritesKv(on: boolean | null): void {
  kernelWritesKv = on ?? kvWriteDefault();
}

export function attentionWritesKv(): boolean {
  return kernelWritesKv;
}

// The most warps of the attention kernel's blocks: 16; PENSIEVE_GPU_FUSED_ATTENTION_WARPS=4 matches the layer
// megakernel's numerics (its blocks have 4 warps), for comparing the two.
const attentionWarpsDefault = () => Number(process.env.PENSIEVE_GPU_FUSED_ATTENTION_WARPS ?? 16);
let attentionWarpsMost = attentionWarpsDefault();
/** The most warps of the attention kernel's blocks for forwards built from now on (null: the default). */
export function setFusedAttentionWarps(most: number | null): void {
  attentionWarpsMost = most ?? attentionWarpsDefault();
}

/** Rows (B * L) up to which the fused kernels are built with the scalar GEMV (registers and unrolled code grow with the rows). */
export const FUSED_MAX_ROWS = 4;

/**
 * The most rows PENSIEVE_GPU_FUSED_MAX_ROWS may ask for: 32 where the GEMV family takes tensor cores from 5 rows
 * of x or fewer (PENSIEVE_GEMV_MMA, 3 by default: kernels-gemv-mma.ts, whose builds stay small at any rows and
 * are shared by 5-8, 9-16 and 17-32 rows), else 4 (the scalar GEMV's registers and NVRTC time grow with the rows).
 */
export function fusedRowCap(): number {
  return gemvMmaFromRows() <= 5 ? GEMV_MMA_MAX_ROWS : FUSED_MAX_ROWS;
}

/**
 * Rows up to which forwards take the fused path by default: 4. On an H100 (bench/results/gpu-h100-2026-12-07e/) a
 * decode step of 2, 3 and 4 rows took 4.4-4.6, 5.2-5.5 and 6.2-6.3 ms fused against 8.5, ~8.7 and 8.9 through MLX's
 * ops (~8-11 ms whatever the rows, with the dense copies or our 4-bit products alike); 2 streams over HTTP 320
 * and 291 against 202 and 186 tok/s, 4 streams 449 against 317-326 once compiled. Each row count is its own set of
 * NVRTC compiles (~5.5 s on the engine thread at first use), so the engine holds batches of 2+ rows on MLX's ops
 * until it has built that count's kernels while idle (holdFusedRowsUntilBuilt, fusedRowsBuilt): 8 concurrent
 * sessions on an H200 once waited 3 x 5.5 s for them (bench/results/gpu-h200-2026-12-06f/replay).
 * PENSIEVE_GPU_FUSED_MAX_ROWS (1..fusedRowCap()) sets it.
 */
export const FUSED_DEFAULT_ROWS = FUSED_MAX_ROWS;

/** The row limit PENSIEVE_GPU_FUSED_MAX_ROWS asks for: an integer 1..fusedRowCap(), else the default. */
export function fusedRowLimitFrom(value: string | undefined): number {
  const n = Number(value);
  return value && Number.isInteger(n) && n >= 1 && n <= fusedRowCap() ? n : FUSED_DEFAULT_ROWS;
}

let rowLimit = fusedRowLimitFrom(process.env.PENSIEVE_GPU_FUSED_MAX_ROWS);
// Rows whose kernels are built (1..builtRows take the path): all unless the engine holds them.
let builtRows = GEMV_MMA_MAX_ROWS;

/** Sets the rows up to which forwards built from now on take the fused path (null: the default). */
export function setFusedRowLimit(rows: number | null): void {
  rowLimit =
    rows === null ? fusedRowLimitFrom(process.env.PENSIEVE_GPU_FUSED_MAX_ROWS) : fusedRowLimitFrom(String(rows));
}

export function fusedRowLimit(): number {
  return rowLimit;
}

/**
 * From now on forwards of 2+ rows take MLX's ops until fusedRowsBuilt says their kernels are built; returns
 * the row counts to build, in order (none when the path is off): 2..the limit, or with tensor cores past 4 rows
 * one count per build (2, 3, 4, then 8, 16, 32: mmaBucket), capped at the limit.
 */
export function holdFusedRowsUntilBuilt(): number[] {
  builtRows = 1;
  if (!enabled) return [];
  const counts = new Set<number>();
  const shared = fusedRowCap() > FUSED_MAX_ROWS;
  for (let r = 2; r <= rowLimit; r++) counts.add(shared ? Math.min(mmaBucket(r), rowLimit) : r);
  return [...counts];
}

/** Rows 1..rows may take the fused path (their kernels are built, or are being built by the caller). */
export function fusedRowsBuilt(rows: number): void {
  builtRows = Math.min(GEMV_MMA_MAX_ROWS, Math.max(1, rows));
}

/** Rows up to which forwards take the fused path now: the limit, less rows whose kernels the engine has not built. */
export function fusedRowsNow(): number {
  return Math.min(rowLimit, builtRows);
}

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

// PENSIEVE_GPU_VERIFY_MMA=1: verify passes take gemvConfig's choice (tensor cores from PENSIEVE_GEMV_MMA's rows)
// while one-token steps keep the scalar body. A pass then sums otherwise than its steps (fp32 against fp16
// partials of 8 products), as its attention already does: greedy exactness rests on the tie margin
// (speculative-verify.ts), which must exceed the drift (bench/gpu/verify-drift.ts; not yet measured with it, so
// off by default). H100, with PENSIEVE_GPU_FUSED_VERIFY=1 (bench/results/gpu-h100-2026-12-08): passes of 1, 2,
// 4 and 8 drafts 1.09x / 1.22x / 1.36x / 1.72x a 3.46 ms one-token step, against 3.0-3.5x for 8 drafts on the
// scalar body.
let verifyTensorCores = process.env.PENSIEVE_GPU_VERIFY_MMA === "1";

/** Whether verify passes built from now on may take tensor cores while one-token steps keep the scalar body. */
export function setVerifyTensorCores(on: boolean | null): void {
  verifyTensorCores = on === null ? process.env.PENSIEVE_GPU_VERIFY_MMA === "1" : on;
}

/**
 * The most rows of x a forward of `tokensPerRow` tokens a row may give the fused kernels: a row of 2+ tokens
 * sums with the scalar GEMV (FusedStep's #config), built for at most GEMV_MAX_ROWS, unless every step takes
 * tensor cores or verify passes may (PENSIEVE_GPU_VERIFY_MMA=1). (A 17-token forward under
 * PENSIEVE_GPU_FUSED_MAX_ROWS=32 failed there on the H100.)
 */
export function fusedRowsFor(tokensPerRow: number, limit: number, mmaFromRows: number): number {
  return tokensPerRow > 1 && mmaFromRows > 1 && !verifyTensorCores ? Math.min(limit, GEMV_MAX_ROWS) : limit;
}

/** Whether a forward of `rows` rows of x (B * L, L tokens a row) takes the fused path at all. */
export function fusedForward(rows: number, tokensPerRow = 1): boolean {
  return enabled && rows <= fusedRowsFor(tokensPerRow, fusedRowsNow(), gemvMmaFromRows()) && mx.getDevice() === "gpu";
}

const cudaWeights = new WeakMap<object, boolean>();

/** The quantized weight when the GEMV family takes it for activations in `dtype` (no bias, 4-bit affine). */
export function fusable(w: LinearWeight | undefined, dtype: mx.Dtype): mx.QuantizedWeight | null {
  if (w?.kind !== "quantized" || w.bias || w.cpuKernel) return null;
  let ok = cudaWeights.get(w.q);
  if (ok === undefined) {
    ok = gemvSupports(w.q);
    cudaWeights.set(w.q, ok);
  }
  return ok && dtype === w.q.scales.dtype ? w.q : null;
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

type Norm = { weight: MxArray; eps: number };

// Plans per weight, by kind and (B, L).
const plansByWeight = new WeakMap<object, Map<number, KernelPlan>>();
const QKV = 1;
const QKV_DECODE = 2;
const RESIDUAL = 3;
const SWIGLU = 4;
const NORMED = 5;
/** Slots per kind: (B, L) as B * 32 + L, B up to 64. */
const SLOTS = 4096;

/** The value kept for (owner, slot), made on first use. */
function keptFor<V>(byOwner: WeakMap<object, Map<number, V>>, owner: object, slot: number, make: () => V): V {
  let m = byOwner.get(owner);
  if (!m) {
    m = new Map();
    byOwner.set(owner, m);
  }
  let v = m.get(slot);
  if (v === undefined) {
    v = make();
    m.set(slot, v);
  }
  return v;
}

function planFor(owner: object, slot: number, make: () => KernelPlan): KernelPlan {
  return keptFor(plansByWeight, owner, slot, make);
}

const attentionByScale = new Map<number, DecodeAttention[]>();

// With the kernel writing the cache, split attention merged by its last block (PENSIEVE_GPU_FUSED_MERGE=0: a second kernel merges).
const mergedSplits = process.env.PENSIEVE_GPU_FUSED_MERGE !== "0";
// Ticket counters of the merged split attention, per call site and size: kernels of one
// site never overlap (each layer waits for the one before), so one zeroed buffer serves every step.
const countersBySite = new WeakMap<object, Map<number, MxArray>>();

function splitCounter(site: object, size: number): MxArray {
  return keptFor(countersBySite, site, size, () => {
    const c = mx.keep(mx.zeros([size], mx.Dtype.int32));
    mx.evaluate(c);
    return c;
  });
}

/** The fused kernels of one forward of B rows of L tokens, activations in `dtype`. */
export class FusedStep {
  readonly B: number;
  readonly L: number;
  readonly dtype: mx.Dtype;
  readonly positions: MxArray;
  readonly #shape: number;

  constructor(B: number, L: number, dtype: mx.Dtype, positions: MxArray) {
    this.B = B;
    this.L = L;
    this.dtype = dtype;
    this.positions = positions;
    // Unique per (B, L) for L < 32 (verify passes: up to 16): B * 8 + L once gave a 2-row step a 9-token pass's plans.
    this.#shape = B * 32 + L;
  }

  /**
   * RoPE's cos and sin at this step's positions, made once for all layers (by inverse frequencies). Made
   * inside the first layer's scope, so kept out of it (each layer's scope frees its intermediates): dispose()
   * frees them with the positions when the forward is built.
   */
  readonly #ropeTables = new Map<MxArray, MxArray>();
  ropeTableFor(rope: FusedRope): MxArray {
    let table = this.#ropeTables.get(rope.invFreq);
    if (!table) {
      table = mx.keep(ropeTable(this.positions, rope));
      this.#ropeTables.set(rope.invFreq, table);
    }
    return table;
  }

  /** Frees the positions and the RoPE tables (MLX keeps what the graph still needs). */
  dispose(): void {
    this.positions.dispose();
    for (const table of this.#ropeTables.values()) table.dispose();
    this.#ropeTables.clear();
  }

  #xShape(q: mx.QuantizedWeight): number[] {
    return [this.B, this.L, (q.weight.dim(1) * 32) / q.bits];
  }

  /**
   * A verify pass's launch (one row of L > 1 tokens): the scalar GEMV unless one-token steps take tensor cores
   * too (PENSIEVE_GEMV_MMA=1). The scalar kernel sums each output row the same way at any rows of x, and so does
   * the tensor-core one, but not like each other: greedy speculation stays exactly plain decoding only if a
   * pass sums as the step it stands for (PENSIEVE_GPU_VERIFY_MMA=1 gives that up for the tie margin: gemvConfig's
   * choice). Decode steps (L = 1): gemvConfig's choice (undefined).
   */
  #config(q: mx.QuantizedWeight, rows: number, paired: boolean): GemvConfig | undefined {
    if (this.L === 1 || gemvMmaFromRows() <= 1 || verifyTensorCores) return undefined;
    const n = q.weight.dim(0);
    const k = (q.weight.dim(1) * 32) / q.bits;
    return paired ? pairedConfig(n, rows, k, false) : gemvConfig(n, rows, k, false);
  }

  /**
   * Whether a norm variant's launch of `rows` rows of x takes x normed by MLX's rms_norm first
   * (PENSIEVE_GEMV_MMA_PRENORM=1, where the launch takes the tensor-core body; kernels-gemv-fused.ts).
   */
  #prenormed(q: mx.QuantizedWeight, rows: number, paired: boolean): boolean {
    if (!mmaPrenorm) return false;
    const n = q.weight.dim(0);
    const k = (q.weight.dim(1) * 32) / q.bits;
    const c = this.#config(q, rows, paired) ?? (paired ? pairedConfig(n, rows, k) : gemvConfig(n, rows, k));
    return c.mma === true;
  }

  /** norm -> q|k|v (-> RoPE when `rope`) in one kernel: [B, L, N]. */
  normedQkv(h: MxArray, norm: Norm, q: mx.QuantizedWeight, rope: FusedRope | null): MxArray {
    launches++;
    const slot = (rope ? QKV : NORMED) * SLOTS + this.#shape;
    const rows = this.B * this.L;
    const pre = this.#prenormed(q, rows, rope !== null);
    const plan = planFor(q, slot, () =>
      rope
        ? fusedPlans.normRope(this.#xShape(q), this.dtype, q, norm.eps, rope, this.#config(q, rows, true), pre)
        : fusedPlans.norm(this.#xShape(q), this.dtype, q, norm.eps, this.#config(q, rows, false), pre),
    );
    const inputs = [
      pre ? mx.rmsNorm(h, norm.weight, norm.eps) : h,
      q.weight,
      q.scales,
      q.biases as MxArray,
      norm.weight,
    ];
    if (rope) inputs.push(this.ropeTableFor(rope));
    return plan.run(inputs)[0] as MxArray;
  }

  /** norm -> q|k|v -> RoPE for L = 1: q [B, 1, H*D], k and v [B, Hkv, 1, D] (the cache's layout). */
  normedQkvDecode(
    h: MxArray,
    norm: Norm,
    q: mx.QuantizedWeight,
    rope: FusedRope,
    kvHeads: number,
  ): [MxArray, MxArray, MxArray] {
    launches++;
    const pre = this.#prenormed(q, this.B, true);
    const plan = planFor(q, QKV_DECODE * SLOTS + this.#shape, () =>
      fusedPlans.normRopeQkv(this.B, this.dtype, q, norm.eps, rope, kvHeads, undefined, pre),
    );
    const x = pre ? mx.rmsNorm(h, norm.weight, norm.eps) : h;
    const inputs = [x, q.weight, q.scales, q.biases as MxArray, norm.weight, this.ropeTableFor(rope)];
    return plan.run(inputs) as [MxArray, MxArray, MxArray];
  }

  /** res + x @ W.T in one kernel. */
  productPlusResidual(x: MxArray, q: mx.QuantizedWeight, res: MxArray): MxArray {
    launches++;
    const plan = planFor(q, RESIDUAL * SLOTS + this.#shape, () =>
      fusedPlans.residual(this.#xShape(q), this.dtype, q, this.#config(q, this.B * this.L, false)),
    );
    return plan.run([x, q.weight, q.scales, q.biases as MxArray, res])[0] as MxArray;
  }

  /** norm -> gate|up -> silu(gate) * up in one kernel. */
  normedSwiglu(h: MxArray, norm: Norm, q: mx.QuantizedWeight): MxArray {
    launches++;
    const pre = this.#prenormed(q, this.B * this.L, true);
    const plan = planFor(q, SWIGLU * SLOTS + this.#shape, () =>
      fusedPlans.normSwiglu(this.#xShape(q), this.dtype, q, norm.eps, this.#config(q, this.B * this.L, true), pre),
    );
    const x = pre ? mx.rmsNorm(h, norm.weight, norm.eps) : h;
    return plan.run([x, q.weight, q.scales, q.biases as MxArray, norm.weight])[0] as MxArray;
  }

  /** norm -> product (the final norm -> lm_head, x [B, rows, K]) in one kernel. */
  normedProduct(h: MxArray, norm: Norm, q: mx.QuantizedWeight, rows: number): MxArray {
    launches++;
    const pre = this.#prenormed(q, this.B * rows, false);
    const plan = planFor(q, NORMED * SLOTS + this.B * 32 + rows, () =>
      fusedPlans.norm(
        [this.B, rows, (q.weight.dim(1) * 32) / q.bits],
        this.dtype,
        q,
        norm.eps,
        this.#config(q, this.B * rows, false),
        pre,
      ),
    );
    const x = pre ? mx.rmsNorm(h, norm.weight, norm.eps) : h;
    return plan.run([x, q.weight, q.scales, q.biases as MxArray, norm.weight])[0] as MxArray;
  }

  /** The attention kernel for these heads and scale, or null where it does not apply (PENSIEVE_GPU_FUSED_ATTENTION=0: never). */
  attentionFor(heads: number, kvHeads: number, headDim: number, scale: number): DecodeAttention | null {
    if (!attentionKernel || !decodeAttentionSupports(heads, kvHeads, headDim, this.dtype)) return null;
    const kept = attentionByScale.get(scale) ?? [];
    const warps = attentionWarps(heads, kvHeads, headDim, attentionWarpsMost);
    let a = kept.find(
      (k) =>
        k.heads === heads &&
        k.kvHeads === kvHeads &&
        k.headDim === headDim &&
        k.dtype === this.dtype &&
        k.warps === warps,
    );
    if (!a) {
      a = new DecodeAttention(heads, kvHeads, headDim, this.dtype, scale, warps);
      attentionByScale.set(scale, [...kept, a]);
    }
    return a;
  }

  /**
   * softmax(scale q k^T) v over the whole cache buffers kc, vc [B, Hkv, capacity, D]
   * for q [B, 1, H*D]; row b's keys are 0..positions[b]; `keys` = the longest row's
   * count (picks the splits). Returns [B, 1, H*D]. With `fresh` (the new k, v
   * [B, Hkv, 1, D]) the kernel stores them at column positions[b] itself, and
   * with `site` too (an object owned by the calling layer) its splits merge in
   * the same launch, on a counter kept for that site.
   */
  cacheAttention(
    attention: DecodeAttention,
    q: MxArray,
    kc: MxArray,
    vc: MxArray,
    keys: number,
    fresh?: [MxArray, MxArray],
    site?: object,
  ): MxArray {
    launches++;
    if (fresh && site && mergedSplits) {
      const counter = splitCounter(site, this.B * attention.kvHeads);
      return attention.run(q, kc, vc, this.positions, this.B, keys, mergedAttentionSplits(keys), fresh, counter);
    }
    return attention.run(q, kc, vc, this.positions, this.B, keys, undefined, fresh);
  }
}

// --- Speculative verify passes ---
// A verify pass is one row of 2..FUSED_VERIFY_MAX_ROWS tokens ([last, ...drafts]): past
// FUSED_MAX_ROWS it would run MLX's unfused ops (~840 graph nodes against ~230 for a
// fused step). On this path its layers take the decode step's kernels at M = L rows and,
// for attention, kernels-attention-verify.ts (the new k/v stored into the cache in place).
// By default passes of up to FUSED_VERIFY_DEFAULT_TOKENS tokens take it, where a pass cost
// 1.14x a step on an H100 and 1.34x on an H200 (k = 2; bench/results/gpu-h100-2026-12-07b, -h200-2026-12-06f): the GPU's
// prompt lookup drafts at most that many (engine-plan.ts). PENSIEVE_GPU_FUSED_VERIFY=1: up to
// 16 tokens; =0: never. A pass keeps the scalar GEMV (FusedStep's #config: it sums as the one-token step
// does) unless PENSIEVE_GPU_VERIFY_MMA=1 (above); with tensor cores for every product (PENSIEVE_GEMV_MMA=1, one-token steps 4.39 ms against 3.78) a pass
// of 9 tokens took 5.70 ms and of 16 8.14 ms, against the scalar GEMV's 10.79 and 26.81
// (bench/results/gpu-h100-2026-12-07f).
export const FUSED_VERIFY_MAX_ROWS = VERIFY_MAX_TOKENS;
export const FUSED_VERIFY_DEFAULT_TOKENS = 4;
const verifyFlag = process.env.PENSIEVE_GPU_FUSED_VERIFY;
let verifyMaxTokens = verifyFlag === "1" ? FUSED_VERIFY_MAX_ROWS : verifyFlag === "0" ? 0 : FUSED_VERIFY_DEFAULT_TOKENS;

/** The fused verify path for forwards built from now on: on (up to 16 tokens), off, or up to `tokens` tokens. */
export function setFusedVerify(on: boolean | number): void {
  verifyMaxTokens = on === true ? FUSED_VERIFY_MAX_ROWS : on === false ? 0 : Math.min(on, FUSED_VERIFY_MAX_ROWS);
}

/** Tokens up to which a one-row pass can take the fused verify path on this machine (0: none: no CUDA kernels). */
export function fusedVerifyAvailableTokens(): number {
  return enabled && kernelLanguage() === "cuda" ? verifyMaxTokens : 0;
}

/** Whether a forward of B rows of L tokens takes the fused verify path (one row, 2..verifyMaxTokens tokens). */
export function fusedVerifyForward(B: number, L: number): boolean {
  return enabled && B === 1 && L > 1 && L <= verifyMaxTokens && mx.getDevice() === "gpu";
}

/** Whether the verify attention kernel takes these heads in this dtype (CUDA only). */
export function verifyHeadsSupported(heads: number, kvHeads: number, headDim: number, dtype: mx.Dtype): boolean {
  return attentionKernel && verifyAttentionSupports(heads, kvHeads, headDim, dtype);
}

const verifyByScale = new Map<number, VerifyAttention[]>();

/** A verify pass's attention kernel and the layer's cache buffers it writes. */
export interface VerifyCache {
  attention: VerifyAttention;
  kc: MxArray;
  vc: MxArray;
}

/**
 * For a layer of a fused verify pass (one unpadded row, 2..16 tokens, causal, no
 * window in reach): the attention kernel for these heads and scale and the layer's
 * whole cache buffers, grown for the pass (KVCache.reserveWhole); else null.
 */
export function verifyAttentionFor(
  step: FusedStep,
  batch: AttentionBatch,
  layer: number,
  heads: { numHeads: number; numKvHeads: number; headDim: number },
  scale: number,
  mask: ForwardView["mask"],
  ropeOffset: ForwardView["ropeOffset"],
  cached: number[],
  window: number | null | undefined,
): VerifyCache | null {
  const { numHeads: h, numKvHeads: hkv, headDim: hd } = heads;
  const { B, L, dtype } = step;
  if (!fusedVerifyForward(B, L) || mask !== "causal" || ropeOffset !== cached[0]) return null;
  if ((window && (cached[0] as number) + L > window) || !attentionKernel) return null;
  if (!verifyAttentionSupports(h, hkv, hd, dtype)) return null;
  const kept = verifyByScale.get(scale) ?? [];
  let attention = kept.find((k) => k.heads === h && k.kvHeads === hkv && k.headDim === hd && k.dtype === dtype);
  if (!attention) {
    attention = new VerifyAttention(h, hkv, hd, dtype, scale);
    verifyByScale.set(scale, [...kept, attention]);
  }
  const whole = batch.reserveWhole?.(layer, dtype) ?? null;
  return whole ? { attention, kc: whole[0], vc: whole[1] } : null;
}

/**
 * The verify pass's attention: qkv [1, L, (H + 2 Hkv) D] from step.normedQkv (RoPE
 * applied) over the cache's keys 0..positions[0]-1; stores the L new keys/values at
 * their columns and returns [1, L, H*D]. `site`: an object owned by the calling
 * layer (its split counter).
 */
export function verifyCacheAttention(
  step: FusedStep,
  v: VerifyCache,
  qkv: MxArray,
  keys: number,
  site: object,
): MxArray {
  launches++;
  const counter = splitCounter(site, v.attention.counterSize(step.L));
  return v.attention.run(qkv, v.kc, v.vc, step.positions, counter, step.L, keys);
}
