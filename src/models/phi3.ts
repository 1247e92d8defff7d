// Phi-3 / Phi-3.5-mini / Phi-4-mini: the Llama block with fused qkv_proj
// (q | k | v) and gate_up_proj (gate | up), split at run time; LongRoPE
// ("su"/"longrope") for the 128K variants; Phi-4-mini rotates only part of
// each head (partial_rotary_factor) and ties its embeddings. Reads side by
// side with mlx-lm's models/phi3.py.
// GGUF: llama.cpp keeps gate|up fused in ffn_up and stores the LongRoPE
// factors as rope_factors_{long,short} tensors (the loader moves them into
// the metadata), with the original context and attention factor as keys.
import { type Architecture, type GgufMeta, ggufNumber as num } from "./architecture";
import type { ModelConfig, RopeScaling } from "./config";
import { buildLlama, type LlamaBlock, llamaShapes } from "./llama";

const BLOCK: LlamaBlock = {
  fused: true,
  // alwaysLongRope: use long_factor at every length, as mlx-lm does. Off by
  // default: Pensieve follows the model authors' rule (short_factor up to the
  // original context). Only the mlx-lm comparison tests turn it on.
  rope: (kit, c, options) =>
    c.ropeScaling?.type === "longrope"
      ? kit.rope.longRope(c, { alwaysLong: options.alwaysLongRope })
      : kit.rope.standardRope(c),
};

/** LongRoPE from phi3.rope.scaling.* (factors, original context, attention factor), when the context exceeds the original. */
function ggufLongRope(meta: GgufMeta, c: ModelConfig): RopeScaling | null {
  const longF = meta.get("phi3.rope.scaling.long_factor");
  const shortF = meta.get("phi3.rope.scaling.short_factor");
  const contextLength = c.maxPositionEmbeddings;
  const original = num(meta, "phi3.rope.scaling.original_context_length", contextLength);
  if (!Array.isArray(longF) || !Array.isArray(shortF) || contextLength <= original) return null;
  const scale = contextLength / original;
  return {
    type: "longrope",
    shortFactor: shortF as number[],
    longFactor: longF as number[],
    originalMaxPositionEmbeddings: original,
    attentionFactor: num(meta, "phi3.rope.scaling.attn_factor", Math.sqrt(1 + Math.log(scale) / Math.log(original))),
  };
}

export const phi3: Architecture = {
  modelTypes: ["phi3"],
  hfClass: "Phi3ForCausalLM",
  gguf: {
    architecture: "phi3",
    tensorNames: { attn_qkv: "self_attn.qkv_proj", ffn_up: "mlp.gate_up_proj" },
    config: (meta, c) => ({ ...c, ropeScaling: ggufLongRope(meta, c) }),
  },
  weightShapes: (c) => llamaShapes(c, BLOCK),
  build: (kit, c, store, options) => buildLlama(kit, c, store, BLOCK, options),
};
