import type { ModelConfig } from "../models/config";
import { effectiveKvBits, type KvBits, kvGroupSize } from "./attention-plan";
import { KV_STEP } from "./kv-cache";
import { automaticKvBits, describePool, type KvPoolShape } from "./kv-pool";
import { DEFAULT_USABLE_FRACTION, estimateMemory, kvBytesPerToken, PREFILL_CHUNK, systemMemory } from "./memory-plan";
import { defaultPrefillChunk } from "./one-sequence";
import type { EngineConfig } from "./protocol";
import type { SchedulerOptions } from "./scheduler";
import { cpuLookupTuning, gpuLookupTuning } from "./speculation";

/** Device memory the engine may plan with: GPU memory (CUDA), else system memory (also Apple's unified memory). */
export function deviceMemoryBytes(device: "cpu" | "gpu"): number | null {
  if (device === "gpu" && process.platform === "linux") {
    const r = Bun.spawnSync(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"], {
      stdout: "pipe",
      stderr: "ignore",
    });
    const mib = Number.parseInt(r.stdout.toString().trim().split("\n")[0] ?? "", 10);
    if (r.exitCode === 0 && Number.isFinite(mib)) return mib * 1024 * 1024;
  }
  return null;
}

/** The KV storage a model gets: configured bits, float where head_dim cannot be quantized. */
function kvStorage(bits: KvBits, model: ModelConfig) {
  const kvBits = effectiveKvBits(bits, model.headDim);
  return { kvBits, kvGroupSize: kvBits === 0 ? undefined : (kvGroupSize(model.headDim) ?? undefined) };
}

/**
 * The context and the KV pool, decided before any weight is loaded (src/engine/memory-plan.ts):
 * a model that cannot fit is refused with the estimate's message. The pool is
 * what remains after the weights (dense copies included, when the caller counts
 * them) and working memory; cached prefixes live inside it.
 */
export function planMemory(
  config: EngineConfig,
  model: ModelConfig,
  weightBytes: number,
  device: "cpu" | "gpu",
  bytesPerElement: number,
): MemoryPlanResult {
  const planned = planMemoryWith(config.kvBits ?? 0, config, model, weightBytes, device, bytesPerElement);
  // Automatic (neither bits nor a KV budget set): 8-bit where the float pool is too small for two Claude Code
  // sessions (kv-pool.ts). An explicit budget keeps float: the tests' small pools measure exact queueing.
  if ((config.kvBits ?? null) !== null || (config.kvBudgetBytes ?? null) !== null) return planned;
  const pool = {
    budgetBytes: planned.kvBudgetBytes,
    bytesPerToken: planned.bytesPerToken,
    numLayers: model.numLayers,
    growthStep: KV_STEP,
  };
  if (automaticKvBits(pool, planned.contextLength) === 0 || effectiveKvBits(8, model.headDim) === 0) return planned;
  const quantized = planMemoryWith(8, config, model, weightBytes, device, bytesPerElement);
  const note = "8-bit KV (automatic: the float pool holds fewer than 2 sequences of Claude Code's size)";
  return { ...quantized, estimate: { ...quantized.estimate, message: `${quantized.estimate.message}; ${note}` } };
}

export type MemoryPlanResult = ReturnType<typeof planMemoryWith>;

function planMemoryWith(
  bits: KvBits,
  config: EngineConfig,
  model: ModelConfig,
  weightBytes: number,
  device: "cpu" | "gpu",
  bytesPerElement: number,
) {
  const gpuMemory = deviceMemoryBytes(device);
  const memory = gpuMemory === null ? undefined : { totalBytes: gpuMemory, label: "of GPU memory" };
  const usableFraction = device === "gpu" && gpuMemory !== null ? 0.9 : DEFAULT_USABLE_FRACTION;
  const prefillChunk = config.prefillChunk ?? (device === "gpu" ? 2048 : PREFILL_CHUNK);
  const kv = kvStorage(bits, model);
  const plan = estimateMemory({
    config: model,
    weightBytes,
    kvBytesPerElement: bytesPerElement,
    ...kv,
    memory,
    usableFraction,
    maxContext: config.maxContext ?? null,
    kvBudgetBytes: config.kvBudgetBytes ?? null,
    prefillChunk,
    // Fused causal attention for long prompts on the GPU (see src/engine/memory-plan.ts).
    scoreColumns: device === "gpu" ? prefillChunk : undefined,
  });
  if (!plan.fits) throw new Error(plan.message);
  // MLX's buffer cache may hold this much of the rest (see bufferCacheLimit).
  const left = plan.memory.usableBytes - plan.breakdown.weights - plan.breakdown.working - bufferCacheLimit(device);
  const kvBudgetBytes = config.kvBudgetBytes ?? Math.max(plan.breakdown.kvCache, left);
  const pool: KvPoolShape = {
    budgetBytes: kvBudgetBytes,
    bytesPerToken: kvBytesPerToken(model, bytesPerElement, kv.kvBits, kv.kvGroupSize),
    numLayers: model.numLayers,
    growthStep: KV_STEP,
  };
  const message = `${plan.message}; ${describePool(pool, plan.context)}`;
  // null: the pool alone bounds the prefix cache.
  const prefixCacheBytes = config.prefixCacheBytes ?? null;
  return {
    contextLength: plan.context,
    kvBudgetBytes,
    prefixCacheBytes,
    estimate: { ...plan, message },
    kvBits: kv.kvBits,
    bytesPerToken: pool.bytesPerToken,
  };
}

/**
 * `verifyTokens`: tokens up to which a one-row verify pass takes the GPU's fused
 * path (models/gpu-fused.ts; 0 where there is none). Prompt lookup is on where a
 * pass is measured to pay: the CPU (cpuLookupTuning), and a GPU with that path, drafting at most
 * verifyTokens - 1 tokens by cost (gpuLookupTuning in speculation.ts).
 */
export function schedulerOptions(
  config: EngineConfig,
  plan: MemoryPlanResult,
  device: "cpu" | "gpu",
  verifyTokens = 0,
): SchedulerOptions {
  const gpuLookup = device === "gpu" && verifyTokens > 1;
  return {
    // A GPU step costs little more for 32 rows than for one (bench/results/gpu-h100-*): 32 there.
    maxConcurrent: config.maxConcurrent ?? (device === "gpu" ? 32 : 8),
    queueSize: config.queueSize ?? 256,
    kvBudgetBytes: plan.kvBudgetBytes,
    contextLength: plan.contextLength,
    prefillChunk: config.prefillChunk ?? defaultPrefillChunk(),
    interleavedPrefillChunk: config.interleavedPrefillChunk ?? (device === "gpu" ? 512 : 64),
    maxPrefillBatch: config.maxPrefillBatch ?? (device === "gpu" ? 16 : 4),
    prefixCacheBytes: plan.prefixCacheBytes,
    prefillWidthMultiple: config.prefillWidthMultiple ?? (device === "gpu" ? 64 : 1),
    kvBits: plan.kvBits,
    // A draft model asks for it.
    speculative: config.speculative ?? (device === "cpu" || gpuLookup || Boolean(config.draftModel)),
    // The CPU's cost per draft was measured for lookup alone; beside a draft model (and on a GPU without the
    // fused path, which looks up only then) the adaptive default, as measured with one.
    ...(gpuLookup
      ? { lookupTuning: gpuLookupTuning(verifyTokens - 1) }
      : device === "cpu" && !config.draftModel
        ? { lookupTuning: cpuLookupTuning() }
        : {}),
  };
}

const GiB = 1024 ** 3;

/** MLX's buffer cache: small buffers reused every step stay; at most 4 GiB or 5% of the memory. */
export function bufferCacheLimit(device: "cpu" | "gpu"): number {
  const total = deviceMemoryBytes(device) ?? systemMemory().totalBytes;
  return Math.min(4 * GiB, Math.floor(total * 0.05));
}
