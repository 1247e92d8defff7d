// What the int8-activation CPU matmul (the default on the CPU) costs a model,
// against the exact float kernel: perplexity over a fixed English text of
// about 2,500 tokens within 1%, on the embedded SmolLM2 (real weights) and a
// tiny random model; greedy continuations of ten prompts (common prefixes
// logged; the first tokens must mostly agree). Full figures with 128-token
// continuations: bench/quality.ts, results in bench/results/quality-*.md.
import { describe, expect, test } from "bun:test";
import * as mx from "../../src/mlx";
import { loadModel } from "../../src/models/loader";
import { loadTokenizer } from "../../src/text/tokenizer";
import { EMBEDDED_MODEL, tinyModel } from "../support/models";
import { commonPrefix, greedy, perplexity, QUALITY_PROMPTS, QUALITY_TEXT, withCpuMatmul } from "../support/quality";

const TIMEOUT = 600_000;

describe("SmolLM2-135M (Q4_1 GGUF, real weights)", () => {
  const tokenizer = loadTokenizer(EMBEDDED_MODEL);
  const text = tokenizer.encode(QUALITY_TEXT);

  test(
    "perplexity on the English text: int8 within 1% of exact",
    () => {
      expect(text.length).toBeGreaterThanOrEqual(2000);
      const { model } = loadModel(EMBEDDED_MODEL);
      try {
        const exact = withCpuMatmul("exact", () => perplexity(model, text, 512));
        const int8 = withCpuMatmul("int8", () => perplexity(model, text, 512));
        console.log(
          `SmolLM2 perplexity over ${text.length} tokens: exact ${exact.toFixed(4)}, int8 ${int8.toFixed(4)}`,
        );
        expect(exact).toBeLessThan(40); // a trained model reading plain English
        expect(Math.abs(int8 / exact - 1)).toBeLessThan(0.01);
      } finally {
        model.dispose();
      }
    },
    TIMEOUT,
  );

  test(
    "greedy continuations of ten prompts mostly start alike",
    () => {
      const { model } = loadModel(EMBEDDED_MODEL);
      try {
        const prefixes = QUALITY_PROMPTS.map((p) => {
          const ids = tokenizer.encode(p);
          return commonPrefix(
            withCpuMatmul("exact", () => greedy(model, ids, 16)),
            withCpuMatmul("int8", () => greedy(model, ids, 16)),
          );
        });
        console.log(`SmolLM2 greedy common prefixes over 16 tokens: ${prefixes.join(", ")}`);
        expect(prefixes.filter((n) => n >= 1).length).toBeGreaterThanOrEqual(8);
      } finally {
        model.dispose();
      }
    },
    TIMEOUT,
  );
});

test(
  "tiny random llama: perplexity within 1%",
  () => {
    const dir = tinyModel("tiny-llama");
    const tokenizer = loadTokenizer(dir);
    const { model } = loadModel(dir);
    try {
      const text = tokenizer.encode(QUALITY_TEXT);
      expect(text.length).toBeGreaterThanOrEqual(2000);
      const exact = withCpuMatmul("exact", () => perplexity(model, text, 512));
      const int8 = withCpuMatmul("int8", () => perplexity(model, text, 512));
      console.log(
        `tiny-llama perplexity over ${text.length} tokens: exact ${exact.toFixed(3)}, int8 ${int8.toFixed(3)}`,
      );
      expect(Math.abs(int8 / exact - 1)).toBeLessThan(0.01);
      const prefixes = QUALITY_PROMPTS.map((p) => {
        const ids = tokenizer.encode(p);
        return commonPrefix(
          withCpuMatmul("exact", () => greedy(model, ids, 32)),
          withCpuMatmul("int8", () => greedy(model, ids, 32)),
        );
      });
      console.log(`tiny-llama greedy common prefixes over 32 tokens: ${prefixes.join(", ")}`);
    } finally {
      model.dispose();
    }
  },
  TIMEOUT,
);

test("the int8 path is the CPU default; PENSIEVE_CPU_MATMUL=exact selects the float one", () => {
  expect(mx.cpuMatmul()).toBe(process.env.PENSIEVE_CPU_MATMUL === "exact" ? "exact" : "int8");
  expect(withCpuMatmul("exact", () => mx.cpuMatmul())).toBe("exact");
});
