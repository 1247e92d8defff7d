// Phi-3 / Phi-3.5-mini / Phi-4-mini: fused qkv_proj (q | k | v) and gate_up_proj
// (gate | up), split at run time; LongRoPE ("su"/"longrope") for the 128K
// variants; Phi-4-mini rotates only part of each head (partial_rotary_factor)
// and ties its embeddings. Reads side by side with mlx-lm's models/phi3.py.
import * as mx from "../mlx";
import type { ModelConfig } from "./config";
import { type DecoderLayerWeights, DecoderModel, embeddingAndHead, rmsNorm, swigluMlp } from "./decoder";
import { llamaWindows } from "./llama";
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
  const windows = llamaWindows(c);
  const layers: DecoderLayerWeights[] = [];
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}`;
    const qkv = store.linear(`${p}.self_attn.qkv_proj`, c.hiddenSize);
    const gateUp = store.linear(`${p}.mlp.gate_up_proj`, c.hiddenSize);
    layers.push({
      inputNorm: rmsNorm(store.get(`${p}.input_layernorm.weight`), c.rmsNormEps),
      attention: {
        qkv: (x) => mx.split(linear(x, qkv), [qSize, qSize + kvSize], -1) as [mx.MxArray, mx.MxArray, mx.MxArray],
        out: store.linear(`${p}.self_attn.o_proj`, qSize),
      },
      mlpNorm: rmsNorm(store.get(`${p}.post_attention_layernorm.weight`), c.rmsNormEps),
      mlp: swigluMlp(
        (x) => mx.split(linear(x, gateUp), [c.intermediateSize], -1) as [mx.MxArray, mx.MxArray],
        store.linear(`${p}.mlp.down_proj`, c.intermediateSize),
      ),
      window: windows[i] ?? null,
    });
  }
  const { embedding, lmHead } = embeddingAndHead(store, c, "model.embed_tokens", "lm_head");
  const rope =
    c.ropeScaling?.type === "longrope" ? longRope(c, { alwaysLong: options.alwaysLongRope }) : standardRope(c);
  const norm = rmsNorm(store.get("model.norm.weight"), c.rmsNormEps);
  return new DecoderModel(c, store, { embedding, layers, norm, lmHead }, rope);
}
