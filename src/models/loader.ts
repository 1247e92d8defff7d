// Loads a model from a Hugging Face / MLX folder (config.json + safetensors) or
// from a single GGUF file, into an architecture from the registry.
import { existsSync, statSync } from "node:fs";
import { basename } from "node:path";
import type { MxArray } from "../mlx";
import * as mx from "../mlx";
import { configFromGguf, type ModelConfig } from "./config";
import { folderConfig, ModelLoadError, safetensorsFiles } from "./model-files";
import { buildArchitecture } from "./registry";
import type { LanguageModel } from "./types";
import { WeightStore } from "./weights";

export { ModelLoadError, readModelConfig, safetensorsFiles } from "./model-files";

export interface LoadOptions {
  /** Compute dtype; default float32 on the CPU, float16 (or the weights' bfloat16) on a GPU. */
  dtype?: mx.Dtype;
  /** Phi-3: use long_factor at every length, as mlx-lm does (comparison tests only). */
  alwaysLongRope?: boolean;
  /** Keep dequantized copies of quantized weights for batched products (GPU; see weights.ts). */
  denseCopies?: boolean;
}

export interface LoadedModel {
  model: LanguageModel;
  config: ModelConfig;
  /** "folder" for config.json + safetensors, "gguf" for a single file. */
  format: "folder" | "gguf";
  path: string;
  /** Bytes of weights as stored in memory. */
  weightBytes: number;
}

function defaultDtype(arrays: Map<string, MxArray>): mx.Dtype {
  if (mx.getDevice() === "cpu") return mx.Dtype.float32;
  for (const a of arrays.values()) {
    if (a.dtype === mx.Dtype.bfloat16) return mx.Dtype.bfloat16;
    if (a.dtype === mx.Dtype.float16) return mx.Dtype.float16;
  }
  return mx.Dtype.float16;
}

function loadTensors(files: string[]): Map<string, MxArray> {
  const all = new Map<string, MxArray>();
  for (const f of files) {
    let loaded: mx.LoadedFile;
    try {
      loaded = mx.tidy(() => mx.loadSafetensors(f));
    } catch (e) {
      for (const a of all.values()) a.dispose();
      throw new ModelLoadError(`cannot load weights from ${f}: ${(e as Error).message}`);
    }
    for (const [name, a] of loaded.arrays) all.set(name, mx.keep(a));
  }
  return all;
}

function totalBytes(arrays: Map<string, MxArray>): number {
  let n = 0;
  for (const a of arrays.values()) n += a.nbytes;
  return n;
}

/** Evaluates every weight once, so truncated or corrupt data fails here and not mid-request. */
function materialize(arrays: Map<string, MxArray>, source: string): void {
  try {
    const list = [...arrays.values()];
    for (let i = 0; i < list.length; i += 64) mx.evaluate(...list.slice(i, i + 64));
  } catch (e) {
    throw new ModelLoadError(`${source}: the weight data is unreadable (${(e as Error).message})`);
  }
}

function build(config: ModelConfig, arrays: Map<string, MxArray>, source: string, options: LoadOptions) {
  const store = new WeightStore(
    arrays,
    options.dtype ?? defaultDtype(arrays),
    source,
    config.quantization,
    options.denseCopies ?? false,
  );
  try {
    const model = buildArchitecture(config, store, options);
    materialize(arrays, source);
    return model;
  } catch (e) {
    store.dispose();
    if (e instanceof ModelLoadError) throw e;
    throw new ModelLoadError(`${source}: ${(e as Error).message}`);
  }
}

export function loadFolder(dir: string, options: LoadOptions = {}): LoadedModel {
  const config = folderConfig(dir);
  const arrays = loadTensors(safetensorsFiles(dir));
  const weightBytes = totalBytes(arrays);
  const model = build(config, arrays, dir, options);
  return { model, config, format: "folder", path: dir, weightBytes };
}

// ---- GGUF ----

const GGUF_LAYER_NAMES: Record<string, string> = {
  attn_norm: "input_layernorm",
  ffn_norm: "post_attention_layernorm",
  attn_q: "self_attn.q_proj",
  attn_k: "self_attn.k_proj",
  attn_v: "self_attn.v_proj",
  attn_qkv: "self_attn.qkv_proj",
  attn_output: "self_attn.o_proj",
  attn_q_norm: "self_attn.q_norm",
  attn_k_norm: "self_attn.k_norm",
  ffn_gate: "mlp.gate_proj",
  ffn_up: "mlp.up_proj",
  ffn_down: "mlp.down_proj",
  // Qwen3-MoE: the router and the stacked experts, in mlx-community's switch_mlp layout.
  ffn_gate_inp: "mlp.gate",
  ffn_gate_exps: "mlp.switch_mlp.gate_proj",
  ffn_up_exps: "mlp.switch_mlp.up_proj",
  ffn_down_exps: "mlp.switch_mlp.down_proj",
};

/** Where an architecture's names differ from the table above. */
const GGUF_ARCH_NAMES: Record<string, Record<string, string>> = {
  // Phi-3 keeps gate|up fused in ffn_up.
  phi3: { ffn_up: "mlp.gate_up_proj" },
  // Gemma 3: norms before and after attention and the MLP.
  gemma3: {
    post_attention_norm: "post_attention_layernorm",
    ffn_norm: "pre_feedforward_layernorm",
    post_ffw_norm: "post_feedforward_layernorm",
  },
};

/** llama.cpp tensor name → Hugging Face name (as mlx-community names it). */
export function hfNameForGguf(name: string, arch: string): string | null {
  const m = /^(.*)\.(weight|scales|biases|bias)$/.exec(name);
  if (!m) return null;
  const [, base, suffix] = m as unknown as [string, string, string];
  if (base === "token_embd") return `model.embed_tokens.${suffix}`;
  if (base === "output_norm") return `model.norm.${suffix}`;
  if (base === "output") return `lm_head.${suffix}`;
  const b = /^blk\.(\d+)\.(.+)$/.exec(base);
  if (!b) return null;
  const [, layer, part] = b as unknown as [string, string, string];
  const mapped = GGUF_ARCH_NAMES[arch]?.[part] ?? GGUF_LAYER_NAMES[part];
  return mapped ? `model.layers.${layer}.${mapped}.${suffix}` : null;
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

function metaToPlain(meta: Map<string, mx.GgufMetaValue>): Map<string, unknown> {
  const out = new Map<string, unknown>();
  for (const [k, v] of meta) {
    if (v instanceof mx.MxArray) {
      const data = Array.from(v.read() as ArrayLike<number | bigint>, Number);
      out.set(k, v.ndim === 0 ? data[0] : data);
      v.dispose();
    } else {
      out.set(k, v);
    }
  }
  return out;
}

/**
 * A GGUF file's weights under Hugging Face names (llama q/k rows un-permuted),
 * with its config. The caller owns the arrays.
 */
export function readGgufWeights(path: string): { config: ModelConfig; arrays: Map<string, MxArray> } {
  let loaded: mx.LoadedFile;
  try {
    loaded = mx.tidy(() => mx.loadGguf(path));
  } catch (e) {
    throw new ModelLoadError(`cannot load GGUF ${path}: ${(e as Error).message}`);
  }
  const meta = metaToPlain(loaded.metadata);
  const arch = String(meta.get("general.architecture") ?? "");
  const arrays = new Map<string, MxArray>();
  const unknown: string[] = [];
  for (const [name, a] of loaded.arrays) {
    // Phi-3 LongRoPE: llama.cpp stores the factors as tensors; they become the config's.
    const factors = /^rope_factors_(long|short)\.weight$/.exec(name);
    if (factors) {
      meta.set(`${arch}.rope.scaling.${factors[1]}_factor`, Array.from(a.read() as Float32Array));
      a.dispose();
      continue;
    }
    const hf = hfNameForGguf(name, arch);
    if (hf) arrays.set(hf, mx.keep(a));
    else {
      unknown.push(name);
      a.dispose();
    }
  }
  const fail = (message: string): never => {
    for (const a of arrays.values()) a.dispose();
    throw new ModelLoadError(`${path}: ${message}`);
  };
  let config: ModelConfig;
  try {
    const embed = arrays.get("model.embed_tokens.weight");
    if (!embed) throw new Error("no token_embd tensor");
    config = configFromGguf(meta, embed.dim(0));
  } catch (e) {
    return fail((e as Error).message);
  }
  if (unknown.length) fail(`unexpected tensors ${unknown.slice(0, 5).join(", ")}`);
  config.tieWordEmbeddings = !arrays.has("lm_head.weight");
  if (arch === "gemma3") {
    // llama.cpp's converter stores Gemma's RMSNorm weights as 1 + w (it scales by the weight
    // itself); Pensieve reads them as Hugging Face does: w, scaled by 1 + w.
    mx.tidy(() => {
      for (const [name, a] of arrays) {
        if (!/norm\.weight$/.test(name)) continue;
        arrays.set(name, mx.keep(mx.subtract(a, mx.astype(mx.scalar(1), a.dtype))));
        a.dispose();
      }
    });
  }
  if (arch === "llama") {
    // Undo llama.cpp's q/k row permutation (rows only: quantization groups run along columns).
    // Only llama: qwen2, qwen3, qwen3moe, gemma3 and phi3 use NeoX-style RoPE, which llama.cpp stores unpermuted.
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
  }
  return { config, arrays };
}

export function loadGgufModel(path: string, options: LoadOptions = {}): LoadedModel {
  const { config, arrays } = readGgufWeights(path);
  const weightBytes = totalBytes(arrays);
  const model = build(config, arrays, path, options);
  return { model, config, format: "gguf", path, weightBytes };
}

/** A model folder or a .gguf file. */
export function loadModel(path: string, options: LoadOptions = {}): LoadedModel {
  if (!existsSync(path)) throw new ModelLoadError(`no model at ${path}`);
  if (statSync(path).isDirectory()) return loadFolder(path, options);
  if (basename(path).toLowerCase().endsWith(".gguf")) return loadGgufModel(path, options);
  throw new ModelLoadError(`${path}: expected a model folder (config.json + safetensors) or a .gguf file`);
}
