// Work a full card would fail is refused before it runs (issue 14). On CUDA,
// an allocation that fails inside MLX's evaluation is reported as an error,
// but on an H100 the kernels after such a failure hit an illegal address: a
// sticky error that ends the process and every stream in it
// (bench/results/gpu-h100-2026-12-07b/oom). So before a prefill chunk, and
// before a decode step that grows the batch's KV (every KV_STEP columns), whose
// allocations are large and known, the scheduler asks the card what is free
// (beside MLX's own cache, which MLX reuses first) and, short of it, fails the
// work with an out-of-memory error that nothing evaluated: the scheduler's
// recovery (scheduler-recovery.ts) then retries or fails those sequences, and
// the others go on. A decode step's other allocations are small and come from
// MLX's cache almost always: not checked.

import * as mx from "../mlx";
import type { ModelConfig } from "../models/config";
import { mlpWidth } from "./memory-plan";

/** The CUDA card's free bytes; null without one, or with PENSIEVE_DEVICE_HEADROOM=0 (to reproduce a failure inside MLX). */
export function cardFreeBytes(): number | null {
  return process.env.PENSIEVE_DEVICE_HEADROOM === "0" ? null : mx.memory.deviceFree();
}

export class DeviceHeadroom {
  readonly #free: () => number | null;
  readonly #cached: () => number;

  /** `free`: the card's free bytes (null: nothing to check, as on the CPU); `cached`: MLX's buffer cache. */
  constructor(free: () => number | null, cached: () => number) {
    this.#free = free;
    this.#cached = cached;
  }

  /** Throws an out-of-memory error when `bytes` more will not fit on the card (`what`: for the message). */
  ensure(bytes: number, what: string): void {
    if (bytes <= 0) return;
    const free = this.#free();
    if (free === null) return;
    const cached = this.#cached();
    if (bytes <= free + cached) return;
    throw new Error(
      `out of memory: ${what} needs ${size(bytes)}; the GPU has ${size(free)} free ` +
        `and MLX's cache ${size(cached)} (another process may hold the rest)`,
    );
  }
}

const size = (bytes: number) =>
  bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(2)} GiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`;

/**
 * A forward pass's activations for `tokens` positions at `dtypeBytes` a value,
 * with logits for `logitRows` of them: the per-layer hidden state, attention
 * projections and MLP. The attention's scores are not counted: on a GPU a
 * fused kernel never builds them.
 */
export function forwardWorkingBytes(
  config: ModelConfig,
  tokens: number,
  logitRows: number,
  dtypeBytes: number,
): number {
  const perPosition =
    4 * config.hiddenSize + 2 * mlpWidth(config) + (config.numHeads + 2 * config.numKvHeads) * config.headDim;
  return tokens * perPosition * dtypeBytes + logitRows * config.vocabSize * 4;
}
