// The CPU layer's folds (src/models/cpu-fused.ts, ffi/cpu_qmm_packed.cpp): RMSNorm into the q|k|v and gate|up
// products, SwiGLU into gate|up, the residual adds into o and down. Each runs the code of the op it replaces, so
// prefill and decode logits are bit-equal with the folds on and off, on the real SmolLM2 and on tiny models of
// other shapes (Phi-3's stored q|k|v and gate|up, Qwen2's q|k|v biases, Qwen3's q/k norms); the folded step
// really has fewer graph nodes. Without AVX-512 VNNI there is no packed copy and nothing folds.
import { afterAll, describe, expect, test } from "bun:test";
import { cacheFor, prefill } from "../../src/engine/one-sequence";
import * as mx from "../../src/mlx";
import { loadModel } from "../../src/models/loader";
import { EMBEDDED_MODEL, tinyModel } from "../support/models";

const vnni = mx.cpuIsaSupported("vnni");
const PROMPT = [1, 504, 3458, 314, 253, 3575, 282, 4649, 47, 10612, 30, 2, 17, 99, 1000, 42];
const STEPS = [12, 907, 5, 311];

afterAll(() => mx.setCpuFolds(null));

/** Prefill logits, then each decode step's logits and its graph's node count, with the folds on or off. */
function run(path: string, fold: boolean) {
  mx.setCpuFolds(fold);
  const { model } = loadModel(path);
  try {
    return mx.tidy(() => {
      const cache = cacheFor(model);
      const logits: Float32Array[] = [prefill(model, cache, PROMPT).read() as Float32Array];
      let nodes = 0;
      for (const token of STEPS) {
        const out = model.forward(mx.int32([token], [1, 1]), cache);
        nodes = mx.graphSummary(out).nodes;
        logits.push(out.read() as Float32Array);
      }
      return { logits, nodes };
    });
  } finally {
    model.dispose();
    mx.setCpuFolds(null);
  }
}

function expectBitEqual(a: Float32Array[], b: Float32Array[]): void {
  expect(a.length).toBe(b.length);
  a.forEach((x, i) => {
    const y = b[i] as Float32Array;
    expect(x.length).toBe(y.length);
    let differing = 0;
    for (let j = 0; j < x.length; j++) if (!Object.is(x[j], y[j])) differing++;
    expect(differing).toBe(0);
  });
}

describe("CPU folds", () => {
  for (const [name, path] of [
    ["SmolLM2-135M (real, Q4_1 GGUF)", () => EMBEDDED_MODEL],
    ["tiny Phi-3 (stored q|k|v, gate|up)", () => tinyModel("tiny-phi3")],
    ["tiny Qwen2 (q|k|v biases)", () => tinyModel("tiny-qwen2")],
    ["tiny Qwen3 (q/k norms)", () => tinyModel("tiny-qwen3")],
  ] as const) {
    test(`${name}: logits bit-equal with the folds on and off`, () => {
      const on = run(path(), true);
      const off = run(path(), false);
      expectBitEqual(on.logits, off.logits);
      if (vnni) expect(on.nodes).toBeLessThan(off.nodes);
      else expect(on.nodes).toBe(off.nodes);
    });
  }
});

test("chunked prefill: each chunk's keys reach the cache with the KV fold (logits bit-equal on and off)", () => {
  const prompt = Array.from({ length: 150 }, (_, i) => 5 + ((i * 37) % 900));
  const lastLogits = (fold: boolean) => {
    mx.setCpuFolds(fold);
    const { model } = loadModel(tinyModel("tiny-llama"));
    try {
      return mx.tidy(() => prefill(model, cacheFor(model), prompt, { chunk: 64 }).read() as Float32Array);
    } finally {
      model.dispose();
      mx.setCpuFolds(null);
    }
  };
  expectBitEqual([lastLogits(true)], [lastLogits(false)]);
});
