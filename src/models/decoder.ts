// The decoder-only transformer skeleton shared by the architectures: pre-norm
// blocks of attention (GQA, RoPE, KV cache) and a SwiGLU MLP. An architecture
// file supplies how its weights map to q/k/v and gate/up, and its RoPE.

import type { MxArray } from "../mlx";
import * as mx from "../mlx";
import type { ModelConfig } from "./config";
import type { Rope } from "./rope";
import type { AttentionBatch, ForwardOptions, LanguageModel } from "./types";
import { embed, type LinearWeight, linear, type WeightStore } from "./weights";

export interface DecoderLayerWeights {
  inputNorm: MxArray;
  postAttentionNorm: MxArray;
  /** Returns q [B,L,H*D], k and v [B,L,Hkv*D] from the normed input. */
  qkv: (x: MxArray) => [MxArray, MxArray, MxArray];
  out: LinearWeight;
  /** Returns gate and up projections from the normed input. */
  gateUp: (x: MxArray) => [MxArray, MxArray];
  down: LinearWeight;
}

export interface DecoderWeights {
  embedding: LinearWeight;
  layers: DecoderLayerWeights[];
  norm: MxArray;
  lmHead: LinearWeight;
}

export class DecoderModel implements LanguageModel {
  readonly config: ModelConfig;
  readonly dtype: mx.Dtype;
  readonly #weights: DecoderWeights;
  readonly #store: WeightStore;
  readonly #rope: Rope;
  readonly #scale: number;
  /** Fused (compiled) elementwise kernels: worth it on the GPU, where each kernel launch costs. */
  readonly #fused: boolean;

  constructor(config: ModelConfig, store: WeightStore, weights: DecoderWeights, rope: Rope) {
    this.config = config;
    this.dtype = store.dtype;
    this.#store = store;
    this.#weights = weights;
    this.#rope = rope;
    this.#scale = rope.scoreScale / Math.sqrt(config.headDim);
    this.#fused = mx.getDevice() === "gpu";
    const unused = store.unused().filter((n) => !n.endsWith("rotary_emb.inv_freq"));
    if (unused.length) {
      throw new Error(`${store.source}: unexpected tensors for ${config.modelType}: ${unused.slice(0, 5).join(", ")}`);
    }
  }

  ropeRegime(length: number): number {
    return this.#rope.regime(length);
  }

  forward(tokens: MxArray, batch: AttentionBatch, options: ForwardOptions = {}): MxArray {
    const c = this.config;
    const [B, L] = tokens.shape as [number, number];
    const lengths = options.ropeLengths ?? batch.rowLengths().map((n) => n + L);
    const regimes = lengths.map((n) => this.#rope.regime(n));
    const view = batch.begin(L);
    let h = embed(tokens, this.#weights.embedding, this.dtype);
    for (let i = 0; i < this.#weights.layers.length; i++) {
      const layer = this.#weights.layers[i] as DecoderLayerWeights;
      const x = mx.rmsNorm(h, layer.inputNorm, c.rmsNormEps);
      const [q0, k0, v0] = layer.qkv(x);
      const heads = (t: MxArray, n: number) => mx.transpose(mx.reshape(t, [B, L, n, c.headDim]), [0, 2, 1, 3]);
      const q = this.#rope.apply(heads(q0, c.numHeads), view.ropeOffset, regimes);
      const k = this.#rope.apply(heads(k0, c.numKvHeads), view.ropeOffset, regimes);
      const attn = batch.attention(i, q, k, heads(v0, c.numKvHeads), this.#scale, view.mask);
      const merged = mx.reshape(mx.transpose(attn, [0, 2, 1, 3]), [B, L, c.numHeads * c.headDim]);
      h = mx.add(h, linear(merged, layer.out));
      const y = mx.rmsNorm(h, layer.postAttentionNorm, c.rmsNormEps);
      const [gate, up] = layer.gateUp(y);
      h = mx.add(h, linear(mx.swiglu(gate, up, this.#fused), layer.down));
    }
    batch.end();
    const mode = options.logits ?? "last";
    if (mode === "last" && L > 1) h = mx.sliceAxis(h, 1, L - 1, L);
    if (mode === "none") return h;
    const normed = mx.rmsNorm(h, this.#weights.norm, c.rmsNormEps);
    return mx.astype(linear(normed, this.#weights.lmHead), mx.Dtype.float32);
  }

  dispose(): void {
    this.#store.dispose();
    for (const a of this.#rope.arrays) a.dispose();
  }
}

/** The embedding table, and the output head (tied to the embedding when the model says so). */
export function embeddingAndHead(store: WeightStore, config: ModelConfig, embedName: string, headName: string) {
  const embedding = store.linear(embedName, config.hiddenSize);
  const tied = config.tieWordEmbeddings || !store.has(`${headName}.weight`);
  const lmHead = tied ? embedding : store.linear(headName, config.hiddenSize);
  return { embedding, lmHead };
}

/** RoPE frequencies (wavelengths, as fast.rope's `freqs` takes them): factor_i * base^(2i/dims). */
export function ropeWavelengths(base: number, dims: number, factors?: readonly number[]): Float32Array {
  const out = new Float32Array(dims / 2);
  for (let i = 0; i < dims / 2; i++) out[i] = (factors?.[i] ?? 1) * base ** ((2 * i) / dims);
  return out;
}
