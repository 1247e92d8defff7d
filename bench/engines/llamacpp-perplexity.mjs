// Perplexity of llama.cpp (node-llama-cpp) over given token ids: the same test
// as bench/quality.ts, so the int8 path's cost can be set beside what
// llama.cpp's own arithmetic (int8 activation blocks) gives on the same GGUF.
// Prints one JSON line.
//   node llamacpp-perplexity.mjs MODEL.gguf TOKEN_IDS_JSON [THREADS]
import { readFileSync } from "node:fs";

const PEER = new URL("../.cache/node/node_modules/node-llama-cpp/", import.meta.url);
const { getLlama } = await import(new URL("dist/index.js", PEER).href);

const [modelPath, tokensFile, threadsArg] = process.argv.slice(2);
const tokens = JSON.parse(readFileSync(tokensFile, "utf8"));
const threads = Number(threadsArg ?? 1);
const llama = await getLlama({ gpu: false, build: "never", maxThreads: threads });
const model = await llama.loadModel({ modelPath });
const context = await model.createContext({ contextSize: tokens.length + 64, batchSize: 512, threads });
const sequence = context.getSequence();
let nll = 0;
let count = 0;
const chunk = 256;
for (let start = 0; start + 1 < tokens.length; start += chunk) {
  const part = tokens.slice(start, Math.min(start + chunk, tokens.length - 1));
  const input = part.map((t, i) => [
    t,
    {
      generateNext: {
        logits: { filter: { tokens: [tokens[start + i + 1]], includeTop: 1 } },
        totalLogitWeight: true,
        // No sampling transforms: the raw distribution.
        options: { temperature: 1, topK: 0, topP: 1, minP: 0 },
      },
    },
  ]);
  const out = await sequence.controlledEvaluate(input);
  out.forEach((o, i) => {
    const target = tokens[start + i + 1];
    const logits = o.next.logits;
    const max = Math.max(...logits.values());
    // log p(target) = logit - max - log(sum exp(logit - max))
    nll -= logits.get(target) - max - Math.log(o.next.totalLogitWeight);
    count++;
  });
}
console.log(JSON.stringify({ engine: "llama.cpp", tokens: count, perplexity: Math.exp(nll / count) }));
await context.dispose();
await model.dispose();
