// GGUF loading per architecture against llama.cpp: tiny random GGUF files
// written by the `gguf` PyPI package in llama.cpp's conventions
// (scripts/fixtures/families/write_tiny_gguf.py; llama's permuted q/k, Gemma's
// 1 + w norms, Qwen3-MoE's stacked experts), and the greedy tokens llama.cpp
// (node-llama-cpp) generates from them (gen_llamacpp_gguf_tokens.mjs).
// Regenerate: bash scripts/fixtures/families/make-gguf.sh
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { generateTokens } from "../../src/engine/generate";
import { samplingParams } from "../../src/engine/sampling";
import { loadModel } from "../../src/models/loader";
import { REPO_ROOT } from "../../src/paths";

const GGUF_DIR = join(REPO_ROOT, "test", "fixtures", "gguf");
const fixture = JSON.parse(
  readFileSync(join(REPO_ROOT, "test", "fixtures", "reference", "gguf-llamacpp.json"), "utf8"),
) as {
  oracle: string;
  models: Record<string, Array<{ prompt: number[]; greedy: number[] }>>;
};

const EXPECTED_TYPES: Record<string, string> = {
  "tiny-llama.gguf": "llama",
  "tiny-qwen2.gguf": "qwen2",
  "tiny-qwen3.gguf": "qwen3",
  "tiny-qwen3moe.gguf": "qwen3_moe",
  "tiny-gemma3.gguf": "gemma3_text",
};

describe(`GGUF models vs ${fixture.oracle}`, () => {
  for (const [file, results] of Object.entries(fixture.models)) {
    test(`${file}: loads as ${EXPECTED_TYPES[file]}, 32 greedy tokens identical to llama.cpp's`, () => {
      const loaded = loadModel(join(GGUF_DIR, file));
      try {
        expect(loaded.config.modelType).toBe(EXPECTED_TYPES[file] as string);
        for (const r of results) {
          const tokens: number[] = [];
          for (const step of generateTokens(loaded.model, r.prompt, {
            maxTokens: r.greedy.length,
            sampling: samplingParams(),
            prefillChunk: 16,
          })) {
            tokens.push(step.token);
          }
          expect(tokens).toEqual(r.greedy);
        }
      } finally {
        loaded.model.dispose();
      }
    });
  }
});
