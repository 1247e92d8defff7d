// A model's architecture, normalized from a Hugging Face config.json or from
// GGUF metadata. Architectures read only this, never the raw files. The keys
// every family shares are mapped here; each architecture's file adds its own
// rules (defaults, nesting, llama.cpp's fixed values) through the registry.
import { type GgufMeta, ggufNumber as metaNum } from "./architecture";
import { architectureFor, findArchitecture, findGgufArchitecture, supportedGgufArchitectures } from "./registry";

export type RopeScaling =
  | {
      /** Phi-3 "su" (April 2024) or "longrope" (July 2024): per-pair factors, short below the original context. */
      type: "longrope";
      shortFactor: number[];
      longFactor: number[];
      originalMaxPositionEmbeddings: number;
      /** Multiplier applied to q and k (cos/sin) when extending the context. */
      attentionFactor: number;
    }
  | {
      type: "llama3";
      factor: number;
      lowFreqFactor: number;
      highFreqFactor: number;
      originalMaxPositionEmbeddings: number;
    }
  | { type: "linear"; factor: number };

export interface QuantizationConfig {
  groupSize: number;
  bits: number;
  /** Per-module exceptions (module prefix → its own spec), as mlx-lm writes them. */
  overrides?: Record<string, { groupSize: number; bits: number }>;
}

export interface ModelConfig {
  /** model_type: selects the architecture file in src/models/. */
  modelType: string;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediateSize: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeTraditional: boolean;
  ropeScaling: RopeScaling | null;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  attentionBias: boolean;
  mlpBias: boolean;
  /** Default quantization from config.json; each tensor is checked on its own. */
  quantization: QuantizationConfig | null;
  bosTokenId: number | null;
  eosTokenIds: number[];
  /** Leading dimensions of each head that RoPE rotates (head_dim × partial_rotary_factor). */
  rotaryDims: number;
  /** Keys a windowed layer attends to (itself included); which layers are windowed is the family's rule. */
  slidingWindow: number | null;
  /** Per-layer attention kinds as config.json lists them ("sliding_attention" / "full_attention"). */
  layerTypes: string[] | null;
  /** Gemma 3: every Nth layer is global, the others windowed. */
  slidingWindowPattern: number | null;
  /** Gemma 3: RoPE base of the windowed layers. */
  ropeLocalTheta: number | null;
  /** Gemma: attention scale is this^-1/2 instead of head_dim^-1/2. */
  queryPreAttnScalar: number | null;
  moe: MoeConfig | null;
}

/** Qwen3-MoE routed experts. */
export interface MoeConfig {
  numExperts: number;
  topK: number;
  expertIntermediateSize: number;
  normTopkProb: boolean;
  /** Layer i is sparse when (i + 1) % decoderSparseStep == 0 and i is not in mlpOnlyLayers. */
  decoderSparseStep: number;
  mlpOnlyLayers: number[];
}

type Json = Record<string, unknown>;

function num(c: Json, key: string, fallback?: number): number {
  const v = c[key];
  if (typeof v === "number" && Number.isFinite(v)) return v;
  if (fallback !== undefined) return fallback;
  throw new Error(`config.json: "${key}" is missing or not a number`);
}

function numList(v: unknown, what: string): number[] {
  if (!Array.isArray(v) || v.some((x) => typeof x !== "number"))
    throw new Error(`config.json: ${what} must be a list of numbers`);
  return v as number[];
}

function idList(v: unknown): number[] {
  if (typeof v === "number") return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === "number");
  return [];
}

function parseRopeScaling(c: Json, rotaryDims: number): RopeScaling | null {
  const rs = (c.rope_scaling ?? c.rope_parameters) as Json | null | undefined;
  if (!rs || typeof rs !== "object") return null;
  const type = String(rs.type ?? rs.rope_type ?? "");
  if (type === "su" || type === "longrope") {
    const shortFactor = numList(rs.short_factor, "rope_scaling.short_factor");
    const longFactor = numList(rs.long_factor, "rope_scaling.long_factor");
    if (shortFactor.length !== rotaryDims / 2 || longFactor.length !== rotaryDims / 2) {
      throw new Error(`config.json: rope_scaling factors need ${rotaryDims / 2} values (rotary dims / 2)`);
    }
    const original = num(c, "original_max_position_embeddings", num(rs, "original_max_position_embeddings", 4096));
    const max = num(c, "max_position_embeddings");
    const scale = max / original;
    const attentionFactor =
      typeof rs.attention_factor === "number"
        ? rs.attention_factor
        : scale <= 1
          ? 1
          : Math.sqrt(1 + Math.log(scale) / Math.log(original));
    return { type: "longrope", shortFactor, longFactor, originalMaxPositionEmbeddings: original, attentionFactor };
  }
  if (type === "llama3") {
    return {
      type: "llama3",
      factor: num(rs, "factor"),
      lowFreqFactor: num(rs, "low_freq_factor", 1),
      highFreqFactor: num(rs, "high_freq_factor", 4),
      originalMaxPositionEmbeddings: num(rs, "original_max_position_embeddings", 8192),
    };
  }
  if (type === "linear") return { type: "linear", factor: num(rs, "factor") };
  if (type === "default" || type === "") return null;
  throw new Error(`config.json: unsupported rope_scaling type "${type}"`);
}

function parseQuantization(q: Json): QuantizationConfig {
  const overrides: Record<string, { groupSize: number; bits: number }> = {};
  for (const [key, value] of Object.entries(q)) {
    if (value && typeof value === "object" && !Array.isArray(value)) {
      const v = value as Json;
      overrides[key] = { groupSize: num(v, "group_size"), bits: num(v, "bits") };
    }
  }
  return { groupSize: num(q, "group_size"), bits: num(q, "bits"), overrides };
}

function parseMoe(c: Json): MoeConfig | null {
  if (typeof c.num_experts !== "number" || c.num_experts <= 0) return null;
  return {
    numExperts: num(c, "num_experts"),
    topK: num(c, "num_experts_per_tok"),
    expertIntermediateSize: num(c, "moe_intermediate_size"),
    normTopkProb: c.norm_topk_prob === true,
    decoderSparseStep: num(c, "decoder_sparse_step", 1),
    mlpOnlyLayers: Array.isArray(c.mlp_only_layers) ? numList(c.mlp_only_layers, "mlp_only_layers") : [],
  };
}

/** Normalizes a Hugging Face / MLX config.json. */
export function configFromHf(raw: Json, generationConfig: Json | null = null): ModelConfig {
  const arch = findArchitecture(String(raw.model_type ?? ""));
  const c = arch?.hfPrepare ? arch.hfPrepare(raw) : raw;
  const modelType = String(c.model_type ?? "");
  if (!modelType) throw new Error('config.json: "model_type" is missing');
  const hiddenSize = num(c, "hidden_size");
  const numHeads = num(c, "num_attention_heads");
  const headDim = num(c, "head_dim", hiddenSize / numHeads);
  if (!Number.isInteger(headDim)) throw new Error("config.json: hidden_size is not a multiple of num_attention_heads");
  const rotaryDims = Math.round(headDim * num(c, "partial_rotary_factor", 1));
  const slidingWindow =
    typeof c.sliding_window === "number" && c.use_sliding_window !== false ? c.sliding_window : null;
  const q = c.quantization as Json | undefined;
  const eos = idList(generationConfig?.eos_token_id);
  for (const id of idList(c.eos_token_id)) if (!eos.includes(id)) eos.push(id);
  const bos = typeof c.bos_token_id === "number" ? c.bos_token_id : null;
  const config: ModelConfig = {
    modelType,
    hiddenSize,
    numLayers: num(c, "num_hidden_layers"),
    numHeads,
    numKvHeads: num(c, "num_key_value_heads", numHeads),
    headDim,
    intermediateSize: num(c, "intermediate_size"),
    vocabSize: num(c, "vocab_size"),
    rmsNormEps: num(c, "rms_norm_eps", 1e-5),
    ropeTheta: num(c, "rope_theta", 10000),
    ropeTraditional: c.rope_traditional === true,
    ropeScaling: parseRopeScaling(c, rotaryDims),
    maxPositionEmbeddings: num(c, "max_position_embeddings", 4096),
    tieWordEmbeddings: c.tie_word_embeddings === true,
    attentionBias: c.attention_bias === true,
    mlpBias: c.mlp_bias === true,
    quantization: q ? parseQuantization(q) : null,
    bosTokenId: bos,
    eosTokenIds: eos,
    rotaryDims,
    slidingWindow,
    layerTypes: Array.isArray(c.layer_types) ? c.layer_types.map(String) : null,
    slidingWindowPattern: typeof c.sliding_window_pattern === "number" ? c.sliding_window_pattern : null,
    ropeLocalTheta: typeof c.rope_local_base_freq === "number" ? c.rope_local_base_freq : null,
    queryPreAttnScalar: typeof c.query_pre_attn_scalar === "number" ? c.query_pre_attn_scalar : null,
    moe: parseMoe(c),
  };
  return arch?.hfAdjust ? arch.hfAdjust(config, c) : config;
}

/** The config.json that describes a config (the inverse of configFromHf), for `convert`. */
export function configToHf(cfg: ModelConfig): Json {
  const out: Json = {
    model_type: cfg.modelType,
    architectures: [architectureFor(cfg.modelType).hfClass],
    hidden_size: cfg.hiddenSize,
    num_hidden_layers: cfg.numLayers,
    num_attention_heads: cfg.numHeads,
    num_key_value_heads: cfg.numKvHeads,
    head_dim: cfg.headDim,
    intermediate_size: cfg.intermediateSize,
    vocab_size: cfg.vocabSize,
    rms_norm_eps: cfg.rmsNormEps,
    rope_theta: cfg.ropeTheta,
    max_position_embeddings: cfg.maxPositionEmbeddings,
    tie_word_embeddings: cfg.tieWordEmbeddings,
    attention_bias: cfg.attentionBias,
    mlp_bias: cfg.mlpBias,
    hidden_act: "silu",
  };
  if (cfg.bosTokenId !== null) out.bos_token_id = cfg.bosTokenId;
  if (cfg.eosTokenIds.length) out.eos_token_id = cfg.eosTokenIds.length === 1 ? cfg.eosTokenIds[0] : cfg.eosTokenIds;
  const rs = cfg.ropeScaling;
  if (rs?.type === "longrope") {
    out.rope_scaling = { type: "longrope", short_factor: rs.shortFactor, long_factor: rs.longFactor };
    out.original_max_position_embeddings = rs.originalMaxPositionEmbeddings;
  } else if (rs?.type === "llama3") {
    out.rope_scaling = {
      rope_type: "llama3",
      factor: rs.factor,
      low_freq_factor: rs.lowFreqFactor,
      high_freq_factor: rs.highFreqFactor,
      original_max_position_embeddings: rs.originalMaxPositionEmbeddings,
    };
  } else if (rs?.type === "linear") {
    out.rope_scaling = { type: "linear", rope_type: "linear", factor: rs.factor };
  }
  if (cfg.rotaryDims !== cfg.headDim) out.partial_rotary_factor = cfg.rotaryDims / cfg.headDim;
  if (cfg.slidingWindow !== null) out.sliding_window = cfg.slidingWindow;
  if (cfg.layerTypes) out.layer_types = cfg.layerTypes;
  if (cfg.slidingWindowPattern !== null) out.sliding_window_pattern = cfg.slidingWindowPattern;
  if (cfg.ropeLocalTheta !== null) out.rope_local_base_freq = cfg.ropeLocalTheta;
  if (cfg.queryPreAttnScalar !== null) out.query_pre_attn_scalar = cfg.queryPreAttnScalar;
  architectureFor(cfg.modelType).hfWrite?.(cfg, out);
  if (cfg.moe) {
    out.num_experts = cfg.moe.numExperts;
    out.num_experts_per_tok = cfg.moe.topK;
    out.moe_intermediate_size = cfg.moe.expertIntermediateSize;
    out.norm_topk_prob = cfg.moe.normTopkProb;
    out.decoder_sparse_step = cfg.moe.decoderSparseStep;
    out.mlp_only_layers = cfg.moe.mlpOnlyLayers;
  }
  if (cfg.quantization) {
    const block: Json = { group_size: cfg.quantization.groupSize, bits: cfg.quantization.bits };
    for (const [prefix, o] of Object.entries(cfg.quantization.overrides ?? {})) {
      block[prefix] = { group_size: o.groupSize, bits: o.bits };
    }
    out.quantization = block;
  }
  return out;
}

/**
 * Normalizes GGUF metadata (values as plain numbers/strings/arrays) into a
 * config: the keys llama.cpp reads for every architecture, then the
 * architecture's own rules (its file's gguf.config).
 */
export function configFromGguf(meta: GgufMeta, vocabSizeFromTensor: number): ModelConfig {
  const ggufArch = String(meta.get("general.architecture") ?? "");
  const arch = findGgufArchitecture(ggufArch);
  if (!arch) {
    throw new Error(
      `unsupported GGUF architecture "${ggufArch}": Pensieve runs ${supportedGgufArchitectures().join(", ")}`,
    );
  }
  const p = (k: string) => `${ggufArch}.${k}`;
  const hiddenSize = metaNum(meta, p("embedding_length"));
  const numHeads = metaNum(meta, p("attention.head_count"));
  const headDim = metaNum(meta, p("attention.key_length"), hiddenSize / numHeads);
  const eos = metaNum(meta, "tokenizer.ggml.eos_token_id", -1);
  const bos = metaNum(meta, "tokenizer.ggml.bos_token_id", -1);
  const window = metaNum(meta, p("attention.sliding_window"), 0);
  const pattern = meta.get(p("attention.sliding_window_pattern"));
  const experts = metaNum(meta, p("expert_count"), 0);
  const common: ModelConfig = {
    modelType: arch.modelTypes[0] as string,
    hiddenSize,
    numLayers: metaNum(meta, p("block_count")),
    numHeads,
    numKvHeads: metaNum(meta, p("attention.head_count_kv"), numHeads),
    headDim,
    intermediateSize: metaNum(meta, p("feed_forward_length"), 0),
    vocabSize: vocabSizeFromTensor,
    rmsNormEps: metaNum(meta, p("attention.layer_norm_rms_epsilon"), 1e-5),
    ropeTheta: metaNum(meta, p("rope.freq_base"), 10000),
    ropeTraditional: false,
    ropeScaling:
      meta.get(p("rope.scaling.type")) === "linear"
        ? { type: "linear", factor: metaNum(meta, p("rope.scaling.factor")) }
        : null,
    maxPositionEmbeddings: metaNum(meta, p("context_length"), 4096),
    tieWordEmbeddings: false,
    attentionBias: false,
    mlpBias: false,
    quantization: null,
    bosTokenId: bos >= 0 ? bos : null,
    eosTokenIds: eos >= 0 ? [eos] : [],
    rotaryDims: metaNum(meta, p("rope.dimension_count"), headDim),
    slidingWindow: window > 0 ? window : null,
    layerTypes: Array.isArray(pattern) ? pattern.map((w) => (w ? "sliding_attention" : "full_attention")) : null,
    slidingWindowPattern: null,
    ropeLocalTheta: null,
    queryPreAttnScalar: null,
    moe:
      experts > 0
        ? {
            numExperts: experts,
            topK: metaNum(meta, p("expert_used_count")),
            expertIntermediateSize: metaNum(meta, p("expert_feed_forward_length")),
            // llama.cpp renormalizes the top-k weights of the MoE families we read (qwen3moe).
            normTopkProb: true,
            decoderSparseStep: 1,
            mlpOnlyLayers: [],
          }
        : null,
  };
  return arch.gguf?.config ? arch.gguf.config(meta, common) : common;
}
