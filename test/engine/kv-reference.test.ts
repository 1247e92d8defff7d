// Quantized KV (kvBits 8 and 4) against the outside oracle: mlx-lm's
// QuantizedKVCache with quantized_scaled_dot_product_attention, same group
// size, float32 on the CPU. Fixtures: test/fixtures/reference/*.mlx-lm-kv.json
// (regenerate: bun scripts/fixtures/make-kv-reference.ts).
import { describe, expect, test } from "bun:test";
import { cacheFor, generateTokens, prefill } from "../../src/engine/one-sequence";
import { samplingParams } from "../../src/engine/protocol";
import * as mx from "../../src/mlx";
import { loadModel } from "../../src/models/loader";
import type { LanguageModel } from "../../src/models/types";
import { KV_REFERENCE_CASES, readKvReference } from "../support/kv-reference";
import { tinyModel, weightsDigest } from "../support/models";
import { maxAbsDiff, useExactCpuMatmul } from "../support/oracle";

useExactCpuMatmul();

/**
 * Max |ours - mlx-lm| over logits and log-probabilities (float32 on the CPU).
 * Looser than the float comparisons (1e-4): keys that differ by an ulp before
 * quantization (another RoPE or matmul kernel) can land in neighbouring
 * quantization steps; measured up to 3.4e-4 on tiny-phi3.
 */
const LOGITS_TOLERANCE = 1e-3;

function lastLogits(model: LanguageModel, prompt: number[], kvBits: 8 | 4, matmul = false): Float32Array {
  const cache = cacheFor(model, 1, kvBits);
  if (matmul) cache.quantizedAttention = "matmul";
  try {
    return mx.tidy(() => prefill(model, cache, prompt).read() as Float32Array);
  } finally {
    cache.dispose();
  }
}

for (const c of KV_REFERENCE_CASES) {
  describe(`${c.model} with a quantized KV cache vs mlx-lm QuantizedKVCache`, () => {
    const ref = readKvReference(c.model);
    const dir = tinyModel(c.model);
    // mlx-lm's Phi-3 uses the long RoPE factors at every length.
    const { model } = loadModel(dir, { alwaysLongRope: true });

    test("the generated weights are the ones the fixture was made from", () => {
      expect(weightsDigest(dir)).toBe(ref.weightsSha256);
    });

    for (const run of ref.runs) {
      const bits = run.bits as 8 | 4;
      run.results.forEach((r, i) => {
        test(`kvBits ${bits}, group ${run.groupSize}, prompt ${i} (${r.prompt.length} tokens): last logits within ${LOGITS_TOLERANCE}`, () => {
          expect(cacheFor(model, 1, bits).shape.kvGroupSize).toBe(run.groupSize);
          // The CPU default (dequantize, then the fused kernel) and mlx-lm's quantized matmuls.
          expect(maxAbsDiff(lastLogits(model, r.prompt, bits), r.lastLogits)).toBeLessThan(LOGITS_TOLERANCE);
          expect(maxAbsDiff(lastLogits(model, r.prompt, bits, true), r.lastLogits)).toBeLessThan(LOGITS_TOLERANCE);
        });

        test(`kvBits ${bits}, prompt ${i}: first ${c.greedyTokens} greedy tokens identical, log-probabilities close`, () => {
          const steps = [
            ...generateTokens(model, r.prompt, {
              maxTokens: c.greedyTokens,
              sampling: samplingParams({ logprobs: true }),
              prefillChunk: 32,
              kvBits: bits,
            }),
          ];
          expect(steps.map((s) => s.token)).toEqual(r.greedy);
          const worst = Math.max(
            ...steps.map((s, k) => Math.abs((s.logprob as number) - (r.greedyLogprobs[k] as number))),
          );
          expect(worst).toBeLessThan(LOGITS_TOLERANCE);
        });
      });
    }
  });
}
