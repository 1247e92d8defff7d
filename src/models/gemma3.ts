// Gemma 3 text (gemma3_text: the 1B; gemma3: the text tower of 4B/12B/27B,
// whose config nests it under text_config and whose weights sit under
// language_model. next to a vision tower we drop).
// Differences from Llama, read side by side with mlx-lm's models/gemma3_text.py:
// - RMSNorm scales by (1 + w); norms before and after both attention and MLP;
// - per-head RMSNorm of q and k;
// - the embedding multiplied by √hidden, rounded to bfloat16 as the model does;
// - attention scale query_pre_attn_scalar^-1/2;
// - windowed (local) layers with their own RoPE base (rope_local_base_freq),
//   every sliding_window_pattern-th layer global (rope_theta and its scaling),
//   or as config.json's layer_types says;
// - GELU (tanh approximation) gating: down(gelu(gate) · up).
// - in float16 the residual sum is clipped to float16's range (computed in
//   float32), as mlx-lm's clip_residual does: Gemma's activations overflow it.
// Windowed layers keep the full KV cache and mask (see decoder.ts).
// GGUF: llama.cpp's converter stores the norms as 1 + w (undone at load) and
// leaves out what llama.cpp fixes: window pattern 6, local RoPE base 10000,
// attention scale head_dim^-1/2 (hidden/heads for the 62-layer 27B).
import type * as Mlx from "../mlx";
import { type Architecture, type GgufMeta, ggufNumber, type Json, type TensorSpec } from "./architecture";
import type { ModelConfig } from "./config";
import type { DecoderLayerWeights } from "./decoder";
import type { WeightStore } from "./weights";

/** Whether layer i is a windowed (local) layer. */
export function isSlidingLayer(c: ModelConfig, i: number): boolean {
  if (c.layerTypes) return c.layerTypes[i] === "sliding_attention";
  const pattern = c.slidingWindowPattern ?? 6;
  return (i + 1) % pattern !== 0;
}

/**
 * Gemma 3 configs leave out what equals the defaults of transformers'
 * Gemma3TextConfig (as mlx-lm's gemma3_text ModelArgs repeats them).
 */
const TEXT_DEFAULTS: Json = {
  hidden_size: 2304,
  num_hidden_layers: 26,
  intermediate_size: 9216,
  num_attention_heads: 8,
  num_key_value_heads: 4,
  head_dim: 256,
  rms_norm_eps: 1e-6,
  vocab_size: 262208,
  rope_theta: 1_000_000,
  rope_local_base_freq: 10_000,
  query_pre_attn_scalar: 256,
  sliding_window: 512,
  sliding_window_pattern: 6,
  max_position_embeddings: 131072,
};

/** The text model's config: the multimodal config nests it under text_config. */
function textConfig(c: Json): Json {
  if (c.model_type === "gemma3" && c.text_config && typeof c.text_config === "object") {
    const text = c.text_config as Json;
    return {
      ...TEXT_DEFAULTS,
      ...text,
      model_type: "gemma3",
      vocab_size: c.vocab_size ?? text.vocab_size ?? TEXT_DEFAULTS.vocab_size,
      quantization: c.quantization,
      eos_token_id: c.eos_token_id ?? text.eos_token_id,
      bos_token_id: c.bos_token_id ?? text.bos_token_id,
    };
  }
  if (c.model_type === "gemma3_text") return { ...TEXT_DEFAULTS, ...c };
  return c;
}

function ggufConfig(meta: GgufMeta, c: ModelConfig): ModelConfig {
  const pattern = meta.get("gemma3.attention.sliding_window_pattern");
  return {
    ...c,
    slidingWindowPattern: c.layerTypes ? null : typeof pattern === "number" ? pattern : 6,
    ropeLocalTheta: ggufNumber(meta, "gemma3.rope.freq_base_swa", 10000),
    queryPreAttnScalar: c.numLayers === 62 ? c.hiddenSize / c.numHeads : c.headDim,
  };
}

function weightShapes(c: ModelConfig): TensorSpec[] {
  const hidden = c.hiddenSize;
  const qSize = c.numHeads * c.headDim;
  const kvSize = c.numKvHeads * c.headDim;
  const ffn = c.intermediateSize;
  const shapes: TensorSpec[] = [["model.embed_tokens", [c.vocabSize, hidden], "matrix"]];
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}`;
    shapes.push([`${p}.self_attn.q_proj`, [qSize, hidden], "matrix"]);
    shapes.push([`${p}.self_attn.k_proj`, [kvSize, hidden], "matrix"]);
    shapes.push([`${p}.self_attn.v_proj`, [kvSize, hidden], "matrix"]);
    shapes.push([`${p}.self_attn.o_proj`, [hidden, qSize], "matrix"]);
    shapes.push([`${p}.self_attn.q_norm`, [c.headDim], "offset-norm"]);
    shapes.push([`${p}.self_attn.k_norm`, [c.headDim], "offset-norm"]);
    shapes.push([`${p}.mlp.gate_proj`, [ffn, hidden], "matrix"]);
    shapes.push([`${p}.mlp.up_proj`, [ffn, hidden], "matrix"]);
    shapes.push([`${p}.mlp.down_proj`, [hidden, ffn], "matrix"]);
    for (const norm of ["input", "post_attention", "pre_feedforward", "post_feedforward"]) {
      shapes.push([`${p}.${norm}_layernorm`, [hidden], "offset-norm"]);
    }
  }
  // Always tied: no lm_head.
  shapes.push(["model.norm", [hidden], "offset-norm"]);
  return shapes;
}

/** h + y, clipped to float16's range when computing in float16 (mlx-lm's clip_residual). */
function clippedResidual(mx: typeof Mlx, dtype: Mlx.Dtype) {
  if (dtype !== mx.Dtype.float16) return mx.add;
  const bound = 65504;
  return (h: Mlx.MxArray, y: Mlx.MxArray) =>
    mx.astype(
      mx.clip(mx.add(mx.astype(h, mx.Dtype.float32), mx.astype(y, mx.Dtype.float32)), -bound, bound),
      mx.Dtype.float16,
    );
}

/** √hidden as Gemma computes it: rounded to bfloat16. */
function embeddingScale(mx: typeof Mlx, hidden: number): number {
  return mx.tidy(
    () =>
      (
        mx.astype(mx.astype(mx.scalar(Math.sqrt(hidden)), mx.Dtype.bfloat16), mx.Dtype.float32).read() as Float32Array
      )[0] as number,
  );
}

/** The multimodal checkpoints keep the text model under language_model. (the vision tower is dropped). */
function textRoot(store: WeightStore): string {
  const root =
    store.has("language_model.model.embed_tokens.weight") || store.has("language_model.model.embed_tokens.scales")
      ? "language_model."
      : "";
  if (root) store.discard((n) => !n.startsWith(root));
  return root;
}

export const gemma3: Architecture = {
  modelTypes: ["gemma3_text", "gemma3"],
  hfClass: "Gemma3ForCausalLM",
  hfPrepare: textConfig,
  hfWrite: (_c, out) => {
    out.hidden_activation = "gelu_pytorch_tanh";
  },
  gguf: {
    architecture: "gemma3",
    tensorNames: {
      attn_q_norm: "self_attn.q_norm",
      attn_k_norm: "self_attn.k_norm",
      post_attention_norm: "post_attention_layernorm",
      ffn_norm: "pre_feedforward_layernorm",
      post_ffw_norm: "post_feedforward_layernorm",
    },
    config: ggufConfig,
    // llama.cpp's converter stores Gemma's RMSNorm weights as 1 + w (it scales by the weight
    // itself); Pensieve reads them as Hugging Face does: w, scaled by 1 + w.
    fixWeights(mx, arrays) {
      mx.tidy(() => {
        for (const [name, a] of arrays) {
          if (!/norm\.weight$/.test(name)) continue;
          arrays.set(name, mx.keep(mx.subtract(a, mx.astype(mx.scalar(1), a.dtype))));
          a.dispose();
        }
      });
    },
  },
  weightShapes,
  build({ mx, decoder: d, rope }, c, store) {
    const root = textRoot(store);
    const norm = (name: string) => d.offsetRmsNorm(store, name, c.rmsNormEps);
    const globalRope = rope.standardRope(c);
    const localRope = rope.standardRope(c, { base: c.ropeLocalTheta ?? 10_000, scaling: null });
    const layers: DecoderLayerWeights[] = [];
    for (let i = 0; i < c.numLayers; i++) {
      const p = `${root}model.layers.${i}`;
      const sliding = isSlidingLayer(c, i);
      const gateUp = d.gateUpProjections(store, `${p}.mlp`, c.hiddenSize, c.intermediateSize);
      const down = store.linear(`${p}.mlp.down_proj`, c.intermediateSize);
      layers.push({
        inputNorm: norm(`${p}.input_layernorm.weight`),
        attention: {
          qkv: d.qkvProjections(store, `${p}.self_attn`, c),
          qNorm: norm(`${p}.self_attn.q_norm.weight`),
          kNorm: norm(`${p}.self_attn.k_norm.weight`),
          out: store.linear(`${p}.self_attn.o_proj`, c.numHeads * c.headDim),
        },
        attentionOutputNorm: norm(`${p}.post_attention_layernorm.weight`),
        mlpNorm: norm(`${p}.pre_feedforward_layernorm.weight`),
        mlp: d.geluGatedMlp(gateUp, down),
        mlpOutputNorm: norm(`${p}.post_feedforward_layernorm.weight`),
        rope: sliding ? localRope : globalRope,
        window: sliding ? c.slidingWindow : null,
      });
    }
    const { embedding, lmHead } = d.embeddingAndHead(store, c, `${root}model.embed_tokens`, `${root}lm_head`);
    return new d.DecoderModel(
      c,
      store,
      {
        embedding,
        embedScale: embeddingScale(mx, c.hiddenSize),
        layers,
        norm: norm(`${root}model.norm.weight`),
        lmHead,
        attentionScale: (c.queryPreAttnScalar ?? c.headDim) ** -0.5,
        residual: clippedResidual(mx, store.dtype),
      },
      globalRope,
    );
  },
};
