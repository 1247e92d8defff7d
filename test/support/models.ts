// Small random models in the real MLX format, written by our own code, for
// tests and for the reference fixtures (scripts/fixtures/). The same spec and
// seed always give the same weights.
import { createHash } from "node:crypto";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { type RandomModelSpec, shrinkConfig, writeRandomModel } from "../../src/models/random";
import { REPO_ROOT } from "../../src/paths";

export const SHARED_FIXTURES = join(REPO_ROOT, "..", "shared", "fixtures");
export const PHI3_FILES = join(SHARED_FIXTURES, "phi3-mini-128k");
export const EMBEDDED_MODEL = join(REPO_ROOT, ".pensieve", "models", "SmolLM2-135M-Instruct.Q4_1.gguf");
export const TEST_TMP = join(REPO_ROOT, "test", ".tmp");

/** Four heads over two KV heads, hidden 128: the shape most tiny models share. */
const SMALL_GQA = {
  hidden_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  intermediate_size: 256,
};

/** A tiny model over Phi-3's tokenizer (its vocabulary and special ids unless the config says otherwise). */
function withPhi3Tokenizer(seed: number, config: Record<string, unknown>, std?: number): RandomModelSpec {
  return {
    config: { vocab_size: 32064, bos_token_id: 1, eos_token_id: 32000, ...config },
    tokenizerFrom: PHI3_FILES,
    seed,
    ...(std === undefined ? {} : { std }),
  };
}

/** Tiny models. Phi-3 keeps head_dim 96 so the real 48 LongRoPE factors apply. */
export const TINY_SPECS: Record<string, () => RandomModelSpec> = {
  // Phi-3 128K config shrunk; original context 64 and max 2048 keep the real ratio (32x).
  "tiny-phi3": () => ({
    config: shrinkConfig(join(PHI3_FILES, "config.json"), {
      hidden_size: 192,
      num_hidden_layers: 2,
      num_attention_heads: 2,
      num_key_value_heads: 2,
      intermediate_size: 256,
      original_max_position_embeddings: 64,
      max_position_embeddings: 2048,
    }),
    tokenizerFrom: PHI3_FILES,
    seed: 1,
  }),
  // Llama 3.x shape: grouped-query attention, tied embeddings, llama3 RoPE scaling.
  "tiny-llama": () =>
    withPhi3Tokenizer(2, {
      architectures: ["LlamaForCausalLM"],
      model_type: "llama",
      ...SMALL_GQA,
      head_dim: 32,
      rms_norm_eps: 1e-5,
      rope_theta: 500000,
      max_position_embeddings: 4096,
      tie_word_embeddings: true,
      rope_scaling: {
        rope_type: "llama3",
        factor: 8,
        low_freq_factor: 1,
        high_freq_factor: 4,
        original_max_position_embeddings: 64,
      },
      quantization: { group_size: 32, bits: 4 },
    }),
  // Plain float16 weights (no quantization), untied head.
  "tiny-llama-f16": () =>
    withPhi3Tokenizer(3, {
      architectures: ["LlamaForCausalLM"],
      model_type: "llama",
      hidden_size: 64,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 4,
      intermediate_size: 128,
      rms_norm_eps: 1e-6,
      rope_theta: 10000,
      max_position_embeddings: 2048,
      tie_word_embeddings: false,
    }),
  // Qwen2.5 shape: q/k/v biases, tied embeddings, no head_dim key, the real (unused) window keys.
  "tiny-qwen2": () =>
    withPhi3Tokenizer(4, {
      architectures: ["Qwen2ForCausalLM"],
      model_type: "qwen2",
      ...SMALL_GQA,
      rms_norm_eps: 1e-6,
      rope_theta: 1000000,
      max_position_embeddings: 32768,
      sliding_window: 32768,
      use_sliding_window: false,
      max_window_layers: 21,
      tie_word_embeddings: true,
      quantization: { group_size: 32, bits: 4 },
    }),
  // Qwen3 shape: q/k norms, head_dim (64) unlike hidden/heads (32), untied head, 8-bit.
  "tiny-qwen3": () =>
    withPhi3Tokenizer(5, {
      architectures: ["Qwen3ForCausalLM"],
      model_type: "qwen3",
      ...SMALL_GQA,
      head_dim: 64,
      rms_norm_eps: 1e-6,
      rope_theta: 1000000,
      max_position_embeddings: 40960,
      tie_word_embeddings: false,
      quantization: { group_size: 64, bits: 8 },
    }),
  // Qwen3-30B-A3B shape: 8 experts, top 2, normalized router; layer 1 dense
  // (mlp_only_layers); the router 8-bit through a per-module override.
  "tiny-qwen3-moe": () =>
    withPhi3Tokenizer(
      6,
      {
        architectures: ["Qwen3MoeForCausalLM"],
        model_type: "qwen3_moe",
        ...SMALL_GQA,
        num_hidden_layers: 3,
        head_dim: 32,
        moe_intermediate_size: 64,
        num_experts: 8,
        num_experts_per_tok: 2,
        norm_topk_prob: true,
        decoder_sparse_step: 1,
        mlp_only_layers: [1],
        rms_norm_eps: 1e-6,
        rope_theta: 1000000,
        max_position_embeddings: 40960,
        tie_word_embeddings: false,
        quantization: {
          group_size: 32,
          bits: 4,
          "model.layers.0.mlp.gate": { group_size: 64, bits: 8 },
          "model.layers.2.mlp.gate": { group_size: 64, bits: 8 },
        },
      },
      0.05,
    ),
  // Gemma 3 shape: windowed layers (window 16) with global ones every 3rd,
  // linear RoPE scaling on the global layers, head_dim 48, query_pre_attn_scalar 64, tied.
  "tiny-gemma3": () =>
    withPhi3Tokenizer(7, {
      architectures: ["Gemma3ForCausalLM"],
      model_type: "gemma3_text",
      ...SMALL_GQA,
      num_hidden_layers: 5,
      head_dim: 48,
      rms_norm_eps: 1e-6,
      rope_theta: 1000000,
      rope_local_base_freq: 10000,
      rope_scaling: { rope_type: "linear", factor: 8.0 },
      query_pre_attn_scalar: 64,
      sliding_window: 16,
      sliding_window_pattern: 3,
      max_position_embeddings: 32768,
      hidden_activation: "gelu_pytorch_tanh",
      final_logit_softcapping: null,
      attn_logit_softcapping: null,
      bos_token_id: 2,
      eos_token_id: [1, 106],
      quantization: { group_size: 32, bits: 4 },
    }),
  // Phi-4-mini shape: partial rotary (0.75), LongRoPE over the rotated 48 dims, GQA, tied embeddings.
  "tiny-phi4-mini": () =>
    withPhi3Tokenizer(8, {
      architectures: ["Phi3ForCausalLM"],
      model_type: "phi3",
      ...SMALL_GQA,
      hidden_size: 256,
      rms_norm_eps: 1e-5,
      rope_theta: 10000,
      partial_rotary_factor: 0.75,
      original_max_position_embeddings: 64,
      max_position_embeddings: 2048,
      rope_scaling: {
        type: "longrope",
        short_factor: Array.from({ length: 24 }, (_, i) => 1 + i * 0.05),
        long_factor: Array.from({ length: 24 }, (_, i) => 1 + i * 0.9),
      },
      tie_word_embeddings: true,
      quantization: { group_size: 64, bits: 4 },
    }),
  // Mistral with a sliding window (16): float16 weights; layer 0 windowed, layer 1 full (layer_types).
  "tiny-mistral-swa": () =>
    withPhi3Tokenizer(9, {
      architectures: ["MistralForCausalLM"],
      model_type: "mistral",
      ...SMALL_GQA,
      rms_norm_eps: 1e-5,
      rope_theta: 1000000,
      max_position_embeddings: 32768,
      sliding_window: 16,
      layer_types: ["sliding_attention", "full_attention"],
      tie_word_embeddings: false,
      eos_token_id: 2,
    }),
  // Mixtral shape: every layer routes over 4 experts (width 64), top 2; layer 0's router 8-bit by override.
  "tiny-mixtral": () =>
    withPhi3Tokenizer(
      10,
      {
        architectures: ["MixtralForCausalLM"],
        model_type: "mixtral",
        ...SMALL_GQA,
        intermediate_size: 64,
        num_local_experts: 4,
        num_experts_per_tok: 2,
        rms_norm_eps: 1e-5,
        rope_theta: 1000000,
        max_position_embeddings: 32768,
        sliding_window: null,
        tie_word_embeddings: false,
        quantization: {
          group_size: 32,
          bits: 4,
          "model.layers.0.block_sparse_moe.gate": { group_size: 64, bits: 8 },
        },
      },
      0.05,
    ),
};

function specDigest(spec: RandomModelSpec): string {
  return createHash("sha256").update(JSON.stringify(spec)).digest("hex").slice(0, 16);
}

/** Writes (once) and returns the folder of a tiny model. */
export function tinyModel(name: keyof typeof TINY_SPECS | string, root = join(TEST_TMP, "models")): string {
  const make = TINY_SPECS[name];
  if (!make) throw new Error(`no tiny model "${name}"`);
  const spec = make();
  const dir = join(root, name);
  const stamp = join(dir, ".spec");
  const digest = specDigest(spec);
  if (existsSync(stamp) && readFileSync(stamp, "utf8") === digest) return dir;
  rmSync(dir, { recursive: true, force: true });
  writeRandomModel(dir, spec);
  Bun.write(stamp, digest);
  return dir;
}

/** sha256 of a model's weights file (fixtures record it to catch generator drift). */
export function weightsDigest(dir: string): string {
  return createHash("sha256")
    .update(readFileSync(join(dir, "model.safetensors")))
    .digest("hex");
}
