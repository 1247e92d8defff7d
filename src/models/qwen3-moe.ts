// Qwen3-MoE (Qwen3-30B-A3B, Qwen3-Coder-30B-A3B): the Qwen3 block whose MLP is
// a router over num_experts SwiGLU experts (decoder.ts's routedMlp: top-k per
// token, renormalized when norm_topk_prob). All experts stay resident. Experts
// load stacked (mlx-community's switch_mlp) or per expert (Hugging Face's
// experts.N.{gate,up,down}_proj, float only). Reads side by side with mlx-lm's
// models/qwen3_moe.py and switch_layers.py (mlx-lm sorts tokens by expert for
// long prompts, which only changes speed).
import type { Architecture } from "./architecture";
import type { ModelConfig } from "./config";
import { buildLlama, type LlamaBlock, llamaShapes, stackedExperts } from "./llama";
import { QK_NORM_TENSORS } from "./qwen3";

/** Whether layer i routes to experts (the rest use the dense MLP). */
export function isSparseLayer(c: ModelConfig, i: number): boolean {
  const moe = c.moe;
  return !!moe && !moe.mlpOnlyLayers.includes(i) && (i + 1) % moe.decoderSparseStep === 0;
}

function moeOf(c: ModelConfig) {
  if (!c.moe) throw new Error("qwen3_moe: config.json has no num_experts");
  return c.moe;
}

const BLOCK: LlamaBlock = {
  qkNorm: true,
  windows: false,
  experts: stackedExperts("mlp", { gate: "gate_proj", up: "up_proj", down: "down_proj" }, isSparseLayer),
};

export const qwen3Moe: Architecture = {
  modelTypes: ["qwen3_moe"],
  hfClass: "Qwen3MoeForCausalLM",
  gguf: {
    architecture: "qwen3moe",
    // The router and the stacked experts, in mlx-community's switch_mlp layout.
    tensorNames: {
      ...QK_NORM_TENSORS,
      ffn_gate_inp: "mlp.gate",
      ffn_gate_exps: "mlp.switch_mlp.gate_proj",
      ffn_up_exps: "mlp.switch_mlp.up_proj",
      ffn_down_exps: "mlp.switch_mlp.down_proj",
    },
  },
  weightShapes: (c) => llamaShapes(c, BLOCK),
  build(kit, c, store) {
    moeOf(c);
    return buildLlama(kit, c, store, BLOCK);
  },
};
