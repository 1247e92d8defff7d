// Phi-3 / Phi-3.5-mini: fused qkv_proj (q | k | v) and gate_up_proj (gate | up),
// split at run time; LongRoPE ("su"/"longrope") for the 128K variants.
import * as mx from "../mlx";
import type { ModelConfig } from "./config";
import { type DecoderLayerWeights, DecoderModel, embeddingAndHead } from "./decoder";
import { longRope, standardRope } from "./rope";
import type { LanguageModel } from "./types";
import { linear, type WeightStore } from "./weights";

export interface Phi3Options {
  /**
   * Use long_factor at every length, as mlx-lm does. Off by default: Pensieve
   * follows the model authors' rule (short_factor up to the original context).
   * Only the mlx-lm comparison tests turn it on.
   */
  alwaysLongRope?: boolean;
}

export function buildPhi3(config: ModelConfig, store: WeightStore, options: Phi3Options = {}): LanguageModel {
  const c = config;
  const qSize = c.numHeads * c.headDim;
  const kvSize = c.numKvHeads * c.headDim;
  const layers: DecoderLayerWeights[] = [];
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}`;
    const qkv = store.linear(`${p}.self_attn.qkv_proj`, c.hiddenSize);
    const gateUp = store.linear(`${p}.mlp.gate_up_proj`, c.hiddenSize);
    layers.push({
      inputNorm: store.get(`${p}.input_layernorm.weight`),
      postAttentionNorm: store.get(`${p}.post_attention_layernorm.weight`),
      qkv: (x) => mx.split(linear(x, qkv), [qSize, qSize + kvSize], -1) as [mx.MxArray, mx.MxArray, mx.MxArray],
      out: store.linear(`${p}.self_attn.o_proj`, qSize),
      gateUp: (x) => mx.split(linear(x, gateUp), [c.intermediateSize], -1) as [mx.MxArray, mx.MxArray],
      down: store.linear(`${p}.mlp.down_proj`, c.intermediateSize),
    });
  }
  const { embedding, lmHead } = embeddingAndHead(store, c, "model.embed_tokens", "lm_head");
  const rope =
    c.ropeScaling?.type === "longrope" ? longRope(c, { alwaysLong: options.alwaysLongRope }) : standardRope(c);
  return new DecoderModel(c, store, { embedding, layers, norm: store.get("model.norm.weight"), lmHead }, rope);
}
