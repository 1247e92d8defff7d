// What the engine runs while idle after it starts, so that real requests find
// their shapes built: one prompt per padded prefill width, then (on a GPU with
// prompt lookup) one verify-shaped pass per length the fused verify path takes.

import * as mx from "../mlx";
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
 * A verify-shaped pass of `tokens` tokens on a throwaway one-row cache, so that the fused verify path's
 * kernels for that length compile while idle (~5 s each on first use; then MLX's PTX cache keeps them), not
 * in a client's first speculative step, which every stream would wait for.
 */
export function warmVerifyPass(model: LanguageModel, kvBits: KvBits, tokens: number): void {
  const started = performance.now();
  const cache = cacheFor(model, 1, kvBits);
  try {
    mx.tidy(() => {
      mx.evaluate(model.forward(mx.int32([0], [1, 1]), cache, { logits: "last" }));
      mx.evaluate(model.forward(mx.int32(new Array(tokens).fill(0), [1, tokens]), cache, { logits: "all" }));
    });
  } finally {
    cache.dispose();
  }
  const ms = performance.now() - started;
  if (ms > 1000) console.error(`[engine] verify passes of ${tokens} tokens: kernels built in ${ms.toFixed(0)} ms`);
}
