// One single-stream generation with Pensieve's engine (in process), timed.
// Prints one JSON line. Used by bench/generate.ts; the peers have twins in this folder.
//   bun bench/engines/pensieve-generate.ts MODEL PROMPT_IDS_JSON GEN_TOKENS [cpu|gpu] [--profile]
// --profile adds host vs device time per decode step, measured on unpipelined steps.
import { readFileSync } from "node:fs";
import { cacheFor, generateTokens, prefill } from "../../src/engine/one-sequence";
import { samplingParams } from "../../src/engine/protocol";
import * as mx from "../../src/mlx";
import { loadModel } from "../../src/models/loader";
import { peakRssBytes } from "./rss";

const [modelPath, promptFile, genArg, device] = process.argv.slice(2).filter((a) => !a.startsWith("--"));
const profile = process.argv.includes("--profile");
if (!modelPath || !promptFile || !genArg) throw new Error("usage: MODEL PROMPT_IDS_JSON GEN_TOKENS [cpu|gpu]");
mx.setDevice(device === "gpu" ? "gpu" : "cpu");
const prompt = JSON.parse(readFileSync(promptFile, "utf8")) as number[];
const gen = Number(genArg);

let t = performance.now();
const { model } = loadModel(modelPath);
const loadMs = performance.now() - t;

function run(tokens: number[], n: number) {
  const start = performance.now();
  let first = 0;
  let count = 0;
  for (const _ of generateTokens(model, tokens, { maxTokens: n, sampling: samplingParams() })) {
    if (count === 0) first = performance.now();
    count++;
  }
  const end = performance.now();
  return { ttftMs: first - start, decodeMs: end - first, count };
}

/**
 * Host time (building the graph in TypeScript and handing it to MLX) and
 * device time (waiting for the evaluation) of decode steps run one at a time.
 */
function profileSteps(tokens: number[], steps: number) {
  const cache = cacheFor(model);
  try {
    let token = mx.tidy(() => mx.argmax(prefill(model, cache, tokens), -1).item());
    let host = 0;
    let device = 0;
    for (let i = 0; i < steps; i++) {
      const t0 = performance.now();
      const next = mx.tidy(() => mx.argmax(model.forward(mx.int32([token], [1, 1]), cache), -1));
      const t1 = performance.now();
      mx.evaluate(next);
      token = next.item();
      next.dispose();
      host += t1 - t0;
      device += performance.now() - t1;
    }
    return { hostMsPerStep: host / steps, deviceMsPerStep: device / steps };
  } finally {
    cache.dispose();
  }
}

// Warm-up: 8 tokens, or with BENCH_WARMUP=full the whole prompt (steady state: each shape's first-use costs paid).
run(process.env.BENCH_WARMUP === "full" ? prompt : prompt.slice(0, 8), 4);
mx.memory.resetPeak();
t = performance.now();
const r = run(prompt, gen);
const steps = profile ? profileSteps(prompt, 32) : null;
console.log(
  JSON.stringify({
    engine: "pensieve",
    promptTokens: prompt.length,
    generatedTokens: r.count,
    loadMs,
    ttftMs: r.ttftMs,
    prefillTokPerS: prompt.length / (r.ttftMs / 1000),
    decodeTokPerS: (r.count - 1) / (r.decodeMs / 1000),
    peakMlxBytes: mx.memory.peak(),
    peakRssBytes: peakRssBytes(),
    ...(steps ?? {}),
  }),
);
