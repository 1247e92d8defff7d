// llama.cpp's prompt-lookup speculation (node-llama-cpp's InputLookupTokenPredictor, after
// apoorvumang/prompt-lookup-decoding) against its plain decoding, on the same prompt ids as
// Pensieve's `bench spec`: greedy, each run to a stop token or GEN tokens; off and on take
// turns, REPEAT times a prompt. Prints one JSON line. Runs under Node or Bun.
//   node llamacpp-lookup.mjs MODEL.gguf PROMPTS_JSON GEN THREADS REPEAT MAX_PREDICTION MIN_PATTERN
// PROMPTS_JSON: {"prompts": [[ids]], "stops": [ids]}. MAX_PREDICTION: the predictor's most
// drafted tokens (its default is 3); MIN_PATTERN: the shortest match it drafts from (default 1).
// PENSIEVE_NODE_LLAMA_CPP as in llamacpp-generate.mjs.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const PEER = process.env.PENSIEVE_NODE_LLAMA_CPP
  ? pathToFileURL(`${process.env.PENSIEVE_NODE_LLAMA_CPP}/node_modules/node-llama-cpp/`)
  : new URL("../.cache/node/node_modules/node-llama-cpp/", import.meta.url);
const { getLlama, InputLookupTokenPredictor } = await import(new URL("dist/index.js", PEER).href);

const [modelPath, promptFile, genArg, threadsArg, repeatArg, maxArg, patternArg] = process.argv.slice(2);
const { prompts, stops } = JSON.parse(readFileSync(promptFile, "utf8"));
const gen = Number(genArg);
const threads = Number(threadsArg ?? 1);
const repeat = Number(repeatArg ?? 2);
const maxPrediction = Number(maxArg ?? 3);
const minPattern = Number(patternArg ?? 1);

const llama = await getLlama({ gpu: false, build: "never", maxThreads: threads });
const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
const longest = Math.max(...prompts.map((p) => p.length));
const context = await model.createContext({ contextSize: longest + gen + 64, batchSize: 512, threads });
const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

async function run(prompt, lookup, limit = gen) {
  const tokenPredictor = lookup
    ? new InputLookupTokenPredictor({ predictionLength: { max: maxPrediction }, patternLength: { min: minPattern } })
    : undefined;
  // What it looks up in: the prompt (node-llama-cpp's chat and completion classes pass their input so).
  tokenPredictor?.updateInputTokens(prompt);
  const sequence = context.getSequence({ tokenPredictor });
  const tokens = [];
  let [first, last, cpuFirst, cpuLast] = [0, 0, 0, 0];
  for await (const token of sequence.evaluate(prompt, { temperature: 0 })) {
    const now = performance.now();
    if (tokens.length === 0) [first, cpuFirst] = [now, cpuMs()];
    [last, cpuLast] = [now, cpuMs()];
    if (stops.includes(token)) break;
    tokens.push(token);
    if (tokens.length >= limit) break;
  }
  const p = sequence.tokenPredictions;
  sequence.dispose();
  return {
    tokens,
    decodeTokPerS: ((tokens.length - 1) / (last - first)) * 1000,
    decodeTokPerCpuS: ((tokens.length - 1) / (cpuLast - cpuFirst)) * 1000,
    validated: p.validated,
    refuted: p.refuted,
    used: p.used,
  };
}

// Warm-up: a short run each way.
await run(prompts[0], false, 16);
await run(prompts[0], true, 16);
const results = prompts.map(() => ({ off: [], on: [] }));
for (let r = 0; r < repeat; r++) {
  for (const [i, prompt] of prompts.entries()) {
    // Alternate which goes first, as bench spec's modes take turns.
    for (const lookup of (r + i) % 2 === 0 ? [false, true] : [true, false]) {
      const x = await run(prompt, lookup);
      results[i][lookup ? "on" : "off"].push(x);
      process.stderr.write(`llama.cpp prompt ${i} ${lookup ? "lookup" : "off"} ${x.decodeTokPerS.toFixed(1)} tok/s\n`);
    }
  }
}
console.log(
  JSON.stringify({
    version: `node-llama-cpp ${JSON.parse(readFileSync(new URL("package.json", PEER), "utf8")).version}`,
    threads,
    maxPrediction,
    minPattern,
    results,
  }),
);
await context.dispose();
await model.dispose();
await llama.dispose();
