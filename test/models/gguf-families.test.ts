// GGUF loading per architecture against llama.cpp: tiny random GGUF files
// written by the `gguf` PyPI package in llama.cpp's conventions
// (scripts/fixtures/families/write_tiny_gguf.py; llama's permuted q/k, Gemma's
// 1 + w norms, Qwen3-MoE's stacked experts), and the greedy tokens llama.cpp
// (node-llama-cpp) generates from them (gen_llamacpp_gguf_tokens.mjs).
// `pensieve convert` writes each family so mlx-lm loads it: mlx-lm 0.32.2 ran
// the converted folders (make-convert-reference.ts); Pensieve's own load of the
// folder it converts must give mlx-lm's logits (1e-4) and greedy tokens.
// Regenerate: bash scripts/fixtures/families/make-gguf.sh, then
// bun scripts/fixtures/families/make-convert-reference.ts
import { describe, expect, test } from "bun:test";
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { cacheFor, generateTokens, prefill } from "../../src/engine/one-sequence";
import { samplingParams } from "../../src/engine/protocol";
import * as mx from "../../src/mlx";
import { convertGguf } from "../../src/models/gguf-to-mlx";
import { loadModel } from "../../src/models/loader";
import type { LanguageModel } from "../../src/models/types";
import { REPO_ROOT } from "../../src/paths";
import { TEST_TMP } from "../support/models";
import { useExactCpuMatmul } from "../support/oracle";

const GGUF_DIR = join(REPO_ROOT, "test", "fixtures", "gguf");

useExactCpuMatmul();
const fixture = JSON.parse(
  readFileSync(join(REPO_ROOT, "test", "fixtures", "reference", "gguf-llamacpp.json"), "utf8"),
) as {
  oracle: string;
  models: Record<string, Array<{ prompt: number[]; greedy: number[] }>>;
};

/** Greedy tokens after a prompt (prefilled in chunks of `prefillChunk` when given). */
function greedyTokens(model: LanguageModel, prompt: number[], count: number, prefillChunk?: number): number[] {
  const tokens: number[] = [];
  const options = { maxTokens: count, sampling: samplingParams(), ...(prefillChunk ? { prefillChunk } : {}) };
  for (const step of generateTokens(model, prompt, options)) tokens.push(step.token);
  return tokens;
}

const EXPECTED_TYPES: Record<string, string> = {
  "tiny-llama.gguf": "llama",
  "tiny-qwen2.gguf": "qwen2",
  "tiny-qwen3.gguf": "qwen3",
  "tiny-qwen3moe.gguf": "qwen3_moe",
  "tiny-gemma3.gguf": "gemma3_text",
  "tiny-phi4-mini.gguf": "phi3",
  // Every matrix in Q8_0 blocks (3-D expert tensors included), and their float32 twins.
  "tiny-qwen3moe-q8_0.gguf": "qwen3_moe",
  "tiny-gemma3-q8_0.gguf": "gemma3_text",
  "tiny-qwen3moe-q8_0-dequant.gguf": "qwen3_moe",
  "tiny-gemma3-q8_0-dequant.gguf": "gemma3_text",
};

/**
 * Q8_0 files: llama.cpp also quantizes the activations to 8 bits for its Q8_0
 * products, so near-ties (and, in the MoE, close router scores) can go another
 * way than in float. Pensieve dequantizes the weights exactly and multiplies
 * float activations: its tokens on a Q8_0 file must equal llama.cpp's on the
 * file's float32 twin (the same dequantized values, "-dequant").
 */
describe(`Q8_0 GGUF models vs ${fixture.oracle} on their float32 twins`, () => {
  for (const file of Object.keys(fixture.models).filter((f) => f.endsWith("-q8_0.gguf"))) {
    const twin = file.replace(/\.gguf$/, "-dequant.gguf");
    test(`${file}: loads as ${EXPECTED_TYPES[file]}, 32 greedy tokens identical to llama.cpp's on ${twin}`, () => {
      const loaded = loadModel(join(GGUF_DIR, file));
      try {
        expect(loaded.config.modelType).toBe(EXPECTED_TYPES[file] as string);
        for (const r of fixture.models[twin] ?? []) {
          expect(greedyTokens(loaded.model, r.prompt, r.greedy.length, 16)).toEqual(r.greedy);
        }
      } finally {
        loaded.model.dispose();
      }
    });
  }
});

describe(`GGUF models vs ${fixture.oracle}`, () => {
  for (const [file, results] of Object.entries(fixture.models).filter(([f]) => !f.endsWith("-q8_0.gguf"))) {
    test(`${file}: loads as ${EXPECTED_TYPES[file]}, 32 greedy tokens identical to llama.cpp's`, () => {
      const loaded = loadModel(join(GGUF_DIR, file));
      try {
        expect(loaded.config.modelType).toBe(EXPECTED_TYPES[file] as string);
        for (const r of results) {
          expect(greedyTokens(loaded.model, r.prompt, r.greedy.length, 16)).toEqual(r.greedy);
        }
      } finally {
        loaded.model.dispose();
      }
    });
  }
});

const converted = JSON.parse(
  readFileSync(join(REPO_ROOT, "test", "fixtures", "reference", "gguf-converted.mlx-lm.json"), "utf8"),
) as { oracle: string; models: Record<string, Array<{ prompt: number[]; last_logits_f32: string; greedy: number[] }>> };

describe(`pensieve convert: the folders it writes, as ${converted.oracle} runs them`, () => {
  for (const [file, results] of Object.entries(converted.models)) {
    test(`${file} → MLX folder: last logits within 1e-4 and 32 greedy tokens identical to mlx-lm's`, () => {
      const dir = join(TEST_TMP, "converted-families", file.replace(/\.gguf$/, ""));
      rmSync(dir, { recursive: true, force: true });
      convertGguf(join(GGUF_DIR, file), dir);
      // mlx-lm uses Phi-3's long factors at every length: compared in that mode.
      const loaded = loadModel(dir, { alwaysLongRope: true });
      try {
        expect(loaded.config.modelType).toBe(EXPECTED_TYPES[file] as string);
        for (const r of results) {
          const bytes = Buffer.from(r.last_logits_f32, "base64");
          const expected = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
          const cache = cacheFor(loaded.model);
          const ours = mx.tidy(() => prefill(loaded.model, cache, r.prompt).read() as Float32Array);
          cache.dispose();
          let worst = 0;
          for (let i = 0; i < expected.length; i++)
            worst = Math.max(worst, Math.abs((ours[i] as number) - (expected[i] as number)));
          expect(worst).toBeLessThan(1e-4);
          expect(greedyTokens(loaded.model, r.prompt, 32)).toEqual(r.greedy);
        }
      } finally {
        loaded.model.dispose();
      }
    });
  }
});
