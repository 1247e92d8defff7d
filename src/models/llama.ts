// Llama-family decoder (Llama 2/3.x, SmolLM2, Mistral-style configs): separate
// q/k/v projections, SwiGLU MLP with separate gate and up.
import { DecoderModel, type DecoderLayerWeights, embeddingAndHead } from "./decoder";
import type { ModelConfig } from "./config";
import { standardRope } from "./rope";
import type { LanguageModel } from "./types";
import { linear, type WeightStore } from "./weights";

export function buildLlama(config: ModelConfig, store: WeightStore): LanguageModel {
  const c = config;
  const layers: DecoderLayerWeights[] = [];
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}`;
    const q = store.linear(`${p}.self_attn.q_proj`, c.hiddenSize);
    const k = store.linear(`${p}.self_attn.k_proj`, c.hiddenSize);
    const v = store.linear(`${p}.self_attn.v_proj`, c.hiddenSize);
    const gate = store.linear(`${p}.mlp.gate_proj`, c.hiddenSize);
    const up = store.linear(`${p}.mlp.up_proj`, c.hiddenSize);
    layers.push({
      inputNorm: store.get(`${p}.input_layernorm.weight`),
      postAttentionNorm: store.get(`${p}.post_attention_layernorm.weight`),
      qkv: (x) => [linear(x, q), linear(x, k), linear(x, v)],
      out: store.linear(`${p}.self_attn.o_proj`, c.numHeads * c.headDim),
      gateUp: (x) => [linear(x, gate), linear(x, up)],
      down: store.linear(`${p}.mlp.down_proj`, c.intermediateSize),
    });
  }
  const { embedding, lmHead } = embeddingAndHead(store, c, "model.embed_tokens", "lm_head");
  const rope = standardRope(c);
  return new DecoderModel(c, store, { embedding, layers, norm: store.get("model.norm.weight"), lmHead }, rope);
}
