// Mixtral (8x7B, 8x22B): the Llama block whose MLP is a router over
// num_local_experts SwiGLU experts (w1 gate, w3 up, w2 down), top
// num_experts_per_tok per token, their weights a softmax over the chosen
// logits (the same as a softmax over all, renormalized over the chosen: the
// routed MLP's normTopkProb). Every layer routes; intermediate_size is the
// expert width. Reads side by side with mlx-lm's models/mixtral.py, which
// also ignores sliding_window. Experts load stacked (mlx-community's
// block_sparse_moe.switch_mlp) or per expert (Hugging Face's experts.N.w1,
// float only). Mixtral GGUFs say "llama" with expert tensors: not read.
import type { Architecture } from "./architecture";
import type { ModelConfig } from "./config";
import { buildLlama, type LlamaBlock, llamaShapes, stackedExperts } from "./llama";

function moeOf(c: ModelConfig) {
  if (!c.moe) throw new Error("mixtral: config.json has no num_local_experts");
  return c.moe;
}

const BLOCK: LlamaBlock = {
  windows: false,
  experts: stackedExperts("block_sparse_moe", { gate: "w1", up: "w3", down: "w2" }, () => true),
};

export const mixtral: Architecture = {
  modelTypes: ["mixtral"],
  hfClass: "MixtralForCausalLM",
  // transformers' MixtralConfig and mlx-lm default the RoPE base to 1e6 (Llama's is 1e4).
  hfPrepare: (raw) => ({ rope_theta: 1_000_000, ...raw }),
  hfAdjust: (c, raw) => {
    const experts = raw.num_local_experts;
    const topK = raw.num_experts_per_tok;
    if (typeof experts !== "number" || typeof topK !== "number") return c;
    return {
      ...c,
      moe: {
        numExperts: experts,
        topK,
        expertIntermediateSize: c.intermediateSize,
        normTopkProb: true,
        decoderSparseStep: 1,
        mlpOnlyLayers: [],
      },
    };
  },
  hfWrite: (c, out) => {
    if (!c.moe) return;
    out.num_local_experts = c.moe.numExperts;
  },
  weightShapes: (c) => llamaShapes(c, BLOCK),
  build(kit, c, store) {
    moeOf(c);
    return buildLlama(kit, c, store, BLOCK);
  },
};
