// What a numerics-changing fast path costs a model: perplexity on a fixed
// English text (test/fixtures/text/lighthouses.txt, written for Pensieve and
// dedicated to the public domain) and greedy agreement with the exact path.
// Used by test/models/int8-quality.test.ts and bench/quality.ts.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { cacheFor, generateTokens } from "../../src/engine/one-sequence";
import { samplingParams } from "../../src/engine/protocol";
import * as mx from "../../src/mlx";
import type { LanguageModel } from "../../src/models/types";
import { REPO_ROOT } from "../../src/paths";

export const QUALITY_TEXT = readFileSync(join(REPO_ROOT, "test/fixtures/text/lighthouses.txt"), "utf8");

/** Ten openings for greedy continuations: varied subjects, plain prose. */
export const QUALITY_PROMPTS = [
  "The history of the printing press begins",
  "To make a good loaf of bread, you need",
  "The planets of the solar system are",
  "In the winter of 1816, the people of New England",
  "A computer program is a list of instructions that",
  "The best way to learn a new language is",
  "Rivers carry water from the mountains to",
  "Photosynthesis is the process by which plants",
  "When the train finally arrived at the station,",
  "The rules of chess are simple to learn, but",
];

/** exp(mean negative log-likelihood) of each next token, the text run through once in chunks. */
export function perplexity(model: LanguageModel, tokens: readonly number[], chunk = 256): number {
  const cache = cacheFor(model);
  let nll = 0;
  let count = 0;
  try {
    for (let start = 0; start + 1 < tokens.length; start += chunk) {
      const part = tokens.slice(start, Math.min(start + chunk, tokens.length - 1));
      const targets = tokens.slice(start + 1, start + 1 + part.length);
      nll += mx.tidy(() => {
        const logits = model.forward(mx.int32(part, [1, part.length]), cache, { logits: "all" });
        const picked = mx.takeAlongAxis(logits, mx.int32(targets, [1, targets.length, 1]), -1);
        const lost = mx.sum(mx.subtract(mx.logsumexp(logits, -1), mx.reshape(picked, [1, targets.length])));
        mx.evaluate(lost, ...cache.arrays());
        return lost.item();
      });
      count += part.length;
    }
  } finally {
    cache.dispose();
  }
  return Math.exp(nll / count);
}

/** Greedy ids after `prompt` (end-of-sequence ignored). */
export function greedy(model: LanguageModel, prompt: readonly number[], n: number): number[] {
  const out: number[] = [];
  for (const step of generateTokens(model, prompt, { maxTokens: n, sampling: samplingParams() })) out.push(step.token);
  return out;
}

/** Length of the common prefix of two id lists. */
export function commonPrefix(a: readonly number[], b: readonly number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

/** Runs fn with the CPU matmul in `mode`, then restores the previous one. */
export function withCpuMatmul<T>(mode: mx.CpuMatmulMode, fn: () => T): T {
  const before = mx.cpuMatmul();
  mx.setCpuMatmul(mode);
  try {
    return fn();
  } finally {
    mx.setCpuMatmul(before);
  }
}
