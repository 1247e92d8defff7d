// The reference cases: which tiny model, which oracle, which prompts. Shared by
// the fixture generator (scripts/fixtures/make-reference.ts) and the tests.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { REPO_ROOT } from "../../src/paths";

export type Oracle = "mlx-lm" | "hf-rule";

export interface ReferenceCase {
  model: string;
  oracle: Oracle;
  prompts: number[][];
  greedyTokens: number;
}

/** Deterministic pseudo-random token ids in [3, 32000). */
export function promptIds(length: number, seed: number): number[] {
  const ids = [1];
  let x = seed >>> 0;
  while (ids.length < length) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    ids.push(3 + (x % 31997));
  }
  return ids;
}

export const REFERENCE_CASES: ReferenceCase[] = [
  { model: "tiny-llama", oracle: "mlx-lm", prompts: [promptIds(12, 1), promptIds(150, 2)], greedyTokens: 32 },
  { model: "tiny-llama-f16", oracle: "mlx-lm", prompts: [promptIds(12, 3), promptIds(80, 4)], greedyTokens: 32 },
  // mlx-lm uses long_factor everywhere: compared with Pensieve's alwaysLongRope mode.
  { model: "tiny-phi3", oracle: "mlx-lm", prompts: [promptIds(12, 5), promptIds(100, 6)], greedyTokens: 32 },
  // The Hugging Face rule: short prompt (short factors throughout), a prompt
  // that crosses original_max_position_embeddings (64) while generating, and a
  // prompt already beyond it.
  {
    model: "tiny-phi3",
    oracle: "hf-rule",
    prompts: [promptIds(12, 7), promptIds(50, 8), promptIds(90, 9)],
    greedyTokens: 32,
  },
  // Issue 15 families. Windowed models: one prompt inside the window (16), one far beyond it.
  { model: "tiny-qwen2", oracle: "mlx-lm", prompts: [promptIds(12, 41), promptIds(120, 42)], greedyTokens: 32 },
  { model: "tiny-qwen3", oracle: "mlx-lm", prompts: [promptIds(12, 43), promptIds(120, 44)], greedyTokens: 32 },
  { model: "tiny-qwen3-moe", oracle: "mlx-lm", prompts: [promptIds(12, 45), promptIds(120, 46)], greedyTokens: 32 },
  { model: "tiny-gemma3", oracle: "mlx-lm", prompts: [promptIds(10, 47), promptIds(130, 48)], greedyTokens: 32 },
  // mlx-lm uses long_factor everywhere: compared with Pensieve's alwaysLongRope mode.
  { model: "tiny-phi4-mini", oracle: "mlx-lm", prompts: [promptIds(12, 49), promptIds(100, 50)], greedyTokens: 32 },
  { model: "tiny-mistral-swa", oracle: "mlx-lm", prompts: [promptIds(10, 51), promptIds(130, 52)], greedyTokens: 32 },
  // Added as one descriptor file (src/models/mixtral.ts) and a registry line.
  { model: "tiny-mixtral", oracle: "mlx-lm", prompts: [promptIds(12, 53), promptIds(120, 54)], greedyTokens: 32 },
];

export interface ReferenceResult {
  prompt: number[];
  lastLogits: Float32Array;
  greedy: number[];
  /** Log-probability of each greedy token under the oracle's distribution at that step. */
  greedyLogprobs: number[];
}

export interface ReferenceFixture {
  oracle: string;
  weightsSha256: string;
  results: ReferenceResult[];
}

export function readReference(model: string, oracle: Oracle): ReferenceFixture {
  const path = join(REPO_ROOT, "test", "fixtures", "reference", `${model}.${oracle}.json`);
  const raw = JSON.parse(readFileSync(path, "utf8")) as {
    oracle: string;
    weights_sha256: string;
    results: Array<{ prompt: number[]; last_logits_f32: string; greedy: number[]; greedy_logprobs: number[] }>;
  };
  return {
    oracle: raw.oracle,
    weightsSha256: raw.weights_sha256,
    results: raw.results.map((r) => {
      const bytes = Buffer.from(r.last_logits_f32, "base64");
      return {
        prompt: r.prompt,
        lastLogits: new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4),
        greedy: r.greedy,
        greedyLogprobs: r.greedy_logprobs,
      };
    }),
  };
}
