// What the engine runs while idle after it starts, so that real requests find
// their shapes built: one prompt per padded prefill width, then (on a GPU) a
// decode step per batch size the fused path builds (2..its row limit), and (with prompt
// lookup) one verify-shaped pass per length the fused verify path takes.

import * as mx from "../mlx";
import { fusedRowsBuilt, fusedRowsNow } from "../models/gpu-fused";
import type { LanguageModel } from "../models/types";
import type { KvBits } from "./attention-plan";
import { cacheFor } from "./one-sequence";
import type { SchedulerOptions } from "./scheduler";

/**
 * With padded prompt widths (the GPU), one prompt per width up to a prefill
 * chunk: run while idle, each builds that shape's attention graph and matmul
 * plans before a real prompt needs them. One short of the width, so that the
 * row is padded as almost every real prompt is.
 */
export function warmupLengths(options: SchedulerOptions): number[] {
  const multiple = options.prefillWidthMultiple ?? 1;
  if (multiple <= 1) return [];
  const top = Math.min(options.prefillChunk, options.contextLength - 2);
  const out: number[] = [];
  for (let width = multiple; width <= top; width += multiple) out.push(width - 1);
  return out;
}

/** The verify-pass lengths (tokens) to build while idle: 2..verifyTokens (none below 2). */
export function verifyWarmupLengths(verifyTokens: number): number[] {
  return Array.from({ length: Math.max(0, verifyTokens - 1) }, (_, i) => i + 2);
}

/**
 * Runs `passes` on a throwaway cache of `rows` rows and frees it: idle work that builds kernels before a
 * client's step needs them (~5 s each shape on first use; then MLX's PTX cache keeps them). Says what took
 * over a second.
 */
function warmOnThrowawayCache(
  model: LanguageModel,
  kvBits: KvBits,
  rows: number,
  what: string,
  passes: (cache: ReturnType<typeof cacheFor>) => void,
): void {
  const started = performance.now();
  const cache = cacheFor(model, rows, kvBits);
  try {
    mx.tidy(() => passes(cache));
  } finally {
    cache.dispose();
  }
  const ms = performance.now() - started;
  if (ms > 1000) console.error(`[engine] ${what}: kernels built in ${ms.toFixed(0)} ms`);
}

/**
 * A verify-shaped pass of `tokens` tokens after one cached token, so that the fused verify path's kernels
 * for that length compile while idle, not in a client's first speculative step, which every stream would wait for.
 */
export function warmVerifyPass(model: LanguageModel, kvBits: KvBits, tokens: number): void {
  warmOnThrowawayCache(model, kvBits, 1, `verify passes of ${tokens} tokens`, (cache) => {
    mx.evaluate(model.forward(mx.int32([0], [1, 1]), cache, { logits: "last" }));
    mx.evaluate(model.forward(mx.int32(new Array(tokens).fill(0), [1, tokens]), cache, { logits: "all" }));
  });
}

/**
 * Two decode steps of `rows` rows, so that the fused path's kernels for that batch size compile while idle.
 * Until it has run, batches of that size take MLX's ops (gpu-fused.ts holdFusedRowsUntilBuilt); it lets them
 * through first, so that the steps it runs are the fused ones. If it throws, that size (and so every larger one)
 * stays on MLX's ops; the engine logs the error. `after`: the count warmed before it (the hold's list may skip
 * counts whose kernels a larger one shares).
 */
export function warmDecodeRows(model: LanguageModel, kvBits: KvBits, rows: number, after = rows - 1): void {
  if (fusedRowsNow() < after) return; // in order: after a smaller count failed, larger ones stay held
  fusedRowsBuilt(rows);
  try {
    warmOnThrowawayCache(model, kvBits, rows, `decode steps of ${rows} rows`, (cache) => {
      const tokens = mx.int32(new Array(rows).fill(0), [rows, 1]);
      mx.evaluate(model.forward(tokens, cache, { logits: "last" }));
      mx.evaluate(model.forward(tokens, cache, { logits: "last" }));
    });
  } catch (e) {
    fusedRowsBuilt(after);
    throw e;
  }
}
