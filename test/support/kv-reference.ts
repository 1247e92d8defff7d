// Quantized-KV reference cases (mlx-lm's QuantizedKVCache as the oracle):
// shared by scripts/fixtures/make-kv-reference.ts and test/engine/kv-reference.test.ts.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { KvBits } from "../../src/engine/attention-plan";
import { REPO_ROOT } from "../../src/paths";
import { promptIds } from "./reference";

export interface KvReferenceCase {
  model: string;
  prompts: number[][];
  greedyTokens: number;
  bits: KvBits[];
  /** Pensieve's kvGroupSize(head_dim): 32 for both (head_dim 32 and 96). */
  groupSize: number;
}

export const KV_REFERENCE_CASES: KvReferenceCase[] = [
  {
    model: "tiny-llama",
    prompts: [promptIds(12, 1), promptIds(150, 2)],
    greedyTokens: 32,
    bits: [8, 4],
    groupSize: 32,
  },
  { model: "tiny-phi3", prompts: [promptIds(12, 5), promptIds(100, 6)], greedyTokens: 32, bits: [8, 4], groupSize: 32 },
];

export interface KvReferenceResult {
  prompt: number[];
  lastLogits: Float32Array;
  greedy: number[];
  greedyLogprobs: number[];
  /** mlx-lm's kv_bits switch (first prefill step over float keys). */
  greedyKvBits: number[];
}

export interface KvReferenceFixture {
  oracle: string;
  weightsSha256: string;
  runs: Array<{ bits: KvBits; groupSize: number; results: KvReferenceResult[] }>;
}

export function readKvReference(model: string): KvReferenceFixture {
  const path = join(REPO_ROOT, "test", "fixtures", "reference", `${model}.mlx-lm-kv.json`);
  const raw = JSON.parse(readFileSync(path, "utf8"));
  return {
    oracle: raw.oracle,
    weightsSha256: raw.weights_sha256,
    runs: raw.runs.map((run: { bits: KvBits; group_size: number; results: Array<Record<string, unknown>> }) => ({
      bits: run.bits,
      groupSize: run.group_size,
      results: run.results.map((r) => {
        const bytes = Buffer.from(r.last_logits_f32 as string, "base64");
        return {
          prompt: r.prompt as number[],
          lastLogits: new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4),
          greedy: r.greedy as number[],
          greedyLogprobs: r.greedy_logprobs as number[],
          greedyKvBits: r.greedy_kv_bits as number[],
        };
      }),
    })),
  };
}
