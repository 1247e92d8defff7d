// Family rules read from config.json: which layers are windowed (Mistral,
// Gemma 3), Phi-4-mini's partial rotary, Gemma's defaults and its multimodal
// nesting, Qwen3-MoE's sparse layers, Mixtral's experts; and MoE weights in
// Hugging Face's per-expert layout give the same model as mlx-community's
// stacked one.
import { describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { cacheFor, prefill } from "../../src/engine/one-sequence";
import * as mx from "../../src/mlx";
import { configFromHf } from "../../src/models/config";
import { convertGguf } from "../../src/models/gguf-to-mlx";
import { isSlidingLayer } from "../../src/models/gemma3";
import { llamaWindows } from "../../src/models/llama";
import { loadModel } from "../../src/models/loader";
import { REPO_ROOT } from "../../src/paths";
import { isSparseLayer } from "../../src/models/qwen3-moe";
import { type RandomModelSpec, writeRandomModel } from "../../src/models/random";
import { TEST_TMP, TINY_SPECS, tinyModel } from "../support/models";
import { promptIds } from "../support/reference";

const base = {
  hidden_size: 64,
  num_hidden_layers: 4,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  intermediate_size: 128,
  vocab_size: 512,
};

describe("config rules per family", () => {
  test("Mistral: a sliding_window without layer_types windows every layer (Hugging Face's Mistral)", () => {
    expect(llamaWindows(configFromHf({ ...base, model_type: "mistral", sliding_window: 4096 }))).toEqual([
      4096, 4096, 4096, 4096,
    ]);
    expect(llamaWindows(configFromHf({ ...base, model_type: "mistral", sliding_window: null }))).toEqual([
      null,
      null,
      null,
      null,
    ]);
    const mixed = configFromHf({
      ...base,
      model_type: "mistral",
      sliding_window: 16,
      layer_types: ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    });
    expect(llamaWindows(mixed)).toEqual([16, null, 16, null]);
    // Llama configs have no window unless layer_types says so; Qwen2.5's unused window stays off.
    expect(llamaWindows(configFromHf({ ...base, model_type: "llama", sliding_window: 4096 }))).toEqual([
      null,
      null,
      null,
      null,
    ]);
    expect(
      configFromHf({ ...base, model_type: "qwen2", sliding_window: 32768, use_sliding_window: false }).slidingWindow,
    ).toBeNull();
  });

  test("Gemma 3: every sliding_window_pattern-th layer is global, or as layer_types says; defaults filled", () => {
    const c = configFromHf({ ...base, model_type: "gemma3_text", num_hidden_layers: 12 });
    expect(c.slidingWindow).toBe(512);
    expect(c.ropeLocalTheta).toBe(10000);
    expect(c.queryPreAttnScalar).toBe(256);
    expect(c.headDim).toBe(256);
    // "s" windowed (local), "G" global: layers 6 and 12 are global.
    const kinds = Array.from({ length: 12 }, (_, i) => (isSlidingLayer(c, i) ? "s" : "G")).join("");
    expect(kinds).toBe("sssssGsssssG");
    const typed = configFromHf({
      ...base,
      model_type: "gemma3_text",
      layer_types: ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
    });
    expect([0, 1, 2, 3].map((i) => isSlidingLayer(typed, i))).toEqual([false, true, true, false]);
    // The multimodal checkpoints (4B/12B/27B) nest the text model's config.
    const nested = configFromHf({
      model_type: "gemma3",
      vocab_size: 262208,
      text_config: {
        hidden_size: 2560,
        intermediate_size: 10240,
        num_hidden_layers: 34,
        sliding_window: 1024,
        rope_scaling: { factor: 8.0, rope_type: "linear" },
      },
    });
    expect(nested).toMatchObject({
      modelType: "gemma3",
      hiddenSize: 2560,
      numHeads: 8,
      numKvHeads: 4,
      vocabSize: 262208,
      slidingWindow: 1024,
    });
    expect(nested.ropeScaling).toEqual({ type: "linear", factor: 8 });
  });

  test("Phi-4-mini: partial_rotary_factor 0.75 rotates 96 of 128 dimensions; its 48 LongRoPE factors fit them", () => {
    const c = configFromHf({
      ...base,
      model_type: "phi3",
      hidden_size: 3072,
      num_attention_heads: 24,
      num_key_value_heads: 8,
      partial_rotary_factor: 0.75,
      max_position_embeddings: 131072,
      original_max_position_embeddings: 4096,
      rope_scaling: { type: "longrope", short_factor: new Array(48).fill(1), long_factor: new Array(48).fill(2) },
      tie_word_embeddings: true,
    });
    expect(c.headDim).toBe(128);
    expect(c.rotaryDims).toBe(96);
    expect(c.tieWordEmbeddings).toBe(true);
    expect(c.ropeScaling?.type).toBe("longrope");
  });

  test("Qwen3-MoE: mlp_only_layers and decoder_sparse_step pick the dense layers", () => {
    const c = configFromHf({
      ...base,
      model_type: "qwen3_moe",
      num_experts: 8,
      num_experts_per_tok: 2,
      moe_intermediate_size: 32,
      decoder_sparse_step: 2,
      mlp_only_layers: [3],
    });
    expect([0, 1, 2, 3].map((i) => isSparseLayer(c, i))).toEqual([false, true, false, false]);
  });
});

/**
 * Writes `stacked`'s model with each switch_mlp.<proj> stack split into
 * Hugging Face's per-expert tensors (experts.N.<name of proj>), float only.
 */
function splitExperts(stacked: string, perExpert: string, names: Record<string, string>): void {
  rmSync(perExpert, { recursive: true, force: true });
  mkdirSync(perExpert, { recursive: true });
  for (const f of ["config.json", "tokenizer.json", "tokenizer_config.json"])
    copyFileSync(join(stacked, f), join(perExpert, f));
  mx.tidy(() => {
    const loaded = mx.loadSafetensors(join(stacked, "model.safetensors"));
    const split = new Map<string, mx.MxArray>();
    for (const [name, a] of loaded.arrays) {
      const m = /^(.*)\.switch_mlp\.(\w+)\.weight$/.exec(name);
      if (!m) {
        split.set(name, a);
        continue;
      }
      for (let e = 0; e < a.dim(0); e++)
        split.set(
          `${m[1]}.experts.${e}.${names[m[2] as string]}.weight`,
          mx.squeeze(mx.sliceAxis(a, 0, e, e + 1), [0]),
        );
    }
    mx.saveSafetensors(join(perExpert, "model.safetensors"), split, { format: "pt" });
  });
}

test("Qwen3-MoE weights in Hugging Face's per-expert layout load as the stacked switch_mlp ones", () => {
  const stacked = join(TEST_TMP, "moe-stacked");
  const perExpert = join(TEST_TMP, "moe-per-expert");
  rmSync(stacked, { recursive: true, force: true });
  convertGguf(join(REPO_ROOT, "test", "fixtures", "gguf", "tiny-qwen3moe.gguf"), stacked);
  splitExperts(stacked, perExpert, { gate_proj: "gate_proj", up_proj: "up_proj", down_proj: "down_proj" });
  const prompt = [1, 7, 42, 300, 11, 5, 99, 250];
  expect(Array.from(lastLogits(perExpert, prompt))).toEqual(Array.from(lastLogits(stacked, prompt)));
});

test("Mixtral: every layer routes over num_local_experts; Hugging Face's experts.N.w1/w3/w2 load as the stacked ones", () => {
  const c = configFromHf({ ...base, model_type: "mixtral", num_local_experts: 8, num_experts_per_tok: 2 });
  expect(c.moe).toEqual({
    numExperts: 8,
    topK: 2,
    expertIntermediateSize: 128,
    normTopkProb: true,
    decoderSparseStep: 1,
    mlpOnlyLayers: [],
  });
  expect(c.ropeTheta).toBe(1_000_000);
  const spec = (TINY_SPECS["tiny-mixtral"] as () => RandomModelSpec)();
  const { quantization: _packed, ...floatConfig } = spec.config;
  const stacked = join(TEST_TMP, "mixtral-stacked");
  const perExpert = join(TEST_TMP, "mixtral-per-expert");
  rmSync(stacked, { recursive: true, force: true });
  writeRandomModel(stacked, { ...spec, config: floatConfig });
  splitExperts(stacked, perExpert, { gate_proj: "w1", up_proj: "w3", down_proj: "w2" });
  const prompt = promptIds(30, 4);
  expect(Array.from(lastLogits(perExpert, prompt))).toEqual(Array.from(lastLogits(stacked, prompt)));
});

/** Last-position logits of a prompt. */
function lastLogits(dir: string, prompt: number[], dtype?: mx.Dtype): Float32Array {
  const { model } = loadModel(dir, dtype ? { dtype } : {});
  const cache = cacheFor(model);
  const out = mx.tidy(() => prefill(model, cache, prompt).read() as Float32Array);
  cache.dispose();
  model.dispose();
  return out;
}

test("Gemma 3 multimodal checkpoints: the text model under language_model., the vision tower dropped, same logits", () => {
  const text = tinyModel("tiny-gemma3");
  const multimodal = join(TEST_TMP, "gemma3-multimodal");
  rmSync(multimodal, { recursive: true, force: true });
  mkdirSync(multimodal, { recursive: true });
  const { quantization, ...textConfig } = JSON.parse(readFileSync(join(text, "config.json"), "utf8"));
  const config = { model_type: "gemma3", vocab_size: textConfig.vocab_size, quantization, text_config: textConfig };
  writeFileSync(join(multimodal, "config.json"), JSON.stringify(config));
  copyFileSync(join(text, "tokenizer.json"), join(multimodal, "tokenizer.json"));
  mx.tidy(() => {
    const loaded = mx.loadSafetensors(join(text, "model.safetensors"));
    const renamed = new Map<string, mx.MxArray>();
    for (const [name, a] of loaded.arrays) renamed.set(`language_model.${name}`, a);
    renamed.set("vision_tower.vision_model.embeddings.patch_embedding.weight", mx.zeros([8, 3, 2, 2]));
    renamed.set("multi_modal_projector.mm_input_projection_weight", mx.zeros([8, 128]));
    mx.saveSafetensors(join(multimodal, "model.safetensors"), renamed, { format: "mlx" });
  });
  const prompt = promptIds(40, 3);
  expect(Array.from(lastLogits(multimodal, prompt))).toEqual(Array.from(lastLogits(text, prompt)));
});

test("Gemma 3 in float16: the residual is clipped as mlx-lm does; logits stay finite and near float32's", () => {
  const dir = tinyModel("tiny-gemma3");
  const prompt = promptIds(40, 3);
  const f32 = lastLogits(dir, prompt);
  const f16 = lastLogits(dir, prompt, mx.Dtype.float16);
  let worst = 0;
  for (let i = 0; i < f32.length; i++) worst = Math.max(worst, Math.abs((f32[i] as number) - (f16[i] as number)));
  expect(f16.every(Number.isFinite)).toBe(true);
  expect(worst).toBeLessThan(0.05);
});
