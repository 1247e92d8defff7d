// The decoder-only transformer skeleton every architecture builds: blocks of
// attention (GQA, RoPE, KV cache) and an MLP, each behind a norm. The block's
// named places (DecoderLayerWeights) take the swappable pieces below: norms
// (RMSNorm, Gemma's 1 + w), attention projections (separate, fused, with or
// without biases) and q/k norms, MLPs (SwiGLU, GELU-gated, routed experts),
// post-attention and post-MLP norms, per-layer RoPE and sliding windows. An
// architecture file picks pieces by name (see llama.ts, gemma3.ts).
// About 440 lines: the one skeleton, with the fused GPU layer (and the check that a model takes it) beside the plain one it replaces.
import type { MxArray } from "../mlx";
import * as mx from "../mlx";
import type { ModelConfig, MoeConfig } from "./config";
import { cpuFusedLayer, cpuFuseApplies } from "./cpu-fused";
import * as fused from "./gpu-fused";
import { megaLayer } from "./gpu-mega";
import type { Rope } from "./rope";
import type { AttentionBatch, ForwardOptions, ForwardView, LanguageModel } from "./types";
import {
  type ExpertWeight,
  embed,
  expertLinear,
  type LinearWeight,
  linear,
  linearByPosition,
  type WeightStore,
} from "./weights";

/** The longest pass whose logits are computed position by position on a GPU: a verify pass of up to 16 drafts + 1. */
const VERIFY_MAX_POSITIONS = 17;

/** A normalization over the last axis; `rms`: it is RMSNorm with this weight (GPU kernels fuse it). */
export type Norm = ((x: MxArray) => MxArray) & { rms?: { weight: MxArray; eps: number } };
/**
 * An MLP from the normed hidden state [B, L, hidden] to [B, L, hidden];
 * `swiglu`: it is silu(gate) * up through down, gate|up one product.
 */
export type Mlp = ((x: MxArray) => MxArray) & { swiglu?: { gateUp: LinearWeight; down: LinearWeight } };
/** Projections that split one product's output (`product`, when there is one: GPU kernels fuse around it). */
export type SplitProjection<T> = ((x: MxArray) => T) & { product?: LinearWeight };

export interface AttentionWeights {
  /** Returns q [B,L,H*D], k and v [B,L,Hkv*D] from the normed input. */
  qkv: SplitProjection<[MxArray, MxArray, MxArray]>;
  /** Per-head norms of q and k before RoPE (Qwen3, Gemma 3). */
  qNorm?: Norm;
  kNorm?: Norm;
  out: LinearWeight;
}

export interface DecoderLayerWeights {
  /** Before attention. */
  inputNorm: Norm;
  attention: AttentionWeights;
  /** On the attention output, before the residual add (Gemma's post-attention norm). */
  attentionOutputNorm?: Norm;
  /** Before the MLP (Llama's post_attention_layernorm, Gemma's pre_feedforward_layernorm). */
  mlpNorm: Norm;
  mlp: Mlp;
  /** On the MLP output, before the residual add (Gemma). */
  mlpOutputNorm?: Norm;
  /** This layer's RoPE when it differs from the model's (Gemma's local layers). */
  rope?: Rope;
  /** A windowed layer attends to the last `window` positions (itself included). */
  window?: number | null;
}

export interface DecoderWeights {
  embedding: LinearWeight;
  /** Multiplies the embedded tokens (Gemma: √hidden, rounded as the model does). */
  embedScale?: number;
  layers: DecoderLayerWeights[];
  norm: Norm;
  lmHead: LinearWeight;
  /** Attention scale before the RoPE factor; default head_dim^-1/2. */
  attentionScale?: number;
  /** The residual sum (default h + y; Gemma clips it in float16). */
  residual?: (h: MxArray, y: MxArray) => MxArray;
}

export class DecoderModel implements LanguageModel {
  readonly config: ModelConfig;
  readonly dtype: mx.Dtype;
  readonly #weights: DecoderWeights;
  readonly #store: WeightStore;
  readonly #rope: Rope;
  readonly #baseScale: number;
  /** Tensor parallelism (shard.ts): sums a sharded o_proj's / down_proj's partial output over the ranks. */
  reducePartial: ((partial: MxArray) => MxArray) | null = null;

  constructor(config: ModelConfig, store: WeightStore, weights: DecoderWeights, rope: Rope) {
    this.config = config;
    this.dtype = store.dtype;
    this.#store = store;
    this.#weights = weights;
    this.#rope = rope;
    this.#baseScale = weights.attentionScale ?? 1 / Math.sqrt(config.headDim);
    const unused = store.unused().filter((n) => !n.endsWith("rotary_emb.inv_freq"));
    if (unused.length) {
      throw new Error(`${store.source}: unexpected tensors for ${config.modelType}: ${unused.slice(0, 5).join(", ")}`);
    }
  }

  ropeRegime(length: number): number {
    return this.#rope.regime(length);
  }

  /**
   * Whether every layer of a verify pass takes the fused GPU kernels (#fusedLayer's conditions: RMSNorms, 4-bit
   * products without biases, no q/k or post norms, RoPE in kernel form, the verify attention's heads). Where
   * not, a GPU pass runs MLX's ops at ~2.3x a step whatever its length, and the engine's GPU lookup stays off.
   */
  fusedVerifySupported(): boolean {
    const c = this.config;
    const d = this.dtype;
    if (this.reducePartial !== null || this.#weights.residual) return false;
    if (!fused.verifyHeadsSupported(c.numHeads, c.numKvHeads, c.headDim, d)) return false;
    return this.#weights.layers.every((layer) => {
      const w = layer.attention;
      const swiglu = layer.mlp.swiglu;
      return Boolean(
        layer.inputNorm.rms &&
          layer.mlpNorm.rms &&
          swiglu &&
          w.qNorm === undefined &&
          w.kNorm === undefined &&
          !layer.attentionOutputNorm &&
          !layer.mlpOutputNorm &&
          fused.fusedRope(layer.rope ?? this.#rope, [0], c.headDim, c.numHeads, c.numKvHeads) &&
          [w.qkv.product, w.out, swiglu.gateUp, swiglu.down].every((p) => fused.fusable(p, d)),
      );
    });
  }

  forward(tokens: MxArray, batch: AttentionBatch, options: ForwardOptions = {}): MxArray {
    const [, L] = tokens.shape as [number, number];
    const cached = batch.rowLengths();
    const lengths = options.ropeLengths ?? cached.map((n) => n + L);
    const regimes = lengths.map((n) => this.#rope.regime(n));
    const view = batch.begin(L);
    const windowMasks = new Map<number, ForwardView["mask"]>();
    const maskFor = (window: number | null | undefined) => {
      if (!window) return view.mask;
      let m = windowMasks.get(window);
      if (m === undefined) {
        m = slidingWindowMask(view, cached, L, window);
        windowMasks.set(window, m);
      }
      return m;
    };
    const residual = this.#weights.residual ?? mx.add;
    const reduce = this.reducePartial ?? ((partial: MxArray) => partial);
    const [B] = tokens.shape as [number, number];
    // The fused CUDA decode path (gpu-fused.ts): a few kernels per layer.
    const step =
      (fused.fusedForward(B * L, L) || fused.fusedVerifyForward(B, L)) &&
      this.reducePartial === null &&
      !this.#weights.residual
        ? new fused.FusedStep(B, L, this.dtype, fused.fusedPositions(view.ropeOffset, B, L))
        : null;
    // On the CPU, each packed product with its norm / SwiGLU / residual folded in (cpu-fused.ts).
    const cpuFuse = !step && this.reducePartial === null && cpuFuseApplies(!this.#weights.residual);
    const qSize = this.config.numHeads * this.config.headDim;
    const qkvSplit: [number, number] = [qSize, qSize + this.config.numKvHeads * this.config.headDim];
    let h = embed(tokens, this.#weights.embedding, this.dtype);
    if (this.#weights.embedScale !== undefined)
      h = mx.multiply(h, mx.astype(mx.scalar(this.#weights.embedScale), this.dtype));
    for (let i = 0; i < this.#weights.layers.length; i++) {
      const layer = this.#weights.layers[i] as DecoderLayerWeights;
      const input = h;
      // Window masks are built outside the layer's scope: later layers reuse them.
      const mask = maskFor(layer.window);
      // One scope per layer: our handles to its intermediates go when it is built,
      // so MLX frees each once used (else a forward holds every layer's activations).
      h = mx.tidy(() => {
        if (step) return this.#fusedLayer(step, i, layer, input, batch, view.ropeOffset, mask, regimes, cached);
        if (cpuFuse)
          return cpuFusedLayer(layer, input, qkvSplit, (q, k, v) =>
            this.#attend(i, layer, q, k, v, false, batch, view.ropeOffset, mask, regimes),
          );
        let a = reduce(this.#attention(i, layer, layer.inputNorm(input), batch, view.ropeOffset, mask, regimes));
        if (layer.attentionOutputNorm) a = layer.attentionOutputNorm(a);
        const mid = residual(input, a);
        let m = reduce(layer.mlp(layer.mlpNorm(mid)));
        if (layer.mlpOutputNorm) m = layer.mlpOutputNorm(m);
        return residual(mid, m);
      });
      if (i > 0) input.dispose();
    }
    batch.end();
    const mode = options.logits ?? "last";
    if (mode === "last" && L > 1) h = mx.sliceAxis(h, 1, L - 1, L);
    step?.dispose();
    if (mode === "none") return h;
    const norm = this.#weights.norm.rms;
    const head = step && norm ? fused.fusable(this.#weights.lmHead, this.dtype) : null;
    if (step && head && norm) {
      const rows = mode === "last" ? 1 : L;
      return mx.astype(step.normedProduct(h, norm, head, rows), mx.Dtype.float32);
    }
    // Logits at every position of a short pass (a verify pass) on a GPU: each as its one-token step computes it.
    const byPosition = mode === "all" && L > 1 && L <= VERIFY_MAX_POSITIONS && mx.getDevice() === "gpu";
    const normed = this.#weights.norm(h);
    return mx.astype((byPosition ? linearByPosition : linear)(normed, this.#weights.lmHead), mx.Dtype.float32);
  }

  /**
   * One layer on the fused GPU path (gpu-fused.ts): norm + q|k|v + RoPE, the
   * cache's attention, o + residual, norm + gate|up + SwiGLU, down + residual;
   * each part falls back to MLX's ops where the layer does not fit the kernel.
   */
  #fusedLayer(
    step: fused.FusedStep,
    index: number,
    layer: DecoderLayerWeights,
    input: MxArray,
    batch: AttentionBatch,
    ropeOffset: ForwardView["ropeOffset"],
    mask: ForwardView["mask"],
    regimes: number[],
    cached: number[],
  ): MxArray {
    const c = this.config;
    const { B, L, dtype } = step;
    const w = layer.attention;
    const inNorm = layer.inputNorm.rms;
    const qkvW = inNorm ? fused.fusable(w.qkv.product, dtype) : null;
    let merged: MxArray;
    const rope = layer.rope ?? this.#rope;
    const qkNorms = w.qNorm !== undefined || w.kNorm !== undefined;
    const kr = inNorm && qkvW && !qkNorms ? fused.fusedRope(rope, regimes, c.headDim, c.numHeads, c.numKvHeads) : null;
    const keys = Math.max(...cached) + L;
    // A verify pass (PENSIEVE_GPU_FUSED_VERIFY): attention over the cache, storing the new k/v, in one kernel.
    const s = rope.scoreScale * this.#baseScale;
    const verify = kr
      ? fused.verifyAttentionFor(step, batch, index, c, s, mask, ropeOffset, cached, layer.window)
      : null;
    if (verify && inNorm && qkvW && kr)
      merged = fused.verifyCacheAttention(step, verify, step.normedQkv(input, inNorm, qkvW, kr), keys, qkvW);
    else if (inNorm && qkvW && kr && L === 1 && mask === null && (!layer.window || keys <= layer.window)) {
      // Decode: q, and k/v in the cache's layout, from one kernel; attention over the cache in one more.
      const scale = rope.scoreScale * this.#baseScale;
      const kernel = step.attentionFor(c.numHeads, c.numKvHeads, c.headDim, scale);
      // PENSIEVE_GPU_MEGA=1: the whole layer as one kernel where every piece applies (gpu-mega.ts).
      const oneKernel = kernel && megaLayer(step, c, layer, index, input, keys, batch, inNorm, qkvW, kr, kernel);
      if (oneKernel) return oneKernel;
      const [q, k, v] = step.normedQkvDecode(input, inNorm, qkvW, kr, c.numKvHeads);
      const writable = kernel && fused.attentionWritesKv() ? (batch.reserveWhole?.(index, dtype) ?? null) : null;
      const whole = kernel && !writable ? (batch.storeWhole?.(index, k, v) ?? null) : null;
      const heads = (t: MxArray) => mx.transpose(mx.reshape(t, [B, 1, c.numHeads, c.headDim]), [0, 2, 1, 3]);
      const merge = (t: MxArray) => mx.reshape(mx.transpose(t, [0, 2, 1, 3]), [B, 1, c.numHeads * c.headDim]);
      if (kernel && writable) merged = step.cacheAttention(kernel, q, writable[0], writable[1], keys, [k, v], qkvW);
      else if (kernel && whole && whole[0].dtype === dtype)
        merged = step.cacheAttention(kernel, q, whole[0], whole[1], keys);
      else if (whole) {
        const [kc, vc] = whole.map((p) => mx.sliceAxis(p, 2, 0, keys)) as [MxArray, MxArray];
        merged = merge(mx.sdpa(heads(q), kc, vc, scale, null));
      } else merged = merge(batch.attention(index, heads(q), k, v, scale, mask));
    } else if (inNorm && qkvW) {
      const y = step.normedQkv(input, inNorm, qkvW, kr);
      const qSize = c.numHeads * c.headDim;
      const [q, k, v] = mx.split(y, [qSize, qSize + c.numKvHeads * c.headDim], -1) as [MxArray, MxArray, MxArray];
      merged = this.#attend(index, layer, q, k, v, kr !== null, batch, ropeOffset, mask, regimes);
    } else {
      const [q, k, v] = w.qkv(layer.inputNorm(input));
      merged = this.#attend(index, layer, q, k, v, false, batch, ropeOffset, mask, regimes);
    }
    const outW = layer.attentionOutputNorm ? null : fused.fusable(w.out, dtype);
    let mid: MxArray;
    if (outW) mid = step.productPlusResidual(merged, outW, input);
    else {
      let a = linear(merged, w.out);
      if (layer.attentionOutputNorm) a = layer.attentionOutputNorm(a);
      mid = mx.add(input, a);
    }
    const mlpNorm = layer.mlpNorm.rms;
    const swiglu = layer.mlp.swiglu;
    const gateUpW = mlpNorm && swiglu ? fused.fusable(swiglu.gateUp, dtype) : null;
    if (!(mlpNorm && swiglu && gateUpW)) {
      let m = layer.mlp(layer.mlpNorm(mid));
      if (layer.mlpOutputNorm) m = layer.mlpOutputNorm(m);
      return mx.add(mid, m);
    }
    const act = step.normedSwiglu(mid, mlpNorm, gateUpW);
    const downW = layer.mlpOutputNorm ? null : fused.fusable(swiglu.down, dtype);
    if (downW) return step.productPlusResidual(act, downW, mid);
    let m = linear(act, swiglu.down);
    if (layer.mlpOutputNorm) m = layer.mlpOutputNorm(m);
    return mx.add(mid, m);
  }

  /** One layer's attention: projections, q/k norms, RoPE, the cache's attention (stores k/v, attends), output projection. */
  #attention(
    index: number,
    layer: DecoderLayerWeights,
    x: MxArray,
    batch: AttentionBatch,
    ropeOffset: ForwardView["ropeOffset"],
    mask: ForwardView["mask"],
    regimes: number[],
  ): MxArray {
    const [q0, k0, v0] = layer.attention.qkv(x);
    const merged = this.#attend(index, layer, q0, k0, v0, false, batch, ropeOffset, mask, regimes);
    return linear(merged, layer.attention.out);
  }

  /** q/k norms and RoPE (unless `roped`), the cache's attention; returns the heads merged [B, L, H*D]. */
  #attend(
    index: number,
    layer: DecoderLayerWeights,
    q0: MxArray,
    k0: MxArray | null,
    v0: MxArray,
    roped: boolean,
    batch: AttentionBatch,
    ropeOffset: ForwardView["ropeOffset"],
    mask: ForwardView["mask"],
    regimes: number[],
  ): MxArray {
    const c = this.config;
    const [B, L] = q0.shape as [number, number];
    const w = layer.attention;
    const rope = layer.rope ?? this.#rope;
    // One token a row (decode): [B, 1, n*D] is [B, n, 1, D] in memory, so one reshape (a contiguous view) does
    // what reshape + transpose do: two graph nodes fewer a tensor, and MLX pays per node (~1.6 us on the CPU).
    const heads = (t: MxArray, n: number, norm?: Norm) => {
      if (L === 1 && !norm) return mx.reshape(t, [B, n, 1, c.headDim]);
      const split = mx.reshape(t, [B, L, n, c.headDim]);
      return mx.transpose(norm ? norm(split) : split, [0, 2, 1, 3]);
    };
    const rotate = (t: MxArray) => (roped ? t : rope.apply(t, ropeOffset, regimes));
    // k0 null: q0 holds q|k side by side (no q/k norms), rotated in one node and split into heads after.
    const [q, k] =
      k0 === null
        ? (mx.split(rotate(heads(q0, c.numHeads + c.numKvHeads)), [c.numHeads], 1) as [MxArray, MxArray])
        : [rotate(heads(q0, c.numHeads, w.qNorm)), rotate(heads(k0, c.numKvHeads, w.kNorm))];
    const attn = batch.attention(index, q, k, heads(v0, c.numKvHeads), rope.scoreScale * this.#baseScale, mask);
    const width = c.numHeads * c.headDim;
    return L === 1 ? mx.reshape(attn, [B, 1, width]) : mx.reshape(mx.transpose(attn, [0, 2, 1, 3]), [B, L, width]);
  }

  dispose(): void {
    this.#store.dispose();
    const ropes = new Set([this.#rope, ...this.#weights.layers.map((l) => l.rope).filter((r) => r !== undefined)]);
    for (const r of ropes) for (const a of r.arrays) a.dispose();
  }
}

/**
 * The keep-mask of a windowed layer: the view's own mask (causal, padding) and
 * "the key is fewer than `window` positions before the query". Columns are
 * cache positions; left padding shifts a row's queries and keys alike, so the
 * distance is the same in columns. The full cache stays (no rotating buffer):
 * exact in prefill, decode, batches and through the prefix cache.
 */
export function slidingWindowMask(view: ForwardView, cached: number[], L: number, window: number): ForwardView["mask"] {
  // Without padding every row has the same length; with padding the view's mask is an array.
  const S = view.mask instanceof mx.MxArray ? view.mask.dim(-1) : (cached[0] ?? 0) + L;
  if (S <= window) return view.mask;
  const cols = mx.reshape(mx.arange(0, S), [1, 1, 1, S]);
  const rows = mx.reshape(mx.arange(S - L, S), [1, 1, L, 1]);
  const keep = mx.logicalAnd(mx.lessEqual(cols, rows), mx.less(mx.subtract(rows, cols), window));
  return view.mask instanceof mx.MxArray ? mx.logicalAnd(keep, view.mask) : keep;
}

/** RMSNorm with a weight vector. */
export function rmsNorm(weight: MxArray, eps: number): Norm {
  return Object.assign((x: MxArray) => mx.rmsNorm(x, weight, eps), { rms: { weight, eps } });
}

/** Gemma's RMSNorm: scales by 1 + w (computed once at load, in the weight's dtype). */
export function offsetRmsNorm(store: WeightStore, name: string, eps: number): Norm {
  const w = store.derived(name, (a) => mx.astype(mx.add(a, 1), a.dtype));
  return (x) => mx.rmsNorm(x, w, eps);
}

/** silu(gate) * up through a down projection; `gateUp` returns both from the normed input. */
export function swigluMlp(gateUp: SplitProjection<[MxArray, MxArray]>, down: LinearWeight): Mlp {
  // Fused (compiled) elementwise kernels: worth it on the GPU, where each kernel launch costs.
  const fused = mx.getDevice() === "gpu";
  const mlp = (x: MxArray) => {
    const [gate, up] = gateUp(x);
    return linear(mx.swiglu(gate, up, fused), down);
  };
  return gateUp.product ? Object.assign(mlp, { swiglu: { gateUp: gateUp.product, down } }) : mlp;
}

/** gelu_tanh(gate) * up through a down projection (Gemma). */
export function geluGatedMlp(gateUp: (x: MxArray) => [MxArray, MxArray], down: LinearWeight): Mlp {
  return (x) => {
    const [gate, up] = gateUp(x);
    return linear(mx.multiply(mx.geluApprox(gate), up), down);
  };
}

/** The stacked experts of a routed MLP and its router. */
export interface ExpertWeights {
  router: LinearWeight;
  gate: ExpertWeight;
  up: ExpertWeight;
  down: ExpertWeight;
}

/**
 * A routed MLP (mixture of experts): each token runs its top-k SwiGLU experts
 * (softmax over all, then the k largest, renormalized when normTopkProb) and
 * sums their outputs by those weights. Routing is per token, so every row of a
 * batch routes on its own. Expert products go through gather_mm / gather_qmm.
 */
export function routedMlp(moe: MoeConfig, w: ExpertWeights): Mlp {
  const E = moe.numExperts;
  const k = moe.topK;
  const fused = mx.getDevice() === "gpu";
  return (x: MxArray) => {
    const [B, L, D] = x.shape as [number, number, number];
    const gates = mx.softmax(linear(x, w.router), -1, true);
    const inds = mx.sliceAxis(mx.argpartition(gates, E - k, 2), 2, E - k, E);
    let scores = mx.takeAlongAxis(gates, inds, 2);
    if (moe.normTopkProb) scores = mx.divide(scores, mx.sum(scores, -1, true));
    const xe = mx.reshape(x, [B, L, 1, 1, D]);
    const hidden = mx.swiglu(expertLinear(xe, w.gate, inds), expertLinear(xe, w.up, inds), fused);
    const y = mx.squeeze(expertLinear(hidden, w.down, inds), [3]);
    return mx.astype(mx.sum(mx.multiply(y, mx.expandDims(scores, -1)), -2), y.dtype);
  };
}

/** One stored product split into parts along its output (Phi-3's qkv_proj, gate_up_proj); `at`: split points. */
export function splitProjection(
  store: WeightStore,
  name: string,
  inFeatures: number,
  at: number[],
): SplitProjection<MxArray[]> {
  const w = store.linear(name, inFeatures);
  return Object.assign((x: MxArray) => mx.split(linear(x, w), at, -1), { product: w });
}

/** Separate gate and up projections, fused into one product when their packing agrees. */
export function gateUpProjections(store: WeightStore, prefix: string, hidden: number, ffn: number) {
  const gate = store.linear(`${prefix}.gate_proj`, hidden);
  const up = store.linear(`${prefix}.up_proj`, hidden);
  const fused = store.fuse([gate, up]);
  const split: SplitProjection<[MxArray, MxArray]> = fused
    ? Object.assign((x: MxArray) => mx.split(linear(x, fused), [ffn], -1) as [MxArray, MxArray], { product: fused })
    : (x: MxArray) => [linear(x, gate), linear(x, up)] as [MxArray, MxArray];
  return split;
}

/** Separate q, k, v projections (with biases where the file has them), fused when their packing agrees. */
export function qkvProjections(store: WeightStore, prefix: string, c: ModelConfig) {
  const qSize = c.numHeads * c.headDim;
  const kvSize = c.numKvHeads * c.headDim;
  const q = store.linear(`${prefix}.q_proj`, c.hiddenSize);
  const k = store.linear(`${prefix}.k_proj`, c.hiddenSize);
  const v = store.linear(`${prefix}.v_proj`, c.hiddenSize);
  // One product for q|k|v, as Phi-3 stores them, when their packing agrees.
  const fused = store.fuse([q, k, v]);
  const split: SplitProjection<[MxArray, MxArray, MxArray]> = fused
    ? Object.assign(
        (x: MxArray) => mx.split(linear(x, fused), [qSize, qSize + kvSize], -1) as [MxArray, MxArray, MxArray],
        { product: fused },
      )
    : (x: MxArray) => [linear(x, q), linear(x, k), linear(x, v)] as [MxArray, MxArray, MxArray];
  return split;
}

/** The embedding table, and the output head (tied to the embedding when the model says so). */
export function embeddingAndHead(store: WeightStore, config: ModelConfig, embedName: string, headName: string) {
  const embedding = store.linear(embedName, config.hiddenSize);
  store.keepPlain(embedding);
  const tied = config.tieWordEmbeddings || !store.has(`${headName}.weight`);
  const lmHead = tied ? embedding : store.linear(headName, config.hiddenSize);
  return { embedding, lmHead };
}
