// Llama (Llama 2/3.x, SmolLM2): the Llama-shaped block that Mistral, Mixtral,
// Qwen2, Qwen3, Qwen3-MoE and Phi-3 vary (LlamaBlock says how). Separate q/k/v and
// gate/up projections in the files, fused at load when their packing agrees.
// Reads side by side with mlx-lm's models/llama.py.
// Sliding windows: layers config.json's layer_types marks "sliding_attention"
// (mistral.ts adds Hugging Face Mistral's every-layer rule).
// GGUF: llama.cpp stores llama's q/k rows permuted for its rotate-pairs RoPE;
// the load undoes it (the other families use NeoX-style RoPE, stored as is).
import type { MxArray } from "../mlx";
import type { Architecture, BuildKit, BuildOptions, TensorSpec } from "./architecture";
import type { ModelConfig } from "./config";
import type { DecoderLayerWeights, Mlp } from "./decoder";
import type { Rope } from "./rope";
import type { LanguageModel } from "./types";
import type { WeightStore } from "./weights";

/** Which layers attend through the sliding window (as layer_types says; none without it). */
export function llamaWindows(c: ModelConfig): Array<number | null> {
  const w = c.slidingWindow;
  return Array.from({ length: c.numLayers }, (_, i) => {
    if (!w || !c.layerTypes) return null;
    return c.layerTypes[i] === "sliding_attention" ? w : null;
  });
}

/** A routed-experts MLP in place of the dense one at some layers (qwen3-moe.ts, mixtral.ts). */
export interface LlamaExperts {
  /** Whether layer i routes to experts (the others keep the dense MLP). */
  sparse(c: ModelConfig, layer: number): boolean;
  /** The routed MLP's tensors in a layer (prefix model.layers.N), in draw order. */
  shapes(c: ModelConfig, layerPrefix: string): TensorSpec[];
  build(kit: BuildKit, c: ModelConfig, store: WeightStore, layerPrefix: string): Mlp;
}

/**
 * SwiGLU experts and their router under a layer's `module` (Qwen3-MoE: mlp,
 * Mixtral: block_sparse_moe): the router `gate`, the experts stacked as
 * mlx-community stores them (switch_mlp.{gate,up,down}_proj) or, in float
 * checkpoints, Hugging Face's experts.N.<name> (stacked at load). Routed by
 * decoder.ts's routedMlp.
 */
export function stackedExperts(
  module: string,
  perExpert: { gate: string; up: string; down: string },
  sparse: LlamaExperts["sparse"],
): LlamaExperts {
  const moeOf = (c: ModelConfig) => {
    if (!c.moe) throw new Error(`${c.modelType}: config.json has no experts`);
    return c.moe;
  };
  return {
    sparse,
    shapes(c, layer) {
      const p = `${layer}.${module}`;
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
      const p = `${layer}.${module}`;
      const moe = moeOf(c);
      const experts = (stacked: string, name: string, inFeatures: number) =>
        store.experts(`${p}.switch_mlp.${stacked}`, inFeatures, {
          prefix: `${p}.experts`,
          name,
          count: moe.numExperts,
        });
      return kit.decoder.routedMlp(moe, {
        router: store.linear(`${p}.gate`, c.hiddenSize),
        gate: experts("gate_proj", perExpert.gate, c.hiddenSize),
        up: experts("up_proj", perExpert.up, c.hiddenSize),
        down: experts("down_proj", perExpert.down, moe.expertIntermediateSize),
      });
    },
  };
}

/** What a Llama-shaped family changes. The same recipe gives the build and the weight shapes. */
export interface LlamaBlock {
  /** q|k|v stored as one qkv_proj and gate|up as one gate_up_proj (Phi-3). */
  fused?: boolean;
  /** Biases on the q, k and v projections (Qwen2). */
  qkvBias?: boolean;
  /** Per-head RMSNorm of q and k before RoPE (Qwen3). */
  qkNorm?: boolean;
  /** false: the config's sliding window is ignored (Qwen, as mlx-lm does). */
  windows?: boolean;
  experts?: LlamaExperts;
  /** The model's RoPE; default the config's plain/linear/llama3 one. */
  rope?(kit: BuildKit, c: ModelConfig, options: BuildOptions): Rope;
}

export function llamaShapes(c: ModelConfig, block: LlamaBlock = {}): TensorSpec[] {
  const hidden = c.hiddenSize;
  const ffn = c.intermediateSize;
  const qSize = c.numHeads * c.headDim;
  const kvSize = c.numKvHeads * c.headDim;
  const shapes: TensorSpec[] = [["model.embed_tokens", [c.vocabSize, hidden], "matrix"]];
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}`;
    const sparse = block.experts?.sparse(c, i) ?? false;
    if (block.fused) {
      shapes.push([`${p}.self_attn.qkv_proj`, [qSize + 2 * kvSize, hidden], "matrix"]);
      shapes.push([`${p}.mlp.gate_up_proj`, [2 * ffn, hidden], "matrix"]);
    } else {
      shapes.push([`${p}.self_attn.q_proj`, [qSize, hidden], "matrix"]);
      shapes.push([`${p}.self_attn.k_proj`, [kvSize, hidden], "matrix"]);
      shapes.push([`${p}.self_attn.v_proj`, [kvSize, hidden], "matrix"]);
      if (block.qkvBias) {
        shapes.push([`${p}.self_attn.q_proj.bias`, [qSize], "bias"]);
        shapes.push([`${p}.self_attn.k_proj.bias`, [kvSize], "bias"]);
        shapes.push([`${p}.self_attn.v_proj.bias`, [kvSize], "bias"]);
      }
      if (block.qkNorm) {
        shapes.push([`${p}.self_attn.q_norm`, [c.headDim], "norm"]);
        shapes.push([`${p}.self_attn.k_norm`, [c.headDim], "norm"]);
      }
      if (sparse) shapes.push(...(block.experts as LlamaExperts).shapes(c, p));
      else {
        shapes.push([`${p}.mlp.gate_proj`, [ffn, hidden], "matrix"]);
        shapes.push([`${p}.mlp.up_proj`, [ffn, hidden], "matrix"]);
      }
    }
    shapes.push([`${p}.self_attn.o_proj`, [hidden, qSize], "matrix"]);
    if (!sparse) shapes.push([`${p}.mlp.down_proj`, [hidden, ffn], "matrix"]);
    shapes.push([`${p}.input_layernorm`, [hidden], "norm"]);
    shapes.push([`${p}.post_attention_layernorm`, [hidden], "norm"]);
  }
  shapes.push(["model.norm", [hidden], "norm"]);
  if (!c.tieWordEmbeddings) shapes.push(["lm_head", [c.vocabSize, hidden], "matrix"]);
  return shapes;
}

export function buildLlama(
  kit: BuildKit,
  config: ModelConfig,
  store: WeightStore,
  block: LlamaBlock = {},
  options: BuildOptions = {},
): LanguageModel {
  const d = kit.decoder;
  const c = block.windows === false ? { ...config, slidingWindow: null } : config;
  const qSize = c.numHeads * c.headDim;
  const kvSize = c.numKvHeads * c.headDim;
  const windows = llamaWindows(c);
  const layers: DecoderLayerWeights[] = [];
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}`;
    const norm = (name: string) => d.rmsNorm(store.get(`${p}.${name}.weight`), c.rmsNormEps);
    const qkNorm = (name: string) => (block.qkNorm ? norm(`self_attn.${name}`) : undefined);
    const denseMlp = () => {
      const gateUp = block.fused
        ? (d.splitProjection(store, `${p}.mlp.gate_up_proj`, c.hiddenSize, [c.intermediateSize]) as (
            x: MxArray,
          ) => [MxArray, MxArray])
        : d.gateUpProjections(store, `${p}.mlp`, c.hiddenSize, c.intermediateSize);
      return d.swigluMlp(gateUp, store.linear(`${p}.mlp.down_proj`, c.intermediateSize));
    };
    layers.push({
      inputNorm: norm("input_layernorm"),
      attention: {
        qkv: block.fused
          ? (d.splitProjection(store, `${p}.self_attn.qkv_proj`, c.hiddenSize, [qSize, qSize + kvSize]) as (
              x: MxArray,
            ) => [MxArray, MxArray, MxArray])
          : d.qkvProjections(store, `${p}.self_attn`, c),
        qNorm: qkNorm("q_norm"),
        kNorm: qkNorm("k_norm"),
        out: store.linear(`${p}.self_attn.o_proj`, qSize),
      },
      mlpNorm: norm("post_attention_layernorm"),
      mlp: block.experts?.sparse(c, i) ? block.experts.build(kit, c, store, p) : denseMlp(),
      window: windows[i] ?? null,
    });
  }
  const { embedding, lmHead } = d.embeddingAndHead(store, c, "model.embed_tokens", "lm_head");
  const norm = d.rmsNorm(store.get("model.norm.weight"), c.rmsNormEps);
  const rope = block.rope ? block.rope(kit, c, options) : kit.rope.standardRope(c);
  return new d.DecoderModel(c, store, { embedding, layers, norm, lmHead }, rope);
}

/**
 * llama.cpp stores llama q/k rows interleaved per head (for its rotate-pairs
 * RoPE). Row 2i+s of a head holds Hugging Face row s*D/2+i; this index undoes it.
 */
export function unpermuteIndex(heads: number, headDim: number): Int32Array {
  const idx = new Int32Array(heads * headDim);
  const half = headDim / 2;
  for (let h = 0; h < heads; h++) {
    for (let s = 0; s < 2; s++) {
      for (let i = 0; i < half; i++) idx[h * headDim + s * half + i] = h * headDim + 2 * i + s;
    }
  }
  return idx;
}

export const llama: Architecture = {
  modelTypes: ["llama"],
  hfClass: "LlamaForCausalLM",
  gguf: {
    architecture: "llama",
    // Undo llama.cpp's q/k row permutation (rows only: quantization groups run along columns).
    fixWeights(mx, arrays, config) {
      mx.tidy(() => {
        for (const [proj, heads] of [
          ["q_proj", config.numHeads],
          ["k_proj", config.numKvHeads],
        ] as const) {
          const index = mx.int32(unpermuteIndex(heads, config.headDim));
          for (let i = 0; i < config.numLayers; i++) {
            for (const suffix of ["weight", "scales", "biases", "bias"]) {
              const name = `model.layers.${i}.self_attn.${proj}.${suffix}`;
              const a = arrays.get(name);
              if (!a) continue;
              arrays.set(name, mx.keep(mx.take(a, index, 0)));
              a.dispose();
            }
          }
        }
      });
    },
  },
  weightShapes: (c) => llamaShapes(c),
  build: (kit, c, store) => buildLlama(kit, c, store),
};
