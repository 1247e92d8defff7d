// One single-stream generation with Pensieve's engine (in process), timed.
// Prints one JSON line. Used by bench/generate.ts; the peers have twins in this folder.
//   bun bench/engines/pensieve-generate.ts MODEL PROMPT_IDS_JSON GEN_TOKENS [cpu|gpu]
import { readFileSync } from "node:fs";
import { generateTokens } from "../../src/engine/generate";
import { samplingParams } from "../../src/engine/sampling";
import * as mx from "../../src/mlx";
import { loadModel } from "../../src/models/loader";
import { peakRssBytes } from "./rss";

const [modelPath, promptFile, genArg, device] = process.argv.slice(2);
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

run(prompt.slice(0, 8), 4); // warm-up
mx.memory.resetPeak();
t = performance.now();
const r = run(prompt, gen);
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
  }),
);
