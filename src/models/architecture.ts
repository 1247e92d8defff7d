// What one architecture file says about its architecture: the model_type and
// transformers class it answers to, its config.json and GGUF metadata rules,
// its llama.cpp tensor names, the weights it reads (names, shapes) and how it
// builds. Each architecture file (llama.ts, qwen3.ts, gemma3.ts, ...) exports
// one `Architecture`; registry.ts lists them. config.ts, loader.ts, random.ts
// and gguf-to-mlx.ts only ask the registry, so a new architecture is a new
// file and a registry line.
//
// Descriptor files import MLX as types only: the config and GGUF mappings run
// where MLX is never loaded (doctor, the memory plan). The loader hands
// `build` the runtime pieces (BuildKit).
import type * as Mlx from "../mlx";
import type { MxArray } from "../mlx";
import type { ModelConfig } from "./config";
import type * as Decoder from "./decoder";
import type * as Rope from "./rope";
import type { LanguageModel } from "./types";
import type { WeightStore } from "./weights";

export type Json = Record<string, unknown>;

/**
 * How a tensor is drawn by the random-model writer: a matrix N(0, std)
 * (quantized when the config says), a norm weight 1 + N(0, 0.1), a Gemma norm
 * N(0, 0.1) (it scales by 1 + w), or a bias N(0, std).
 */
export type TensorKind = "matrix" | "norm" | "offset-norm" | "bias";

/**
 * A tensor the architecture reads: a matrix's or norm's module name (the file
 * adds .weight, and .scales/.biases when quantized) or a bias's full name; its
 * shape ([out, in], [experts, out, in], or [n]); its kind. In the order the
 * random writer draws them (fixtures record the resulting bytes).
 */
export type TensorSpec = [name: string, shape: number[], kind: TensorKind];

export interface BuildOptions {
  /** Phi-3: use long_factor at every length, as mlx-lm does (comparison tests only). */
  alwaysLongRope?: boolean;
}

/** The runtime pieces a build uses, handed over by the loader (which loads MLX). */
export interface BuildKit {
  mx: typeof Mlx;
  /** The decoder skeleton and its pieces (norms, attention projections, MLPs, experts). */
  decoder: typeof Decoder;
  rope: typeof Rope;
}

/** GGUF metadata as plain values (numbers, strings, arrays). */
export type GgufMeta = Map<string, unknown>;

/** A number from GGUF metadata (integers may come as bigint); `fallback` when absent, else it throws. */
export function ggufNumber(meta: GgufMeta, key: string, fallback?: number): number {
  const v = meta.get(key);
  if (typeof v === "number") return v;
  if (typeof v === "bigint") return Number(v);
  if (fallback !== undefined) return fallback;
  throw new Error(`GGUF metadata: "${key}" is missing`);
}

export interface GgufRules {
  /** llama.cpp's general.architecture. GGUF files load as the architecture's first model type. */
  architecture: string;
  /** llama.cpp block tensor names (blk.N.<name>) → Hugging Face names, beyond or instead of the common Llama ones. */
  tensorNames?: Record<string, string>;
  /** The family's own metadata rules and llama.cpp's fixed defaults, applied to the common mapping. */
  config?(meta: GgufMeta, common: ModelConfig): ModelConfig;
  /** Undoes llama.cpp's storage conventions (permuted rows, offset norms) in place, after renaming. */
  fixWeights?(mx: typeof Mlx, arrays: Map<string, MxArray>, config: ModelConfig): void;
}

export interface Architecture {
  /** config.json model_type values it runs; the first is the canonical one (GGUF loads, convert writes). */
  modelTypes: readonly string[];
  /** transformers' class, written into config.json's "architectures" by `pensieve convert`. */
  hfClass: string;
  /** Before the common config.json mapping: the family's defaults and nesting (Gemma 3). */
  hfPrepare?(raw: Json): Json;
  /** After the common mapping: the family's rules on what config.json means (Mistral's windows, its own keys). */
  hfAdjust?(config: ModelConfig, raw: Json): ModelConfig;
  /** Keys `pensieve convert` writes beyond the common ones. */
  hfWrite?(config: ModelConfig, out: Json): void;
  /** Absent: no GGUF files of this architecture are read. */
  gguf?: GgufRules;
  /** Every tensor `build` reads, with its shape. */
  weightShapes(config: ModelConfig): TensorSpec[];
  build(kit: BuildKit, config: ModelConfig, store: WeightStore, options: BuildOptions): LanguageModel;
}
