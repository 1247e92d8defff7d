// One single-stream generation with llama.cpp through node-llama-cpp (the peer),
// timed; prints one JSON line. Greedy, EOS ignored, same prompt ids as Pensieve.
//   node llamacpp-generate.mjs MODEL.gguf PROMPT_IDS_JSON GEN_TOKENS THREADS
import { readFileSync } from "node:fs";

// node-llama-cpp lives in the benchmark's own cache (bench/.cache/node), not in the project.
const PEER = new URL("../.cache/node/node_modules/node-llama-cpp/", import.meta.url);
const { getLlama } = await import(new URL("dist/index.js", PEER).href);

const [modelPath, promptFile, genArg, threadsArg] = process.argv.slice(2);
const prompt = JSON.parse(readFileSync(promptFile, "utf8"));
const gen = Number(genArg);
const threads = Number(threadsArg ?? 1);

const llama = await getLlama({ gpu: false, build: "never", maxThreads: threads });
const t = performance.now();
const model = await llama.loadModel({ modelPath });
const loadMs = performance.now() - t;
const context = await model.createContext({ contextSize: prompt.length + gen + 64, batchSize: 512, threads });

async function run(tokens, n) {
  const sequence = context.getSequence();
  const start = performance.now();
  let first = 0;
  let count = 0;
  for await (const _ of sequence.evaluate(tokens, { temperature: 0 })) {
    if (count === 0) first = performance.now();
    count++;
    if (count >= n) break;
  }
  const end = performance.now();
  sequence.dispose();
  return { ttftMs: first - start, decodeMs: end - first, count };
}

await run(prompt.slice(0, 8), 4);
const r = await run(prompt, gen);
const hwm = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
console.log(
  JSON.stringify({
    engine: `llama.cpp (${threads} thread${threads > 1 ? "s" : ""})`,
    version: `node-llama-cpp ${JSON.parse(readFileSync(new URL("package.json", PEER), "utf8")).version}`,
    promptTokens: prompt.length,
    generatedTokens: r.count,
    loadMs,
    ttftMs: r.ttftMs,
    prefillTokPerS: prompt.length / (r.ttftMs / 1000),
    decodeTokPerS: (r.count - 1) / (r.decodeMs / 1000),
    peakMlxBytes: null,
    peakRssBytes: hwm ? Number(hwm[1]) * 1024 : null,
  }),
);
await context.dispose();
await model.dispose();
await llama.dispose();
