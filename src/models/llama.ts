// Llama-family decoder (Llama 2/3.x, SmolLM2, Mistral): separate q/k/v and
// gate/up projections in the files (fused at load when their packing agrees).
// Reads side by side with mlx-lm's models/llama.py (Mistral maps to it there).
// Sliding windows: layers config.json's layer_types marks "sliding_attention";
// a Mistral config with a sliding_window and no layer_types windows every layer
// (Hugging Face's Mistral). mlx-lm windows only layers listed in layer_types.
import type { ModelConfig } from "./config";
import {
  type DecoderLayerWeights,
  DecoderModel,
  embeddingAndHead,
  gateUpProjections,
  type Mlp,
  qkvProjections,
  rmsNorm,
  swigluMlp,
} from "./decoder";
import { standardRope } from "./rope";
import type { LanguageModel } from "./types";
import type { WeightStore } from "./weights";

/** Which layers attend through the sliding window. */
export function llamaWindows(c: ModelConfig): Array<number | null> {
  const w = c.slidingWindow;
  return Array.from({ length: c.numLayers }, (_, i) => {
    if (!w) return null;
    if (c.layerTypes) return c.layerTypes[i] === "sliding_attention" ? w : null;
    return c.modelType === "mistral" ? w : null;
  });
}

/** What the Llama-shaped families change (qwen2.ts, qwen3.ts, qwen3-moe.ts). */
export interface LlamaVariant {
  /** Per-head RMSNorm of q and k before RoPE (Qwen3). */
  qkNorm?: boolean;
  /** This layer's MLP when it is not the SwiGLU one (Qwen3-MoE's routed experts). */
  mlp?: (layer: number, prefix: string) => Mlp | null;
}

export function buildLlama(config: ModelConfig, store: WeightStore, variant: LlamaVariant = {}): LanguageModel {
  const c = config;
  const windows = llamaWindows(c);
  const layers: DecoderLayerWeights[] = [];
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}`;
    const qkNorm = (name: string) =>
      variant.qkNorm ? rmsNorm(store.get(`${p}.self_attn.${name}.weight`), c.rmsNormEps) : undefined;
    layers.push({
      inputNorm: rmsNorm(store.get(`${p}.input_layernorm.weight`), c.rmsNormEps),
      attention: {
        qkv: qkvProjections(store, `${p}.self_attn`, c),
        qNorm: qkNorm("q_norm"),
        kNorm: qkNorm("k_norm"),
        out: store.linear(`${p}.self_attn.o_proj`, c.numHeads * c.headDim),
      },
      mlpNorm: rmsNorm(store.get(`${p}.post_attention_layernorm.weight`), c.rmsNormEps),
      mlp:
        variant.mlp?.(i, `${p}.mlp`) ??
        swigluMlp(
          gateUpProjections(store, `${p}.mlp`, c.hiddenSize, c.intermediateSize),
          store.linear(`${p}.mlp.down_proj`, c.intermediateSize),
        ),
      window: windows[i] ?? null,
    });
  }
  const { embedding, lmHead } = embeddingAndHead(store, c, "model.embed_tokens", "lm_head");
  const norm = rmsNorm(store.get("model.norm.weight"), c.rmsNormEps);
  return new DecoderModel(c, store, { embedding, layers, norm, lmHead }, standardRope(c));
}
