// Llama-family decoder (Llama 2/3.x, SmolLM2, Mistral-style configs): separate
// q/k/v projections and separate gate/up in the files, fused at load when their packing agrees.
import * as mx from "../mlx";
import type { ModelConfig } from "./config";
import { type DecoderLayerWeights, DecoderModel, embeddingAndHead } from "./decoder";
import { standardRope } from "./rope";
import type { LanguageModel } from "./types";
import { linear, type WeightStore } from "./weights";

export function buildLlama(config: ModelConfig, store: WeightStore): LanguageModel {
  const c = config;
  const qSize = c.numHeads * c.headDim;
  const kvSize = c.numKvHeads * c.headDim;
  const layers: DecoderLayerWeights[] = [];
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}`;
    const q = store.linear(`${p}.self_attn.q_proj`, c.hiddenSize);
    const k = store.linear(`${p}.self_attn.k_proj`, c.hiddenSize);
    const v = store.linear(`${p}.self_attn.v_proj`, c.hiddenSize);
    const gate = store.linear(`${p}.mlp.gate_proj`, c.hiddenSize);
    const up = store.linear(`${p}.mlp.up_proj`, c.hiddenSize);
    // One product each for q|k|v and gate|up, as Phi-3 stores them, when their packing agrees.
    const qkv = store.fuse([q, k, v]);
    const gateUp = store.fuse([gate, up]);
    layers.push({
      inputNorm: store.get(`${p}.input_layernorm.weight`),
      postAttentionNorm: store.get(`${p}.post_attention_layernorm.weight`),
      qkv: qkv
        ? (x) => mx.split(linear(x, qkv), [qSize, qSize + kvSize], -1) as [mx.MxArray, mx.MxArray, mx.MxArray]
        : (x) => [linear(x, q), linear(x, k), linear(x, v)],
      out: store.linear(`${p}.self_attn.o_proj`, qSize),
      gateUp: gateUp
        ? (x) => mx.split(linear(x, gateUp), [c.intermediateSize], -1) as [mx.MxArray, mx.MxArray]
        : (x) => [linear(x, gate), linear(x, up)],
      down: store.linear(`${p}.mlp.down_proj`, c.intermediateSize),
    });
  }
  const { embedding, lmHead } = embeddingAndHead(store, c, "model.embed_tokens", "lm_head");
  const rope = standardRope(c);
  return new DecoderModel(c, store, { embedding, layers, norm: store.get("model.norm.weight"), lmHead }, rope);
}
