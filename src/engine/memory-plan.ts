// The memory plan: will a model fit, and how long a context can it have? A pure estimate from
// config.json and the weight files' sizes, no MLX: the server asks before it
// loads anything, so a model that cannot fit is refused with a message instead
// of dying mid-request.
//
//   total = weights (+ dense copies, counted in by the caller) + KV pool + working memory
//   KV cache = layers × 2 (K and V) × kv_heads × head_dim × bytes/element × context × sequences
//   working  = chunk × 4 B × (vocab + 4·hidden + 2·intermediate + (heads + 2·kv_heads)·head_dim)
//            + heads × chunk × scoreColumns × 4 B
// where chunk = min(prefill chunk, context). The first working term is one prefill
// chunk's float32 activations: logits over the vocabulary, the residual stream
// and norms, the MLP's gate and up projections, and q/k/v. The second is an
// attention score matrix of one chunk, which unfused attention materializes:
// over the whole context by default (safe everywhere); the engine passes the
// prefill chunk on the GPU, where a prompt longer than one chunk is prefilled
// alone with fused causal attention and only short padded groups go unfused.
// Cached prefixes live inside the KV pool (src/engine/kv-pool.ts): they take
// no memory of their own.
//
// Mixture of experts (Qwen3-MoE): every expert stays resident, so the weights
// are the files' whole size; a token's MLP activations are its top-k experts'
// (k × expert width for gate and up) plus the router's logits.
// Sliding windows (Gemma 3, Mistral): windowed layers keep the full KV cache
// (masked, not rotated), so the KV cache is counted for every layer at full length.
//
// The budget is a fraction (default 75 %) of the memory: the rest is left to
// the OS, the runtime and other programs (on unified memory the GPU shares it).
import { readdirSync, readFileSync, statSync } from "node:fs";
import { freemem, totalmem } from "node:os";
import { join } from "node:path";
import { type KvBits, kvTokenBytes } from "./attention-plan";
import { configFromHf, type ModelConfig } from "../models/config";
import { formatBytes } from "../hub/format";

export const DEFAULT_USABLE_FRACTION = 0.75;
/** Below this, a model is refused rather than run with a uselessly short context. */
export const MIN_CONTEXT = 1024;
/** The CPU's prefill chunk, defaultPrefillChunk() in src/engine/one-sequence.ts (not imported: that module loads MLX). */
export const PREFILL_CHUNK = 512;
const ACTIVATION_BYTES = 4;

export interface SystemMemory {
  totalBytes: number;
  /** Memory free for new allocations now (Linux: MemAvailable, which counts reclaimable page cache). */
  availableBytes: number;
}

export function systemMemory(): SystemMemory {
  const totalBytes = totalmem();
  if (process.platform === "linux") {
    try {
      const m = /^MemAvailable:\s+(\d+)\s+kB/m.exec(readFileSync("/proc/meminfo", "utf8"));
      if (m?.[1]) return { totalBytes, availableBytes: Number(m[1]) * 1024 };
    } catch {
      // no /proc: fall back to os.freemem()
    }
  }
  return { totalBytes, availableBytes: freemem() };
}

/** Bytes of a model's weights on disk: a GGUF file's size, or a folder's *.safetensors (links followed). */
export function weightFilesBytes(path: string): number {
  const stat = statSync(path);
  if (!stat.isDirectory()) return stat.size;
  return readdirSync(path)
    .filter((f) => f.endsWith(".safetensors"))
    .reduce((n, f) => n + statSync(join(path, f)).size, 0);
}

function normalize(config: Record<string, unknown> | ModelConfig): ModelConfig {
  return "numLayers" in config && typeof config.numLayers === "number"
    ? (config as ModelConfig)
    : configFromHf(config as Record<string, unknown>);
}

/**
 * KV cache bytes per token of one sequence. Phi-3 mini, fp16: 32 × 2 × 32 × 96 × 2 = 384 KiB.
 * Quantized KV (bits 8 or 4): head_dim·bits/8 bytes plus a scale and a bias per
 * group in the float dtype (bytesPerElement): 216 KiB (8-bit), 120 KiB (4-bit).
 */
export function kvBytesPerToken(
  config: Record<string, unknown> | ModelConfig,
  bytesPerElement = 2,
  bits: KvBits = 0,
  groupSize?: number,
): number {
  return kvTokenBytes(normalize(config), bytesPerElement, bits, groupSize);
}

/** Scratch memory of one prefill chunk at a context length (see the formula above). */
export function workingBytes(
  config: Record<string, unknown> | ModelConfig,
  context: number,
  prefillChunk = PREFILL_CHUNK,
  scoreColumns = context,
): number {
  const c = normalize(config);
  const chunk = Math.min(prefillChunk, context);
  const perPosition = c.vocabSize + 4 * c.hiddenSize + 2 * mlpWidth(c) + (c.numHeads + 2 * c.numKvHeads) * c.headDim;
  return (
    chunk * ACTIVATION_BYTES * perPosition + c.numHeads * chunk * Math.min(scoreColumns, context) * ACTIVATION_BYTES
  );
}

/** One token's MLP width: the dense MLP's, or (MoE) its k experts' plus the router's logits, whichever is larger. */
export function mlpWidth(c: ModelConfig): number {
  if (!c.moe) return c.intermediateSize;
  const hasDense = c.moe.mlpOnlyLayers.length > 0 || c.moe.decoderSparseStep > 1;
  return Math.max(hasDense ? c.intermediateSize : 0, c.moe.topK * c.moe.expertIntermediateSize + c.moe.numExperts);
}

/** Context lengths worth offering: 2^k and 1.5·2^k from 256 up, and the model's own maximum. */
export function contextSteps(maxPositionEmbeddings: number): number[] {
  const steps = new Set<number>([maxPositionEmbeddings]);
  for (let p = 256; p <= maxPositionEmbeddings; p *= 2) {
    steps.add(p);
    if (p * 1.5 <= maxPositionEmbeddings) steps.add(p * 1.5);
  }
  return [...steps].sort((a, b) => b - a);
}

export interface MemoryEstimateOptions {
  /** config.json as parsed, or an already normalized config (e.g. from GGUF metadata). */
  config: Record<string, unknown> | ModelConfig;
  /** Sum of the weight files' sizes (safetensors or GGUF). */
  weightBytes: number;
  /** For messages, e.g. the repo id. */
  name?: string;
  /** The configured context (maxContext); null or absent: pick the largest that fits. */
  maxContext?: number | null;
  /** Sequences whose KV caches must fit at once at full context (maxConcurrent), default 1. */
  sequences?: number;
  /** 2 for float16/bfloat16 caches (GPU); 4 when the model computes in float32 (CPU backend). */
  kvBytesPerElement?: number;
  /** Quantized KV cache: 8 or 4 bits per element plus a scale and bias per group (kvGroupSize); 0: float. */
  kvBits?: KvBits;
  kvGroupSize?: number;
  prefillChunk?: number;
  /** Columns of the largest attention score matrix a prefill chunk builds (default: the context). */
  scoreColumns?: number;
  /** Device memory (a CUDA card) instead of this machine's RAM. */
  memory?: { totalBytes: number; availableBytes?: number; label?: string };
  /** Part of the memory Pensieve may plan to use (default 0.75). */
  usableFraction?: number;
  /** A hard cap on the KV cache (kvBudgetBytes). */
  kvBudgetBytes?: number | null;
  /** Memory set aside for the prefix cache (prefixCacheBytes). */
  prefixCacheBytes?: number | null;
}

export interface MemoryBreakdown {
  weights: number;
  kvCache: number;
  working: number;
  prefixCache: number;
  total: number;
}

export interface MemoryEstimate {
  fits: boolean;
  /** One line: what was decided and why; for a refusal, what to change. */
  message: string;
  /** The context to use (the configured one, clamped to the model's maximum, or the automatic cap). */
  context: number;
  automatic: boolean;
  maxPositionEmbeddings: number;
  kvBytesPerToken: number;
  breakdown: MemoryBreakdown;
  memory: { totalBytes: number; availableBytes: number; usableBytes: number; label: string };
  warnings: string[];
}

export function estimateMemory(options: MemoryEstimateOptions): MemoryEstimate {
  const config = normalize(options.config);
  const name = options.name ?? config.modelType;
  const sequences = Math.max(1, Math.floor(options.sequences ?? 1));
  const perToken = kvBytesPerToken(config, options.kvBytesPerElement ?? 2, options.kvBits ?? 0, options.kvGroupSize);
  const maxPos = config.maxPositionEmbeddings;
  const system = options.memory ?? systemMemory();
  const label = options.memory?.label ?? "of RAM";
  const totalBytes = system.totalBytes;
  const availableBytes = system.availableBytes ?? totalBytes;
  const fraction = options.usableFraction ?? DEFAULT_USABLE_FRACTION;
  const usableBytes = Math.floor(totalBytes * fraction);
  const prefix = options.prefixCacheBytes ?? 0;
  const kvBudget = options.kvBudgetBytes ?? null;
  const warnings: string[] = [];

  const breakdown = (context: number): MemoryBreakdown => {
    const kvCache = perToken * context * sequences;
    const working = workingBytes(config, context, options.prefillChunk, options.scoreColumns);
    return {
      weights: options.weightBytes,
      kvCache,
      working,
      prefixCache: prefix,
      total: options.weightBytes + kvCache + working + prefix,
    };
  };
  const fits = (context: number) => {
    const b = breakdown(context);
    return b.total <= usableBytes && (kvBudget === null || b.kvCache <= kvBudget);
  };
  const steps = contextSteps(maxPos);
  const largestFitting = (limit: number) => steps.find((s) => s <= limit && fits(s)) ?? null;

  const explain = (context: number) => {
    const b = breakdown(context);
    const seqs = sequences === 1 ? "" : ` for ${sequences} sequences`;
    return (
      `context ${context} needs ${formatBytes(b.total)} (weights ${formatBytes(b.weights)} + KV cache ` +
      `${formatBytes(b.kvCache)}${seqs} + working ${formatBytes(b.working)}` +
      `${prefix > 0 ? ` + prefix cache ${formatBytes(prefix)}` : ""})`
    );
  };
  const room =
    `${formatBytes(usableBytes)} is usable (${Math.round(fraction * 100)}% of ${formatBytes(totalBytes)} ${label})` +
    (kvBudget !== null ? ` with a KV budget of ${formatBytes(kvBudget)}` : "");
  const tooBig = `${name} does not fit even at a ${Math.min(MIN_CONTEXT, maxPos)}-token context: use a smaller or more quantized model, or lower maxConcurrent`;

  let context: number;
  let ok: boolean;
  let message: string;
  const automatic = options.maxContext === null || options.maxContext === undefined;
  if (!automatic) {
    context = options.maxContext as number;
    if (context > maxPos) {
      warnings.push(`maxContext ${context} is above ${name}'s max_position_embeddings (${maxPos}): using ${maxPos}`);
      context = maxPos;
    }
    ok = fits(context);
    if (ok) message = `${name}: ${explain(context)}; ${room}`;
    else {
      const best = largestFitting(context);
      const fix = best && best >= Math.min(MIN_CONTEXT, maxPos) ? `set maxContext to ${best} or less` : tooBig;
      message = `${name}: ${explain(context)} but ${room}: ${fix}`;
    }
  } else {
    const best = largestFitting(maxPos);
    ok = best !== null && best >= Math.min(MIN_CONTEXT, maxPos);
    context = best ?? Math.min(MIN_CONTEXT, maxPos);
    message = ok
      ? `${name}: context capped at ${context}${context < maxPos ? ` of ${maxPos}` : ""}: ${explain(context)}; ${room}`
      : `${name}: ${explain(context)} but ${room}: ${tooBig}`;
  }

  const final = breakdown(context);
  if (ok && final.total > availableBytes) {
    warnings.push(
      `only ${formatBytes(availableBytes)} is free now and ${name} may use ${formatBytes(final.total)}: other programs hold memory`,
    );
  }
  return {
    fits: ok,
    message,
    context,
    automatic,
    maxPositionEmbeddings: maxPos,
    kvBytesPerToken: perToken,
    breakdown: final,
    memory: { totalBytes, availableBytes, usableBytes, label },
    warnings,
  };
}

/**
 * Bytes a quantized model's weights hold on the CPU's packed int8 path, from
 * their bytes in the file (the engine, setup and doctor plan with it). At load
 * every quantized linear weight is packed (ffi/cpu_qmm_packed.cpp) and a 4-bit
 * one keeps only its packed copy, which takes the file's bytes per weight
 * (18 per 32 for Q4_0 and MLX 4-bit g64, 20 for Q4_1). The embedding table keeps
 * its plain arrays, whose float32 scales and biases take about 1.35x its file
 * bytes, and gets a packed copy too when the output head is tied to it; 8-bit
 * weights keep both (counted as the embedding's share allows, see below).
 * Measured MLX memory after load: SmolLM2-135M Q4_1 with its tied Q8_0
 * embedding 126 MiB for a 94 MiB file (1.34x); a 3.9B Q4_0 (untied) 2215 MiB
 * for 2341 MiB (0.95x). This estimate: 1.31x and 1.01x.
 */
export function cpuPackedWeightBytes(fileBytes: number, model: ModelConfig): number {
  const h = model.hiddenSize;
  const attention = h * model.numHeads * model.headDim * 2 + h * model.numKvHeads * model.headDim * 2;
  const layers = model.numLayers * (attention + 3 * h * model.intermediateSize);
  const embedding = model.vocabSize * h;
  const share = embedding / (layers + embedding * (model.tieWordEmbeddings ? 1 : 2));
  return Math.ceil(fileBytes * (1 + share * (model.tieWordEmbeddings ? 1.5 : 0.35)));
}
