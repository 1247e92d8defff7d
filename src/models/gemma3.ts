// Gemma 3 text (gemma3_text: the 1B; gemma3: the text tower of 4B/12B/27B,
// whose weights sit under language_model. next to a vision tower we drop).
// Differences from Llama, read side by side with mlx-lm's models/gemma3_text.py:
// - RMSNorm scales by (1 + w); norms before and after both attention and MLP;
// - per-head RMSNorm of q and k;
// - the embedding multiplied by √hidden, rounded to bfloat16 as the model does;
// - attention scale query_pre_attn_scalar^-1/2;
// - windowed (local) layers with their own RoPE base (rope_local_base_freq),
//   every sliding_window_pattern-th layer global (rope_theta and its scaling),
//   or as config.json's layer_types says;
// - GELU (tanh approximation) gating: down(gelu(gate) · up).
// - in float16 the residual sum is clipped to float16's range (computed in
//   float32), as mlx-lm's clip_residual does: Gemma's activations overflow it.
// Windowed layers keep the full KV cache and mask (see decoder.ts).
import * as mx from "../mlx";
import type { ModelConfig } from "./config";
import {
  type DecoderLayerWeights,
  DecoderModel,
  embeddingAndHead,
  gateUpProjections,
  type Norm,
  qkvProjections,
} from "./decoder";
import { standardRope } from "./rope";
import type { LanguageModel } from "./types";
import { linear, type WeightStore } from "./weights";

/** Whether layer i is a windowed (local) layer. */
export function isSlidingLayer(c: ModelConfig, i: number): boolean {
  if (c.layerTypes) return c.layerTypes[i] === "sliding_attention";
  const pattern = c.slidingWindowPattern ?? 6;
  return (i + 1) % pattern !== 0;
}

/** h + y, clipped to float16's range when computing in float16 (mlx-lm's clip_residual). */
function clippedResidual(dtype: mx.Dtype) {
  if (dtype !== mx.Dtype.float16) return mx.add;
  const bound = 65504;
  return (h: mx.MxArray, y: mx.MxArray) =>
    mx.astype(
      mx.clip(mx.add(mx.astype(h, mx.Dtype.float32), mx.astype(y, mx.Dtype.float32)), -bound, bound),
      mx.Dtype.float16,
    );
}

/** √hidden as Gemma computes it: rounded to bfloat16. */
function embeddingScale(hidden: number): number {
  return mx.tidy(
    () =>
      (
        mx.astype(mx.astype(mx.scalar(Math.sqrt(hidden)), mx.Dtype.bfloat16), mx.Dtype.float32).read() as Float32Array
      )[0] as number,
  );
}

export function buildGemma3(config: ModelConfig, store: WeightStore): LanguageModel {
  const c = config;
  // The multimodal checkpoints: the text model under language_model., a vision tower beside it.
  const root =
    store.has("language_model.model.embed_tokens.weight") || store.has("language_model.model.embed_tokens.scales")
      ? "language_model."
      : "";
  if (root) store.discard((n) => !n.startsWith(root));
  const norm = (name: string): Norm => {
    const w = store.derived(name, (a) => mx.astype(mx.add(a, 1), a.dtype));
    return (x) => mx.rmsNorm(x, w, c.rmsNormEps);
  };
  const globalRope = standardRope(c);
  const localRope = standardRope(c, { base: c.ropeLocalTheta ?? 10_000, scaling: null });
  const layers: DecoderLayerWeights[] = [];
  for (let i = 0; i < c.numLayers; i++) {
    const p = `${root}model.layers.${i}`;
    const sliding = isSlidingLayer(c, i);
    const gateUp = gateUpProjections(store, `${p}.mlp`, c.hiddenSize, c.intermediateSize);
    const down = store.linear(`${p}.mlp.down_proj`, c.intermediateSize);
    layers.push({
      inputNorm: norm(`${p}.input_layernorm.weight`),
      attention: {
        qkv: qkvProjections(store, `${p}.self_attn`, c),
        qNorm: norm(`${p}.self_attn.q_norm.weight`),
        kNorm: norm(`${p}.self_attn.k_norm.weight`),
        out: store.linear(`${p}.self_attn.o_proj`, c.numHeads * c.headDim),
      },
      attentionOutputNorm: norm(`${p}.post_attention_layernorm.weight`),
      mlpNorm: norm(`${p}.pre_feedforward_layernorm.weight`),
      mlp: (x) => {
        const [gate, up] = gateUp(x);
        return linear(mx.multiply(mx.geluApprox(gate), up), down);
      },
      mlpOutputNorm: norm(`${p}.post_feedforward_layernorm.weight`),
      rope: sliding ? localRope : globalRope,
      window: sliding ? c.slidingWindow : null,
    });
  }
  const { embedding, lmHead } = embeddingAndHead(store, c, `${root}model.embed_tokens`, `${root}lm_head`);
  return new DecoderModel(
    c,
    store,
    {
      embedding,
      embedScale: embeddingScale(c.hiddenSize),
      layers,
      norm: norm(`${root}model.norm.weight`),
      lmHead,
      attentionScale: (c.queryPreAttnScalar ?? c.headDim) ** -0.5,
      residual: clippedResidual(store.dtype),
    },
    globalRope,
  );
}
