// One single-stream generation with llama.cpp through node-llama-cpp (the peer),
// timed; prints one JSON line. Greedy, EOS ignored, same prompt ids as Pensieve.
// Runs under Node or Bun.
//   node llamacpp-generate.mjs MODEL.gguf PROMPT_IDS_JSON GEN_TOKENS THREADS [cpu|cuda]
// cuda: every layer on the GPU, flash attention on (llama-server's default "auto"
// turns it on for CUDA), batches of 512 tokens (llama-server's physical batch,
// --ubatch-size; node-llama-cpp sets n_batch = n_ubatch), KV cache float16.
// PENSIEVE_NODE_LLAMA_CPP names another folder holding node_modules/node-llama-cpp
// (the GPU machine has no network: bench/gpu/pack-llama.sh carries one there).
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

// node-llama-cpp lives in the benchmark's own cache (bench/.cache/node), not in the project.
const PEER = process.env.PENSIEVE_NODE_LLAMA_CPP
  ? pathToFileURL(`${process.env.PENSIEVE_NODE_LLAMA_CPP}/node_modules/node-llama-cpp/`)
  : new URL("../.cache/node/node_modules/node-llama-cpp/", import.meta.url);
const { getLlama } = await import(new URL("dist/index.js", PEER).href);

const [modelPath, promptFile, genArg, threadsArg, backendArg] = process.argv.slice(2);
const prompt = JSON.parse(readFileSync(promptFile, "utf8"));
const gen = Number(genArg);
const threads = Number(threadsArg ?? 1);
const cuda = backendArg === "cuda";

const llama = await getLlama({ gpu: cuda ? "cuda" : false, build: "never", maxThreads: threads });
if (cuda && llama.gpu !== "cuda") throw new Error(`node-llama-cpp loaded ${llama.gpu} instead of CUDA`);
const t = performance.now();
const model = await llama.loadModel({ modelPath, gpuLayers: cuda ? "max" : 0 });
const loadMs = performance.now() - t;
const context = await model.createContext({
  contextSize: prompt.length + gen + 64,
  batchSize: 512,
  threads,
  ...(cuda ? { flashAttention: true } : {}),
});

async function run(tokens, n) {
  const sequence = context.getSequence();
  const start = performance.now();
  let first = 0;
  let count = 0;
  const out = [];
  for await (const token of sequence.evaluate(tokens, { temperature: 0 })) {
    if (count === 0) first = performance.now();
    out.push(token);
    count++;
    if (count >= n) break;
  }
  const end = performance.now();
  sequence.dispose();
  return { ttftMs: first - start, decodeMs: end - first, count, tokens: out };
}

// Warm-up: 8 tokens, or with BENCH_WARMUP=full the whole prompt, as the other engines do.
await run(process.env.BENCH_WARMUP === "full" ? prompt : prompt.slice(0, 8), 4);
const r = await run(prompt, gen);
const hwm = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
console.log(
  JSON.stringify({
    engine: cuda ? "llama.cpp (CUDA)" : `llama.cpp (${threads} thread${threads > 1 ? "s" : ""})`,
    version: `node-llama-cpp ${JSON.parse(readFileSync(new URL("package.json", PEER), "utf8")).version}`,
    promptTokens: prompt.length,
    generatedTokens: r.count,
    loadMs,
    ttftMs: r.ttftMs,
    prefillTokPerS: prompt.length / (r.ttftMs / 1000),
    decodeTokPerS: (r.count - 1) / (r.decodeMs / 1000),
    peakMlxBytes: null,
    peakRssBytes: hwm ? Number(hwm[1]) * 1024 : null,
    tokens: r.tokens,
    ...(cuda ? { gpuName: llama.getGpuDeviceNames ? (await llama.getGpuDeviceNames()).join("; ") : undefined } : {}),
  }),
);
await context.dispose();
await model.dispose();
await llama.dispose();
