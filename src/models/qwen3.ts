// Qwen3 (dense, and Qwen3-Coder's dense sizes): the Llama block with a
// per-head RMSNorm on q and on k before RoPE, no q/k/v bias, explicit head_dim.
// Reads side by side with mlx-lm's models/qwen3.py.
import type { Architecture } from "./architecture";
import { buildLlama, type LlamaBlock, llamaShapes } from "./llama";

const BLOCK: LlamaBlock = { qkNorm: true, windows: false };

/** llama.cpp's names for the q/k norms (Qwen3, Qwen3-MoE). */
export const QK_NORM_TENSORS = { attn_q_norm: "self_attn.q_norm", attn_k_norm: "self_attn.k_norm" };

export const qwen3: Architecture = {
  modelTypes: ["qwen3"],
  hfClass: "Qwen3ForCausalLM",
  gguf: { architecture: "qwen3", tensorNames: QK_NORM_TENSORS },
  weightShapes: (c) => llamaShapes(c, BLOCK),
  build: (kit, c, store) => buildLlama(kit, c, store, BLOCK),
};
