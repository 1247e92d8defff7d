// Shared set-up for the Hub tests: a small generated model folder, a temp HF_HOME,
// and an env that points the client at the fake hub.
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const TINY_LLAMA_CONFIG = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 256,
  max_position_embeddings: 2048,
  rms_norm_eps: 1e-5,
  quantization: { group_size: 64, bits: 4 },
};

/** A model repo folder: two weight shards with an index, tokenizer files, and files that must be skipped. */
export function makeModelFolder(dir: string): Record<string, Buffer> {
  const files: Record<string, Buffer> = {
    "config.json": Buffer.from(JSON.stringify(TINY_LLAMA_CONFIG, null, 2)),
    "generation_config.json": Buffer.from(JSON.stringify({ eos_token_id: 2 })),
    "tokenizer.json": Buffer.from(JSON.stringify({ version: "1.0", model: { type: "BPE", vocab: { a: 0 } } })),
    "tokenizer_config.json": Buffer.from(JSON.stringify({ chat_template: "{{ messages }}" })),
    "special_tokens_map.json": Buffer.from(JSON.stringify({ eos_token: "</s>" })),
    "model-00001-of-00002.safetensors": randomBytes(300_000),
    "model-00002-of-00002.safetensors": randomBytes(200_000),
    "model.safetensors.index.json": Buffer.from(
      JSON.stringify({
        metadata: { total_size: 500_000 },
        weight_map: {
          "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
          "model.layers.0.mlp.up_proj.weight": "model-00001-of-00002.safetensors",
          "lm_head.weight": "model-00002-of-00002.safetensors",
        },
      }),
    ),
    // Everything below must not be downloaded.
    "consolidated.safetensors": randomBytes(50_000),
    "pytorch_model.bin": randomBytes(40_000),
    "onnx/model.onnx": randomBytes(10_000),
    "README.md": Buffer.from("# tiny\n"),
    ".gitattributes": Buffer.from("*.safetensors filter=lfs\n"),
  };
  for (const [name, bytes] of Object.entries(files)) {
    mkdirSync(join(dir, name, ".."), { recursive: true });
    writeFileSync(join(dir, name), bytes);
  }
  return files;
}

export const MODEL_FILES = [
  "config.json",
  "generation_config.json",
  "model-00001-of-00002.safetensors",
  "model-00002-of-00002.safetensors",
  "model.safetensors.index.json",
  "special_tokens_map.json",
  "tokenizer.json",
  "tokenizer_config.json",
];

export function tempDir(prefix: string): { path: string; cleanup: () => void } {
  const path = mkdtempSync(join(tmpdir(), `pensieve-${prefix}-`));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}

/** Fast retries so failure tests do not wait on real backoff. */
export const FAST_RETRY = { retries: 3, baseDelayMs: 1, maxDelayMs: 5 };
