// The whole contract between the server process and the engine process:
// requests, events, finish reasons, statistics, sampling parameters (with
// their defaults and checks) and the IPC messages. Plain data only: this file
// imports nothing that reaches MLX, so the server, the CLI's non-engine
// commands and the engine all import it. The engine sends one "tokens" message
// per decode step, for every sequence that produced a token in it.
import type { GroupHost } from "./group-launch";
import type { ConstraintSpec } from "../text/json-constraint";

export type { ConstraintSpec };

// ---- sampling ----

export interface SamplingParams {
  /** 0 means greedy. */
  temperature: number;
  /** 1 disables. */
  topP: number;
  /** 0 disables. */
  topK: number;
  /** 0 disables. */
  minP: number;
  /** 1 disables. Divides positive logits (multiplies negative) of tokens in the prompt or output. */
  repetitionPenalty: number;
  /** Subtracted once from every token already generated. */
  presencePenalty: number;
  /** Subtracted per occurrence of a generated token. */
  frequencyPenalty: number;
  /** Token id → bias added to its logit (-100 bans, +100 forces in practice). */
  logitBias: Record<number, number> | null;
  /** Same seed, same prompt, same parameters → same tokens. Null draws a random seed. */
  seed: number | null;
  /** Return each chosen token's log-probability. */
  logprobs: boolean;
  /** Also return this many most likely tokens per step (0–20). */
  topLogprobs: number;
  /**
   * Prompt-lookup speculation (scheduler.ts): false, never; true, wherever it
   * applies (seeded sampling too); null, the server's setting, which leaves
   * seeded sampling out (its tokens stay those of decoding in a batch).
   */
  speculative: boolean | null;
}

export const DEFAULT_SAMPLING: Readonly<SamplingParams> = Object.freeze({
  temperature: 0,
  topP: 1,
  topK: 0,
  minP: 0,
  repetitionPenalty: 1,
  presencePenalty: 0,
  frequencyPenalty: 0,
  logitBias: null,
  seed: null,
  logprobs: false,
  topLogprobs: 0,
  speculative: null,
});

export const MAX_TOP_LOGPROBS = 20;

export function samplingParams(partial: Partial<SamplingParams> = {}): SamplingParams {
  return { ...DEFAULT_SAMPLING, ...partial };
}

/**
 * What is wrong with sampling parameters the engine would run (null: nothing).
 * The APIs check their own fields first with their own names; this is the
 * engine's side of the contract, checked before a request crosses to it.
 */
export function samplingProblem(p: SamplingParams, vocabSize: number): string | null {
  const finite = (v: number) => Number.isFinite(v);
  if (!finite(p.temperature) || p.temperature < 0) return "temperature must be a number ≥ 0";
  if (!finite(p.topP) || p.topP < 0 || p.topP > 1) return "top_p must be in [0, 1]";
  if (!Number.isInteger(p.topK) || p.topK < 0) return "top_k must be an integer ≥ 0";
  if (!finite(p.minP) || p.minP < 0 || p.minP > 1) return "min_p must be in [0, 1]";
  if (!finite(p.repetitionPenalty) || p.repetitionPenalty <= 0) return "repetition_penalty must be > 0";
  if (!finite(p.presencePenalty)) return "presence_penalty must be a finite number";
  if (!finite(p.frequencyPenalty)) return "frequency_penalty must be a finite number";
  if (p.seed !== null && (!Number.isInteger(p.seed) || p.seed < 0 || p.seed >= 2 ** 53))
    return "seed must be an integer in [0, 2^53)";
  if (!Number.isInteger(p.topLogprobs) || p.topLogprobs < 0 || p.topLogprobs > MAX_TOP_LOGPROBS)
    return `top_logprobs must be an integer in [0, ${MAX_TOP_LOGPROBS}]`;
  for (const [id, bias] of Object.entries(p.logitBias ?? {})) {
    const i = Number(id);
    if (!Number.isInteger(i) || i < 0 || i >= vocabSize)
      return `logit_bias: ${id} is not a token id (0..${vocabSize - 1})`;
    if (!finite(bias)) return `logit_bias: the bias of ${id} must be a finite number`;
  }
  return null;
}

// ---- requests and events ----

export interface EngineRequest {
  id: string;
  prompt: number[];
  maxTokens: number;
  sampling: SamplingParams;
  stopTokenIds: number[];
  /** Constrained decoding: only tokens that keep the output valid; once complete, only a stop token. */
  constraint?: ConstraintSpec;
  /** The engine's own (kernel warm-up): kept out of the prefix cache. */
  internal?: boolean;
}

/** Why a sequence ended: an end token, its token budget or the context, a cancel, or an engine error. */
export type FinishReason = "stop" | "length" | "cancelled" | "error";

/** One generated token's values. */
export interface StepValues {
  token: number;
  logprob: number | null;
  top: Array<{ token: number; logprob: number }> | null;
}

export interface TokenOut extends StepValues {
  id: string;
}

export type EngineEvent =
  | { type: "started"; id: string; promptTokens: number; cachedTokens: number; queuedMs: number }
  | { type: "tokens"; items: TokenOut[] }
  | { type: "finished"; id: string; reason: FinishReason; completionTokens: number; message?: string }
  | { type: "rejected"; id: string; status: number; message: string; retryAfterSeconds?: number };

// ---- statistics ----

export interface PrefixCacheStats {
  /** Radix nodes. */
  entries: number;
  bytes: number;
  /** Tokens held (shared prefixes once). */
  tokens: number;
  /** The cap (prefixCacheBytes), or -1 when only the KV pool bounds it. */
  budgetBytes: number;
  hits: number;
  misses: number;
  reusedTokens: number;
  evictions: number;
}

/** The prefix cache on disk (src/engine/prefix-store.ts). */
export interface PrefixStoreStats {
  files: number;
  bytes: number;
  budgetBytes: number;
  written: number;
  loaded: number;
  loadedTokens: number;
  removed: number;
  /** Prefixes found on disk but prefilled instead, as quicker (src/engine/load-or-prefill.ts). */
  skippedLoads: number;
  /** Bytes of pieces still to write, as the last plan left them (0 once all is on disk). */
  pendingBytes: number;
  /** Plans that wrote nothing because prefilling again is quicker than reading back would be. */
  skippedWrites: number;
  /** The rates behind that choice: measured in this process, or the device's prior. */
  prefillTokensPerS: number;
  diskBytesPerS: number;
}

export interface SchedulerStats {
  running: number;
  prefilling: number;
  waiting: number;
  kvCacheBytes: number;
  /** What running and prefilling sequences will hold at their longest (the KV pool's reservation). */
  kvReservedBytes: number;
  /** The KV pool: running sequences and cached prefixes together (lowered for a while after running out of memory). */
  kvBudgetBytes: number;
  /** Out-of-memory failures and what became of them (src/engine/memory-pressure.ts). */
  outOfMemory: OutOfMemoryStats;
  prefixCache: PrefixCacheStats;
  /** The prefix cache on disk (null: off). */
  prefixDisk: PrefixStoreStats | null;
  steps: number;
  /** Prompt-lookup verify passes so far (src/engine/speculation.ts). */
  speculation: SpeculationStats;
  maxConcurrent: number;
  queueSize: number;
  contextLength: number;
}

export interface OutOfMemoryStats {
  /** Out-of-memory failures so far. */
  failures: number;
  /** Sequences sent back to recompute after one (the rest failed with it). */
  requeued: number;
  /** The lowered KV budget admission plans with now (null: the plan's). */
  loweredBudgetBytes: number | null;
}

/** Counters over verify passes (prompt lookup and the draft model together; the draft model's also apart). */
export interface SpeculationStats {
  /** Verify passes run. */
  passes: number;
  /** Draft tokens proposed and verified. */
  drafted: number;
  /** Draft tokens accepted. */
  accepted: number;
  /** Tokens the passes produced (accepted + one of the model's own per pass). */
  emitted: number;
  /** Of those: passes over a draft model's draft, its draft tokens, and how many were accepted. */
  draftModelPasses: number;
  draftModelDrafted: number;
  draftModelAccepted: number;
  /** Passes that left a near-tied position to a one-token step (GPU greedy verification: acceptGreedyUnlessTied). */
  tieSteps: number;
}

// ---- the engine process ----

/** How the engine process is configured (serialized into its command line). */
export interface EngineConfig {
  /** Model folder or .gguf file. */
  model: string;
  /** "cpu" or "gpu"; default: gpu when the MLX build has one. */
  device?: "cpu" | "gpu";
  /** Cap on prompt + output tokens per sequence; default from memory. */
  maxContext?: number | null;
  kvBudgetBytes?: number | null;
  /** Rows decoded together; default (also for null) 8 on the CPU, 32 on a GPU. */
  maxConcurrent?: number | null;
  queueSize?: number;
  prefillChunk?: number;
  interleavedPrefillChunk?: number;
  maxPrefillBatch?: number;
  prefixCacheBytes?: number | null;
  /**
   * Disk budget for cached prefixes kept across restarts: null, automatic
   * (up to 16 GiB, at most a quarter of the free disk); absent or 0, off
   * (tests and benchmarks that start an engine directly).
   */
  prefixDiskBytes?: number | null;
  /** Folder for them (default: <data folder>/prefix-cache). */
  prefixDiskDir?: string;
  /** KV bytes written to disk in one step (default PIECE_BYTES in prefix-store.ts; tests make it small). */
  prefixDiskPieceBytes?: number;
  /** KV cache storage: 0 float, 8 or 4 group-quantized bits; null/absent: automatic (automaticKvBits in kv-pool.ts). */
  kvBits?: 0 | 4 | 8 | null;
  /** Prompt-lookup speculation for a lone decoding row; null/absent: on (a GPU: where its fused verify path takes the pass, engine-plan.ts). */
  speculative?: boolean | null;
  /**
   * A second, small model of the same tokenizer (path) that drafts for a lone
   * decoding row where prompt lookup finds nothing (src/engine/draft-model.ts).
   * It turns speculation on unless `speculative` is false.
   */
  draftModel?: string | null;
  /** Prompts left-padded to a multiple of this (default 64 on the GPU, 1 on the CPU). */
  prefillWidthMultiple?: number;
  /** GPU: keep dequantized copies of the weights for batched products (default: when memory allows). */
  denseWeights?: boolean;
  /**
   * Idle time after which MLX's buffer cache goes back to the system (default 5000 ms).
   * Freeing it at once made every lone request allocate device memory afresh.
   */
  cacheReleaseIdleMs?: number;
  /** Threads of the CPU kernels; null/absent: automatic (see ffi/cpu_common.h). */
  threads?: number | null;
  /** Phi-3: long_factor at every length, as mlx-lm (comparisons only). */
  alwaysLongRope?: boolean;
  /**
   * Test hook: after loading, cap the engine's memory at what it uses plus
   * this many bytes (MLX's limit, and on Linux the process's data limit), so
   * that a request that cannot fit meets a real allocation failure.
   */
  memoryHeadroomBytes?: number | null;
  /** Test hook: fail the forward pass when a prompt contains this token id. */
  faultTokenId?: number | null;
  /**
   * Tensor parallelism: the engine runs as `size` ranks of one MLX distributed
   * group (src/engine/tensor-parallel.ts); the supervisor starts them.
   */
  tensorParallel?: {
    size: number;
    backend: "ring" | "nccl" | "mpi" | "jaccl" | "any";
    /** Machines in rank order (--hosts); absent: every rank on this one. */
    hosts?: GroupHost[] | null;
    /** First ring port on remote machines (default 32323). */
    startingPort?: number;
  } | null;
}

export interface EngineInfo {
  modelPath: string;
  modelName: string;
  format: "folder" | "gguf";
  modelType: string;
  vocabSize: number;
  /** Longest sequence (prompt + output) a request may reach. */
  contextLength: number;
  maxPositionEmbeddings: number;
  dtype: string;
  device: "cpu" | "gpu";
  mlxVersion: string;
  weightBytes: number;
  kvBytesPerToken: number;
  /** KV cache storage in use: 0 float, 8 or 4 bits (float where the model's head_dim cannot be quantized). */
  kvBits: number;
  loadMs: number;
  pid: number;
}

export interface MemorySnapshot {
  activeBytes: number;
  peakBytes: number;
  cacheBytes: number;
}

/** The engine process itself (leak checks, the soak). */
export interface EngineProcessStats {
  pid: number;
  rssBytes: number;
  /** MLX array handles alive in the shim. */
  liveHandles: number;
}

export interface EngineStats extends SchedulerStats {
  memory: MemorySnapshot;
  process?: EngineProcessStats;
}

export type ToEngine =
  | { type: "generate"; request: EngineRequest }
  | { type: "cancel"; id: string }
  | { type: "stats"; nonce: number }
  | { type: "shutdown" };

export type FromEngine =
  | EngineEvent
  | { type: "ready"; info: EngineInfo }
  | { type: "load-failed"; message: string }
  | { type: "stats"; nonce: number; stats: EngineStats };
