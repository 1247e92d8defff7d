// Messages between the server process and the engine process (IPC). The
// engine sends one "tokens" message per decode step, for every sequence that
// produced a token in it. No MLX here: both sides import this file.
import type { EngineEvent, EngineRequest, SchedulerStats } from "./scheduler";

export type { ConstraintSpec } from "../text/json-constraint";
export type { EngineEvent, EngineRequest, FinishReason, TokenOut } from "./scheduler";

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
  /** KV cache storage: 0 float, 8 or 4 group-quantized bits; null/absent: automatic (defaultKvBits in engine.ts). */
  kvBits?: 0 | 4 | 8 | null;
  /** Prompt-lookup speculation for a lone decoding row (default true). */
  speculative?: boolean;
  /** Prompts left-padded to a multiple of this (default 64 on the GPU, 1 on the CPU). */
  prefillWidthMultiple?: number;
  /** GPU: keep dequantized copies of the weights for batched products (default: when memory allows). */
  denseWeights?: boolean;
  /**
   * Idle time after which MLX's buffer cache goes back to the system (default 5000 ms).
   * Freeing it at once made every lone request allocate device memory afresh.
   */
  cacheReleaseIdleMs?: number;
  /** Phi-3: long_factor at every length, as mlx-lm (comparisons only). */
  alwaysLongRope?: boolean;
  /** Test hook: fail the forward pass when a prompt contains this token id. */
  faultTokenId?: number | null;
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

export interface EngineStats extends SchedulerStats {
  memory: MemorySnapshot;
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
