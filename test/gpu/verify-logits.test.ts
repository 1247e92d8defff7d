// Greedy speculation must be plain greedy decoding with a head the fused GPU kernels don't take: a tied 8-bit
// embedding, as the real SmolLM2's Q8_0. On a GPU the engine loads dense copies of the weights, and a product of 3
// or more rows takes the copy (another kernel, another order of sums) while a one-token step takes MLX's
// quantized kernel; decoder.ts computes a verify pass's logits position by position (linearByPosition).
// Runs on the CPU (its own kernel, no copies) and, where CUDA is, on the GPU as the engine loads the model there.
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { KVCache } from "../../src/engine/kv-cache";
import { cacheShape } from "../../src/engine/one-sequence";
import { samplingParams } from "../../src/engine/protocol";
import { gpuLookupTuning } from "../../src/engine/speculation";
import * as mx from "../../src/mlx";
import { kernelLanguage } from "../../src/mlx/kernels";
import { FUSED_VERIFY_DEFAULT_TOKENS } from "../../src/models/gpu-fused";
import { loadModel } from "../../src/models/loader";
import { writeRandomModel } from "../../src/models/random";
import type { LanguageModel } from "../../src/models/types";
import { TEST_TMP, TINY_SPECS } from "../support/models";
import { promptIds } from "../support/reference";
import { request, runScheduled, singleWithLogprobs, TEST_SCHEDULER_OPTIONS } from "../support/scheduler";

const cuda = mx.gpuAvailable() && kernelLanguage() === "cuda";

/** tiny-llama (same seed) with its tied embedding, and so its head, at 8 bits: SmolLM2's Q4_1 + Q8_0 layout. */
function tinyLlama8bitHead(): string {
  const spec = TINY_SPECS["tiny-llama"]?.() as Parameters<typeof writeRandomModel>[1];
  const dir = join(TEST_TMP, "models", "tiny-llama-q8-head");
  const quantization = { group_size: 32, bits: 4, "model.embed_tokens": { group_size: 32, bits: 8 } };
  writeRandomModel(dir, { ...spec, config: { ...spec.config, quantization } });
  return dir;
}

/** Argmax at each position of a pass of `tokens` after `cached`: at once (logits "all") or one step at a time. */
function argmaxes(model: LanguageModel, cached: number[], tokens: number[], atOnce: boolean): number[] {
  const cache = new KVCache(cacheShape(model), 1);
  try {
    mx.evaluate(model.forward(mx.int32(cached, [1, cached.length]), cache, { logits: "last" }));
    const rows = atOnce
      ? [model.forward(mx.int32(tokens, [1, tokens.length]), cache, { logits: "all" })]
      : tokens.map((t) => model.forward(mx.int32([t], [1, 1]), cache, { logits: "last" }));
    return rows.flatMap((logits) => {
      const ids = mx.astype(mx.argmax(mx.reshape(logits, [-1, logits.dim(-1)]), -1), mx.Dtype.int32);
      return Array.from(ids.read() as Int32Array);
    });
  } finally {
    cache.dispose();
  }
}

let path: string | null = null;
afterAll(() => mx.setDevice("cpu"));

for (const device of cuda ? (["cpu", "gpu"] as const) : (["cpu"] as const)) {
  describe(`verify passes with an 8-bit tied head (${device})`, () => {
    const load = () => {
      mx.setDevice(device);
      path ??= tinyLlama8bitHead();
      return loadModel(path, { denseCopies: device === "gpu" }).model;
    };

    test("each position's argmax of a verify pass of 2-5 tokens equals the one-token steps'", () => {
      const model = load();
      try {
        for (const L of [2, 3, 4, 5]) {
          const cached = promptIds(40, 3);
          const tokens = promptIds(L, 9 + L);
          expect(argmaxes(model, cached, tokens, true)).toEqual(argmaxes(model, cached, tokens, false));
        }
      } finally {
        model.dispose();
      }
    }, 240_000);

    test("greedy prompt-lookup speculation (the GPU's defaults) equals plain greedy decoding", () => {
      const model = load();
      try {
        const base = promptIds(12, 7);
        const prompt = [...base, ...base.slice(1), ...base.slice(1)]; // repeats itself: the lookup drafts
        const plain = singleWithLogprobs(model, prompt, 40, samplingParams()).tokens;
        const options = {
          ...TEST_SCHEDULER_OPTIONS,
          speculative: true,
          lookupTuning: gpuLookupTuning(FUSED_VERIFY_DEFAULT_TOKENS - 1),
        };
        const run = runScheduled(model, [{ at: 0, request: request("v", prompt, 40) }], options);
        expect(run.scheduler.speculation.passes).toBeGreaterThan(0);
        expect(run.tokens.get("v")).toEqual(plain);
      } finally {
        model.dispose();
      }
    }, 240_000);
  });
}
