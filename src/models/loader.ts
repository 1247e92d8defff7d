// Loads a model from a Hugging Face / MLX folder (config.json + safetensors) or
// from a single GGUF file, into an architecture from the registry. Nothing here
// names an architecture: names, metadata rules and fix-ups come from its file.
import { existsSync, statSync } from "node:fs";
import { basename } from "node:path";
import type { MxArray } from "../mlx";
import * as mx from "../mlx";
import type { BuildKit, BuildOptions } from "./architecture";
import { configFromGguf, type ModelConfig } from "./config";
import * as decoder from "./decoder";
import { folderConfig, ModelLoadError, safetensorsFiles } from "./model-files";
import { architectureFor, findGgufArchitecture } from "./registry";
import * as rope from "./rope";
import { reduceAcrossShards, type ShardSpec, shardWeights } from "./shard";
import type { LanguageModel } from "./types";
import { WeightStore } from "./weights";

export { ModelLoadError, readModelConfig, safetensorsFiles } from "./model-files";

export interface LoadOptions extends BuildOptions {
  /** Compute dtype; default float32 on the CPU, float16 (or the weights' bfloat16) on a GPU. */
  dtype?: mx.Dtype;
  /** Keep dequantized copies of quantized weights for batched products (GPU; see weights.ts). */
  denseCopies?: boolean;
  /** Tensor parallelism: load only this rank's share of each layer (src/models/shard.ts). */
  shard?: ShardSpec;
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

/** What an architecture's build gets (its file imports MLX as types only). */
const KIT: BuildKit = { mx, decoder, rope };

function build(config: ModelConfig, arrays: Map<string, MxArray>, source: string, options: LoadOptions) {
  if (options.shard) ({ config, arrays } = shardWeights(config, arrays, options.shard));
  const store = new WeightStore(
    arrays,
    options.dtype ?? defaultDtype(arrays),
    source,
    config.quantization,
    options.denseCopies ?? false,
  );
  try {
    const model = architectureFor(config.modelType).build(KIT, config, store, options);
    if (options.shard) reduceAcrossShards(model);
    materialize(arrays, source);
    // On the CPU's int8 path, quantized weights are packed now and (4-bit) keep only the packed copy.
    if (mx.getDevice() === "cpu" && mx.cpuPackingActive()) store.packForCpu();
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

/** llama.cpp's names for the Llama block's tensors; an architecture's file adds or replaces some (gguf.tensorNames). */
const GGUF_LAYER_NAMES: Record<string, string> = {
  attn_norm: "input_layernorm",
  ffn_norm: "post_attention_layernorm",
  attn_q: "self_attn.q_proj",
  attn_k: "self_attn.k_proj",
  attn_v: "self_attn.v_proj",
  attn_output: "self_attn.o_proj",
  ffn_gate: "mlp.gate_proj",
  ffn_up: "mlp.up_proj",
  ffn_down: "mlp.down_proj",
};

/** llama.cpp tensor name → Hugging Face name (as mlx-community names it), for a GGUF general.architecture. */
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
  const mapped = findGgufArchitecture(arch)?.gguf?.tensorNames?.[part] ?? GGUF_LAYER_NAMES[part];
  return mapped ? `model.layers.${layer}.${mapped}.${suffix}` : null;
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
 * A GGUF file's weights under Hugging Face names, llama.cpp's storage
 * conventions undone (the architecture's gguf.fixWeights), with its config.
 * The caller owns the arrays.
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
    // LongRoPE factors (Phi-3): llama.cpp stores them as tensors; they become the
    // metadata keys the architecture's gguf.config reads.
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
  findGgufArchitecture(arch)?.gguf?.fixWeights?.(mx, arrays, config);
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
