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
import { buildLlama, type LlamaBlock, llamaShapes } from "./llama";

function moeOf(c: ModelConfig) {
  if (!c.moe) throw new Error("mixtral: config.json has no num_local_experts");
  return c.moe;
}

const BLOCK: LlamaBlock = {
  windows: false,
  experts: {
    sparse: () => true,
    shapes(c, layer) {
      const p = `${layer}.block_sparse_moe`;
      const { numExperts: E, expertIntermediateSize: F } = moeOf(c);
      const hidden = c.hiddenSize;
      return [
        [`${p}.gate`, [E, hidden], "matrix"],
        [`${p}.switch_mlp.gate_proj`, [E, F, hidden], "matrix"],
        [`${p}.switch_mlp.up_proj`, [E, F, hidden], "matrix"],
        [`${p}.switch_mlp.down_proj`, [E, hidden, F], "matrix"],
      ];
    },
    build(kit, c, store, layer) {
      const p = `${layer}.block_sparse_moe`;
      const moe = moeOf(c);
      // Stacked (mlx-lm's names), else stacked at load from Hugging Face's experts.N.w1 (gate), w3 (up), w2 (down).
      const experts = (stacked: string, perExpert: string, inFeatures: number) =>
        store.experts(`${p}.switch_mlp.${stacked}`, inFeatures, {
          prefix: `${p}.experts`,
          name: perExpert,
          count: moe.numExperts,
        });
      const gate = experts("gate_proj", "w1", c.hiddenSize);
      const up = experts("up_proj", "w3", c.hiddenSize);
      const down = experts("down_proj", "w2", moe.expertIntermediateSize);
      return kit.decoder.routedMlp(moe, { router: store.linear(`${p}.gate`, c.hiddenSize), gate, up, down });
    },
  },
};

export const mixtral: Architecture = {
  modelTypes: ["mixtral"],
  hfClass: "MixtralForCausalLM",
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
