// Pensieve's forward pass and greedy generation against outside oracles:
// mlx-lm, and an independent NumPy Phi-3 with the Hugging Face LongRoPE rule.
// Fixtures: test/fixtures/reference/ (regenerate: bun scripts/fixtures/make-reference.ts).
import { describe, expect, test } from "bun:test";
import { cacheFor, generateTokens, prefill } from "../../src/engine/one-sequence";
import { samplingParams } from "../../src/engine/protocol";
import * as mx from "../../src/mlx";
import { loadModel } from "../../src/models/loader";
import { tinyModel, weightsDigest } from "../support/models";
import { maxAbsDiff, useExactCpuMatmul } from "../support/oracle";
import { REFERENCE_CASES, readReference } from "../support/reference";

useExactCpuMatmul();

/** Max |ours - reference| over logits and log-probabilities (float32 on the CPU). */
export const LOGITS_TOLERANCE = 1e-4;

function lastLogits(model: ReturnType<typeof loadModel>["model"], prompt: number[]): Float32Array {
  const cache = cacheFor(model);
  try {
    return mx.tidy(() => prefill(model, cache, prompt).read() as Float32Array);
  } finally {
    cache.dispose();
  }
}

test("dequantized copies for batched products (the GPU's path) give the same logits", () => {
  const ref = readReference("tiny-phi3", "hf-rule");
  const loaded = loadModel(tinyModel("tiny-phi3"), { denseCopies: true });
  for (const r of ref.results)
    expect(maxAbsDiff(lastLogits(loaded.model, r.prompt), r.lastLogits)).toBeLessThan(LOGITS_TOLERANCE);
  loaded.model.dispose();
});

for (const c of REFERENCE_CASES) {
  describe(`${c.model} vs ${c.oracle}`, () => {
    const ref = readReference(c.model, c.oracle);
    const dir = tinyModel(c.model);
    const loaded = loadModel(dir, { alwaysLongRope: c.oracle === "mlx-lm" });

    test("the generated weights are the ones the fixture was made from", () => {
      expect(weightsDigest(dir)).toBe(ref.weightsSha256);
    });

    ref.results.forEach((r, i) => {
      test(`prompt ${i} (${r.prompt.length} tokens): last logits within ${LOGITS_TOLERANCE}`, () => {
        const ours = lastLogits(loaded.model, r.prompt);
        expect(maxAbsDiff(ours, r.lastLogits)).toBeLessThan(LOGITS_TOLERANCE);
      });

      test(`prompt ${i}: first ${c.greedyTokens} greedy tokens identical, log-probabilities within ${LOGITS_TOLERANCE}`, () => {
        const tokens: number[] = [];
        const logprobs: number[] = [];
        for (const step of generateTokens(loaded.model, r.prompt, {
          maxTokens: c.greedyTokens,
          sampling: samplingParams({ logprobs: true }),
          prefillChunk: 32,
        })) {
          tokens.push(step.token);
          logprobs.push(step.logprob as number);
        }
        expect(tokens).toEqual(r.greedy);
        const worst = Math.max(...logprobs.map((lp, k) => Math.abs(lp - (r.greedyLogprobs[k] as number))));
        expect(worst).toBeLessThan(LOGITS_TOLERANCE);
      });
    });
  });
}
