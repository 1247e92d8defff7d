// Qwen2 / Qwen2.5 / Qwen2.5-Coder: the Llama block with biases on the q, k and
// v projections (none on o_proj or the MLP), RoPE base 1e6, embeddings tied in
// the small sizes. Reads side by side with mlx-lm's models/qwen2.py, which also
// ignores the config's sliding window (use_sliding_window is false in the
// released checkpoints).
import type { Architecture } from "./architecture";
import { buildLlama, type LlamaBlock, llamaShapes } from "./llama";

const BLOCK: LlamaBlock = { qkvBias: true, windows: false };

export const qwen2: Architecture = {
  modelTypes: ["qwen2"],
  hfClass: "Qwen2ForCausalLM",
  gguf: { architecture: "qwen2" },
  weightShapes: (c) => llamaShapes(c, BLOCK),
  build(kit, c, store) {
    for (const part of ["q_proj", "k_proj", "v_proj"]) {
      if (!store.has(`model.layers.0.self_attn.${part}.bias`)) {
        throw new Error(`qwen2 expects a bias on ${part} (model.layers.0.self_attn.${part}.bias is missing)`);
      }
    }
    return buildLlama(kit, c, store, BLOCK);
  },
};
